"""Structural verifier for .tflite files, run before any interpreter sees the bytes.

tflite-runtime 2.14 does not verify model files and segfaults, aborts or hangs on damaged ones;
ai-edge-litert verifies the flatbuffer but still crashes on some semantic damage. This walks the
TFLite ``schema.fbs`` structure in pure Python (a few ms for a MobileNetV2) and checks what
fuzzing showed the runtimes rely on. Every fault is an :class:`InvalidModelError` with one line.
"""

from __future__ import annotations

import math
import os
import struct

from edge import schema
from edge.flatbuffer import InvalidModelError, Table, guarded
from edge.model_file import as_bytes, model_root

MAX_RANK = 16
MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any image classifier's tensor
# bytes per element of each TensorType; None: variable or packed (string, resource, variant, int4)
_ITEM_SIZE = (4, 2, 4, 1, 8, None, 1, 2, 8, 1, 8, 16, 8, None, None, 4, 2, None, 2)
# Options tables whose fields the runtime reads as vectors/strings: member -> ((slot, elem size), ...)
_OPTION_VECTORS = {
    schema.RESHAPE_OPTIONS: ((0, 4),),
    schema.SQUEEZE_OPTIONS: ((0, 4),),
    schema.BUCKETIZE_OPTIONS: ((0, 4),),
    schema.CONCAT_EMBEDDINGS_OPTIONS: ((1, 4), (2, 4)),
    schema.VAR_HANDLE_OPTIONS: ((0, 1), (1, 1)),
}
# Options tables holding subgraph indices: member -> slots
_OPTION_SUBGRAPHS = {
    schema.CALL_OPTIONS: (0,),
    schema.IF_OPTIONS: (0, 1),
    schema.WHILE_OPTIONS: (0, 1),
    schema.CALL_ONCE_OPTIONS: (0,),
}
_FLOAT32_MIN_NORMAL_BITS, _FLOAT32_INF_BITS = 0x00800000, 0x7F800000
_F32 = struct.Struct("<f")
_ZERO_POINT_RANGE = {schema.UINT8: (0, 255), schema.INT8: (-128, 127), schema.INT16: (-32768, 32767)}
# activation scales of one operator further apart than this are damage: real models stay
# within ~130x, and ADD/SUB CHECK-abort (tflite-runtime) from 2**19 on
MAX_SCALE_RATIO = 2.0**16
_OP = schema.BUILTIN_OPS.index
# ops whose options carry strides/filter sizes that must be >= 1: op -> (options member, slots)
_STRIDED_OPS = {
    _OP("CONV_2D"): (schema.CONV_2D_OPTIONS, (1, 2, 4, 5)),
    _OP("DEPTHWISE_CONV_2D"): (schema.DEPTHWISE_CONV_2D_OPTIONS, (1, 2, 3, 5, 6)),
    _OP("AVERAGE_POOL_2D"): (schema.POOL_2D_OPTIONS, (1, 2, 3, 4)),
    _OP("MAX_POOL_2D"): (schema.POOL_2D_OPTIONS, (1, 2, 3, 4)),
    _OP("L2_POOL_2D"): (schema.POOL_2D_OPTIONS, (1, 2, 3, 4)),
    _OP("TRANSPOSE_CONV"): (schema.TRANSPOSE_CONV_OPTIONS, (1, 2)),
}
# inputs that must not be -1: op -> how many leading inputs are required (the rest: optional)
_REQUIRED_INPUTS = {
    **{_OP(name): 2 for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")},
    _OP("TRANSPOSE_CONV"): 3,
    **{_OP(name): 64 for name in ("ADD", "SUB", "MUL", "DIV", "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION",
                                  "DEQUANTIZE", "QUANTIZE", "MEAN", "PAD", "SOFTMAX", "SQUEEZE", "RELU", "RELU6",
                                  "LOGISTIC", "TANH", "HARD_SWISH", "L2_NORMALIZATION")},
}
_BIASED_OPS = {_OP("CONV_2D"), _OP("DEPTHWISE_CONV_2D"), _OP("FULLY_CONNECTED")}
_SPARSE_INDEX_SIZE = {1: 4, 2: 2, 3: 1}  # SparseIndexVector: Int32Vector, Uint16Vector, Uint8Vector


@guarded
def verify_model(model: bytes | str | os.PathLike) -> None:
    """Check the whole model structure, else raise InvalidModelError with one line.

    Every table, vector, string and union in bounds; buffer, opcode, tensor and subgraph
    indices in range; shapes non-negative with bounded rank and element count; constant data
    the size its shape says; operator inputs valid (-1: optional); subgraph I/O valid.
    Damaged metadata is :mod:`edge.metadata`'s concern; only its buffer indices are checked here.
    """
    data = as_bytes(model)
    root = model_root(data)
    codes = []
    for oc in root.tables(1):
        oc.vector(1, 1)  # custom_code
        if oc.scalar(3, "i") < 0:
            raise root.buf.fail(f"negative builtin code {oc.scalar(3, 'i')}")
        codes.append(max(oc.scalar(0, "b"), oc.scalar(3, "i")))
    sizes = [_buffer_size(b, data) for b in root.tables(4)]
    subgraphs = root.tables(2)
    if not subgraphs:
        raise root.buf.fail("no subgraphs")
    for s, sg in enumerate(subgraphs):
        _verify_subgraph(sg, s, len(subgraphs), codes, sizes, data)
    for entry in root.tables(6):  # metadata
        entry.vector(0, 1)
        _index(root, entry.scalar(1, "I"), len(sizes), "metadata buffer")
    for i in root.scalars(5, "i") or ():  # metadata_buffer
        _index(root, i, len(sizes), "metadata_buffer")
    for sig in root.tables(7):  # signature_defs
        sg = subgraphs[_index(root, sig.scalar(4, "I"), len(subgraphs), "signature subgraph")]
        n_tensors = len(sg.tables(0))
        _utf8(sig, 2, "signature key")
        for tensor_map in sig.tables(0) + sig.tables(1):
            _utf8(tensor_map, 0, "signature tensor name")
            _index(root, tensor_map.scalar(1, "I"), n_tensors, "signature tensor")


def _index(table: Table, i: int, n: int, what: str) -> int:
    if not 0 <= i < n:
        raise table.buf.fail(f"{what} index {i} out of range (0..{n - 1})")
    return i


def _utf8(table: Table, slot: int, what: str) -> None:
    """A string field the interpreter's Python API decodes: it must be valid UTF-8."""
    raw = table.bytes(slot)
    if raw is not None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise table.buf.fail(f"{what} is not UTF-8") from None


def _buffer_size(buffer: Table, data: bytes) -> int | None:
    """Bytes of constant data in a Buffer (inline or at offset/size), None when it has none."""
    vec = buffer.vector(0, 1)
    offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
    if offset > 1:
        if offset + size > len(data):
            raise InvalidModelError(f"truncated TFLite model: buffer data ends at {offset + size}, "
                                    f"past the end of the file ({len(data)} bytes)")
        return size
    return vec[1] if vec is not None and vec[1] else None


def _verify_subgraph(sg: Table, s: int, n_subgraphs: int, codes: list[int], sizes: list, data: bytes) -> None:
    """Tensors, then operators in execution order: each input already holds data (graph input,
    constant, variable or an earlier output), each output is written once, activation scales
    of one operator stay within MAX_SCALE_RATIO, strided ops carry their strides."""
    tensors = sg.tables(0)
    n = len(tensors)
    scale_vectors: list[tuple[int, int] | None] = []  # (start, count) of each tensor's scales
    scales: list[float | None] = []  # single scale of a non-constant quantized tensor
    ready = set()
    for t, tensor in enumerate(tensors):
        constant, vec = _verify_tensor(tensor, f"subgraph {s} tensor {t}", sizes)
        scale_vectors.append(vec)
        single = vec is not None and vec[1] == 1 and not constant
        scales.append(_F32.unpack_from(data, vec[0])[0] if single else None)
        if constant or tensor.scalar(5, "B"):  # data, or is_variable
            ready.add(t)
    for i in sg.scalars(1, "i") or ():
        ready.add(_index(sg, i, n, f"subgraph {s} input tensor"))
    _utf8(sg, 4, f"subgraph {s} name")
    for o, op in enumerate(sg.tables(3)):
        where = f"subgraph {s} operator {o}"
        code = codes[_index(op, op.scalar(0, "I"), len(codes), f"{where} opcode")]
        inputs, outputs = op.scalars(1, "i") or (), op.scalars(2, "i") or ()
        required = _REQUIRED_INPUTS.get(code, 0)
        for k, i in enumerate(inputs):
            if i == -1 and k < required:
                raise op.buf.fail(f"{where}: required input {k} is missing")
            if i != -1 and _index(op, i, n, f"{where} input tensor") not in ready:
                raise op.buf.fail(f"{where} reads tensor {i} before anything writes it")
        if code in _BIASED_OPS and len(inputs) > 2 and -1 not in inputs[:3]:
            _check_bias_scales(op, where, data, [scale_vectors[i] for i in inputs[:3]])
        for i in op.scalars(8, "i") or ():
            if i != -1:
                _index(op, i, n, f"{where} intermediate tensor")
        for i in outputs:
            if _index(op, i, n, f"{where} output tensor") in ready:
                raise op.buf.fail(f"{where} writes tensor {i}, which already holds data")
            ready.add(i)
        used = [scales[i] for i in (*inputs, *outputs) if i != -1 and scales[i] is not None]
        if len(used) > 1 and max(used) > MAX_SCALE_RATIO * min(used):
            raise op.buf.fail(f"{where}: activation scales {min(used):.3g}..{max(used):.3g} are implausibly far apart")
        op.vector(5, 1)  # custom_options
        op.vector(7, 1)  # mutating_variable_inputs
        offset, size = op.scalar(9, "Q"), op.scalar(10, "Q")
        if offset and offset + size > len(data):
            raise op.buf.fail(f"{where}: custom options end at {offset + size}, past the end of the file")
        kind = op.scalar(3, "B")
        options = op.table(4)
        if kind and options is not None:
            for slot, size in _OPTION_VECTORS.get(kind, ()):
                options.vector(slot, size)
            for slot in _OPTION_SUBGRAPHS.get(kind, ()):
                _index(options, options.scalar(slot, "i"), n_subgraphs, f"{where} subgraph")
        if code in _STRIDED_OPS:  # zero-default params divide by zero (tflite-runtime: SIGFPE)
            expected, slots = _STRIDED_OPS[code]
            if kind != expected or options is None or min(options.scalar(k, "i", 1) for k in slots) < 1:
                raise op.buf.fail(f"{where}: {schema.BUILTIN_OPS[code]} without valid strides/options")
        if op.scalar(11, "B"):
            op.table(12)  # builtin_options_2: in bounds
    for i in sg.scalars(2, "i") or ():
        if _index(sg, i, n, f"subgraph {s} output tensor") not in ready:
            raise sg.buf.fail(f"subgraph {s} output tensor {i} is never written")


def _check_bias_scales(op: Table, where: str, data: bytes, vectors: list) -> None:
    """Quantized conv/FC: bias scale = input scale x filter scale (per channel), as the
    converter writes it; a damaged filter or bias scale crashes kernels and XNNPACK."""
    if any(v is None for v in vectors) or vectors[0][1] != 1:
        return
    import numpy as np  # only here: edge.model_file itself stays light to import

    x, w, b = (np.frombuffer(data, "<f4", count, start).astype(np.float64) for start, count in vectors)
    if w.size != b.size and 1 not in (w.size, b.size):
        raise op.buf.fail(f"{where}: {w.size} filter scales but {b.size} bias scales")
    if not np.allclose(b, x[0] * w, rtol=1e-3, atol=0.0):
        raise op.buf.fail(f"{where}: bias scales do not equal input scale x filter scales")


def _verify_tensor(tensor: Table, where: str, sizes: list) -> tuple[bool, tuple[int, int] | None]:
    """Check one tensor; (holds constant data, (start, count) of its quantization scales)."""
    shape = tensor.scalars(0, "i") or ()
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise tensor.buf.fail(f"{where}: bad shape {list(shape[:MAX_RANK + 1])}")
    elements = math.prod(shape)
    if elements > MAX_TENSOR_ELEMENTS:
        raise tensor.buf.fail(f"{where}: shape {list(shape)} has {elements} elements (limit {MAX_TENSOR_ELEMENTS})")
    signature = tensor.scalars(7, "i") or ()
    if len(signature) > MAX_RANK or any(d < -1 for d in signature):
        raise tensor.buf.fail(f"{where}: bad shape signature")
    kind = tensor.scalar(1, "b")
    if not 0 <= kind < len(schema.TENSOR_TYPES):
        raise tensor.buf.fail(f"{where}: unknown tensor type {kind}")
    size = sizes[_index(tensor, tensor.scalar(2, "I"), len(sizes), f"{where} buffer")]
    _utf8(tensor, 3, f"{where} name")
    quant = tensor.table(4)
    scale = _verify_quantization(quant, where, shape, kind) if quant is not None else None
    sparsity = tensor.table(6)
    if sparsity is not None:
        _verify_sparsity(sparsity)
    elif size is not None and _ITEM_SIZE[kind] is not None and size != elements * _ITEM_SIZE[kind]:
        raise tensor.buf.fail(f"{where}: {size} bytes of data for shape {list(shape)} of "
                              f"{schema.TENSOR_TYPES[kind]}")
    for variant in tensor.tables(9):
        variant.vector(0, 4)
    return size is not None or elements == 0, scale


def _verify_quantization(quant: Table, where: str, shape: tuple, kind: int) -> tuple[int, int] | None:
    """Scale and zero-point vectors agree; scales positive normal floats (kernels CHECK-abort
    on NaN or 0 when they derive fixed-point multipliers); zero points fit an 8/16-bit type."""
    for slot in (0, 1):  # min, max
        quant.vector(slot, 4)
    scale_bits, zero_points = quant.scalars(2, "I") or (), quant.scalars(3, "q") or ()
    n_scales, n_zero = len(scale_bits), len(zero_points)
    if n_scales and n_zero and n_scales != n_zero:
        raise quant.buf.fail(f"{where}: {n_scales} scales but {n_zero} zero points")
    # float32 bits: a positive normal number <=> sign clear, exponent neither 0 nor all ones
    # (a subnormal scale overflows 1 / scale: tflite QUANTIZE segfaults on it)
    if scale_bits and not (min(scale_bits) >= _FLOAT32_MIN_NORMAL_BITS and max(scale_bits) < _FLOAT32_INF_BITS):
        raise quant.buf.fail(f"{where}: quantization scale is not a positive normal float")
    low, high = _ZERO_POINT_RANGE.get(kind, (-math.inf, math.inf))
    if zero_points and not low <= min(zero_points) <= max(zero_points) <= high:
        raise quant.buf.fail(f"{where}: zero point outside {schema.TENSOR_TYPES[kind]} range")
    if n_scales > 1:
        axis = quant.scalar(6, "i")
        if not 0 <= axis < len(shape) or shape[axis] != n_scales:
            raise quant.buf.fail(f"{where}: {n_scales} scales do not match axis {axis} of shape {list(shape)}")
    if quant.scalar(4, "B"):  # details union: CustomQuantization { custom: [ubyte] }
        details = quant.table(5)
        if details is not None:
            details.vector(0, 1)
    return quant.vector(2, 4) if n_scales else None


def _verify_sparsity(sparsity: Table) -> None:
    sparsity.vector(0, 4)
    sparsity.vector(1, 4)
    for dim in sparsity.tables(2):
        for type_slot, slot in ((2, 3), (4, 5)):
            kind = dim.scalar(type_slot, "B")
            values = dim.table(slot)
            if kind and values is not None:
                if kind not in _SPARSE_INDEX_SIZE:
                    raise sparsity.buf.fail(f"unknown sparse index vector type {kind}")
                values.vector(0, _SPARSE_INDEX_SIZE[kind])
