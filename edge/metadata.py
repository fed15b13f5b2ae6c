"""Read a .tflite model's metadata without TensorFlow, tflite-support or the flatbuffers package.

The edge side depends only on numpy, pillow and an interpreter, so this module carries a
small bounds-checked flatbuffer reader on ``struct``. Field ids follow the published schemas:
TFLite ``schema.fbs`` (Model, SubGraph, Tensor, Buffer, Metadata, OperatorCode) and
tflite-support ``metadata_schema.fbs`` (ModelMetadata "M001" and its tables). Associated files
(e.g. ``labels.txt``) live in a ZIP appended to the flatbuffer, read with ``zipfile``.

Any malformed input raises :class:`InvalidModelError` with a one-line message; a valid model
without metadata is not an error.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zipfile
from dataclasses import dataclass, field

MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
METADATA_NAME = "TFLITE_METADATA"
MIN_RUNTIME_NAME = "min_runtime_version"

# TensorType enum of schema.fbs, in value order.
TENSOR_TYPES = (
    "float32 float16 int32 uint8 int64 string bool int16 complex64 int8 float64 complex128 "
    "uint64 resource variant uint32 uint16 int4 bfloat16"
).split()

# BuiltinOperator enum of schema.fbs, in value order (0 = ADD). Unknown codes print BUILTIN_<n>.
BUILTIN_OPS = """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1
RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM
CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND
SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE
BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE
SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW
ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK
REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR
LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS
WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE
NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM
BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG
REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL
BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD
UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR
RIGHT_SHIFT
""".split()

COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_IMAGE_PROPERTIES = 2  # ContentProperties union member
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member
_MAX_DEPTH = 64  # nesting guard against cyclic offsets in hostile files


class InvalidModelError(ValueError):
    """Not a TFLite flatbuffer, truncated, or garbage. The message is always one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class ModelMetadata:
    """What a classifier client needs from a model's metadata; None where absent."""

    name: str | None = None
    description: str | None = None
    version: str | None = None
    author: str | None = None
    license: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_min: tuple[float, ...] | None = None
    input_max: tuple[float, ...] | None = None
    color_space: str | None = None
    labels: list[str] | None = None
    associated_files: dict[str, bytes] = field(default_factory=dict)
    min_runtime_version: str | None = None
    has_metadata: bool = False
    min_parser_version: str | None = None


# --------------------------------------------------------------------------- flatbuffer reader
class _Buf:
    """Bounds-checked little-endian reads over bytes; every fault is an InvalidModelError."""

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.what = what

    def fail(self, why: str) -> InvalidModelError:
        return InvalidModelError(f"{self.what}: {why}")

    def read(self, fmt: str, pos: int):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"offset {pos} out of bounds (size {len(self.data)})")
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def span(self, pos: int, size: int) -> bytes:
        if pos < 0 or size < 0 or pos + size > len(self.data):
            raise self.fail(f"range {pos}+{size} out of bounds (size {len(self.data)})")
        return self.data[pos : pos + size]

    def root(self) -> "_Table":
        return _Table(self, self.read("I", 0), 0)


class _Table:
    """A flatbuffer table: a position plus its vtable; slot n is field id n of the schema."""

    def __init__(self, buf: _Buf, pos: int, depth: int):
        if depth > _MAX_DEPTH:
            raise buf.fail("tables nested too deep")
        self.buf, self.pos, self.depth = buf, pos, depth
        self.vtable = pos - buf.read("i", pos)
        self.vt_size = buf.read("H", self.vtable)
        if self.vt_size < 4 or self.vt_size % 2:
            raise buf.fail(f"bad vtable at {self.vtable}")

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return None
        off = self.buf.read("H", self.vtable + entry)
        return self.pos + off if off else None

    def _deref(self, pos: int) -> int:
        return pos + self.buf.read("I", pos)

    def scalar(self, slot: int, fmt: str, default=0):
        pos = self._field(slot)
        return default if pos is None else self.buf.read(fmt, pos)

    def table(self, slot: int) -> "_Table | None":
        pos = self._field(slot)
        return None if pos is None else _Table(self.buf, self._deref(pos), self.depth + 1)

    def _vector(self, slot: int, elem_size: int) -> tuple[int, int] | None:
        pos = self._field(slot)
        if pos is None:
            return None
        start = self._deref(pos)
        n = self.buf.read("I", start)
        self.buf.span(start + 4, n * elem_size)  # bounds check before anyone iterates
        return start + 4, n

    def string(self, slot: int) -> str | None:
        raw = self.bytes(slot)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def bytes(self, slot: int) -> bytes | None:
        vec = self._vector(slot, 1)
        return None if vec is None else self.buf.span(*vec)

    def scalars(self, slot: int, fmt: str) -> tuple | None:
        size = struct.calcsize(fmt)
        vec = self._vector(slot, size)
        if vec is None:
            return None
        start, n = vec
        return struct.unpack_from(f"<{n}{fmt}", self.buf.data, start)

    def tables(self, slot: int) -> list["_Table"]:
        vec = self._vector(slot, 4)
        if vec is None:
            return []
        start, n = vec
        return [_Table(self.buf, self._deref(start + 4 * i), self.depth + 1) for i in range(n)]


# --------------------------------------------------------------------------- TFLite model
def _check_model(data: bytes) -> None:
    if len(data) < 8:
        raise InvalidModelError(f"not a TFLite model: {len(data)} bytes is too short")
    if data[4:8] != MODEL_IDENTIFIER:
        raise InvalidModelError(f"not a TFLite model: file identifier {data[4:8]!r}, expected b'TFL3'")


def _as_bytes(model: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    if isinstance(model, (str, os.PathLike)):
        return read_model_bytes(model)
    data = bytes(model)
    _check_model(data)
    return data


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """Load a .tflite file, rejecting missing, empty or non-TFLite files with one line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InvalidModelError(f"cannot read model {os.fspath(path)!s}: {exc.strerror or exc}") from None
    if not data:
        raise InvalidModelError(f"model file {os.fspath(path)!s} is empty")
    try:
        _check_model(data)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{os.fspath(path)!s}: {exc}") from None
    return data


def _model_root(data: bytes) -> _Table:
    return _Buf(data, "corrupt TFLite model").root()


def _metadata_entries(model: _Table) -> dict[str, bytes]:
    """Model.metadata name -> its buffer's bytes (first entry wins on duplicate names).

    A buffer's bytes are inline (Buffer.data) or, from newer converters for big models, at
    Buffer.offset/size counted from the start of the file.
    """
    entries: dict[str, bytes] = {}
    metadata = model.tables(6)
    buffers = model.tables(4) if metadata else []
    for entry in metadata:
        name, index = entry.string(0), entry.scalar(1, "I")
        if name is None or name in entries:
            continue
        if index >= len(buffers):
            raise model.buf.fail(f"metadata {name!r} names buffer {index} of {len(buffers)}")
        buffer = buffers[index]
        offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
        entries[name] = model.buf.span(offset, size) if offset > 1 else (buffer.bytes(0) or b"")
    return entries


def _guarded(fn):
    """Turn any low-level fault on hostile bytes into a one-line InvalidModelError."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        try:
            return fn(model, *args, **kwargs)
        except InvalidModelError:
            raise
        except (struct.error, IndexError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
            raise InvalidModelError(f"corrupt TFLite model: {type(exc).__name__}: {exc}") from None

    return wrapper


@_guarded
def check_buffers(model: bytes | str | os.PathLike) -> None:
    """Every weight buffer lies inside the file, else InvalidModelError.

    tflite-runtime 2.14 segfaults on a truncated model instead of raising, so the edge runtime
    calls this before the interpreter sees the bytes."""
    data = _as_bytes(model)
    root = _model_root(data)
    for i, buffer in enumerate(root.tables(4)):
        buffer.bytes(0)  # inline data: bounds-checked by the reader
        offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
        if offset > 1 and offset + size > len(data):
            raise InvalidModelError(f"truncated TFLite model: buffer {i} ends at {offset + size}, "
                                    f"past the end of the file ({len(data)} bytes)")


@_guarded
def op_names(model: bytes | str | os.PathLike) -> list[str]:
    """Builtin op name of each subgraph-0 operator, in execution order (e.g. "CONV_2D").

    The opcode is max(deprecated_builtin_code, builtin_code): old files only set the first
    (capped at 127), new ones set both. Custom ops appear as "CUSTOM:<custom_code>".
    """
    root = _model_root(_as_bytes(model))
    codes = []
    for oc in root.tables(1):
        code = max(oc.scalar(0, "b"), oc.scalar(3, "i"))
        name = BUILTIN_OPS[code] if 0 <= code < len(BUILTIN_OPS) else f"BUILTIN_{code}"
        if name == "CUSTOM":
            name = f"CUSTOM:{oc.string(1) or ''}"
        codes.append(name)
    subgraphs = root.tables(2)
    if not subgraphs:
        raise InvalidModelError("corrupt TFLite model: no subgraphs")
    names = []
    for op in subgraphs[0].tables(3):
        index = op.scalar(0, "I")
        if index >= len(codes):
            raise InvalidModelError(f"corrupt TFLite model: opcode index {index} out of range")
        names.append(codes[index])
    return names


@_guarded
def tensor_types(model: bytes | str | os.PathLike) -> dict[str, list[str]]:
    """Subgraph-0 input and output tensor dtypes: {"inputs": ["uint8"], "outputs": ["uint8"]}."""
    root = _model_root(_as_bytes(model))
    subgraphs = root.tables(2)
    if not subgraphs:
        raise InvalidModelError("corrupt TFLite model: no subgraphs")
    sg = subgraphs[0]
    tensors = sg.tables(0)

    def types(slot: int) -> list[str]:
        out = []
        for i in sg.scalars(slot, "i") or ():
            if not 0 <= i < len(tensors):
                raise InvalidModelError(f"corrupt TFLite model: tensor index {i} out of range")
            t = tensors[i].scalar(1, "b")
            out.append(TENSOR_TYPES[t] if 0 <= t < len(TENSOR_TYPES) else f"type_{t}")
        return out

    return {"inputs": types(1), "outputs": types(2)}


# --------------------------------------------------------------------------- metadata
def _floats(table: _Table | None, slot: int) -> tuple[float, ...] | None:
    if table is None:
        return None
    values = table.scalars(slot, "f")
    return None if values is None else tuple(float(v) for v in values)


def _normalization(tensor: _Table) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    for unit in tensor.tables(4):  # process_units
        if unit.scalar(0, "B") == _NORMALIZATION_OPTIONS:
            options = unit.table(1)
            return _floats(options, 0), _floats(options, 1)
    return None, None


def _color_space(tensor: _Table) -> str | None:
    content = tensor.table(3)
    if content is None or content.scalar(0, "B") != _IMAGE_PROPERTIES:
        return None
    props = content.table(1)
    if props is None:
        return None
    cs = props.scalar(0, "b")
    return COLOR_SPACES[cs] if 0 <= cs < len(COLOR_SPACES) else f"COLOR_SPACE_{cs}"


def _label_file(tensor: _Table) -> str | None:
    for f in tensor.tables(6):  # associated_files
        if f.scalar(2, "b") == TENSOR_AXIS_LABELS:
            return f.string(0)
    return None


def _zip_files(data: bytes) -> dict[str, bytes]:
    """Files of the ZIP appended to the flatbuffer; {} when there is none."""
    if b"PK\x05\x06" not in data[-(65535 + 22) :]:
        return {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {info.filename: z.read(info) for info in z.infolist() if not info.is_dir()}
    except Exception as exc:  # zipfile/zlib raise a zoo of types on garbage; all mean "corrupt"
        raise InvalidModelError(f"corrupt associated-file zip: {type(exc).__name__}: {exc}") from None


def _split_lines(raw: bytes) -> list[str]:
    """One label a line; inner blank lines are kept so line i stays output index i."""
    lines = [line.rstrip("\r") for line in raw.decode("utf-8", errors="replace").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


@_guarded
def read_metadata(model: bytes | str | os.PathLike) -> ModelMetadata:
    """Metadata of a .tflite model (bytes or path). A model without metadata is not an error."""
    data = _as_bytes(model)
    root = _model_root(data)
    entries = _metadata_entries(root)
    runtime = entries.get(MIN_RUNTIME_NAME)
    min_runtime = runtime.split(b"\0", 1)[0].decode("ascii", errors="replace") if runtime else None
    files = _zip_files(data)
    raw = entries.get(METADATA_NAME)
    if raw is None:
        return ModelMetadata(associated_files=files, min_runtime_version=min_runtime)
    if raw[4:8] != METADATA_IDENTIFIER:
        raise InvalidModelError(f"corrupt TFLite metadata: identifier {raw[4:8]!r}, expected b'M001'")
    meta = _Buf(raw, "corrupt TFLite metadata").root()
    subgraphs = meta.tables(3)
    inputs = subgraphs[0].tables(2) if subgraphs else []
    outputs = subgraphs[0].tables(3) if subgraphs else []
    image = inputs[0] if inputs else None
    mean, std = _normalization(image) if image else (None, None)
    stats = image.table(5) if image else None
    label_name = _label_file(outputs[0]) if outputs else None
    labels = None
    if label_name is not None:
        if label_name not in files:
            raise InvalidModelError(f"metadata names label file {label_name!r} but the model does not contain it")
        labels = _split_lines(files[label_name])
    return ModelMetadata(
        name=meta.string(0),
        description=meta.string(1),
        version=meta.string(2),
        author=meta.string(4),
        license=meta.string(5),
        mean=mean,
        std=std,
        input_min=_floats(stats, 1),
        input_max=_floats(stats, 0),
        color_space=_color_space(image) if image else None,
        labels=labels,
        associated_files=files,
        min_runtime_version=min_runtime,
        has_metadata=True,
        min_parser_version=meta.string(7),
    )
