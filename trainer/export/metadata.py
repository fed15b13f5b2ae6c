"""Write TFLite metadata (labels, normalization, model info) into a .tflite model.

tflite-support cannot share a venv with TensorFlow 2.21, so the metadata flatbuffer is built
here by hand with ``flatbuffers.Builder`` from the published ``metadata_schema.fbs`` (file
identifier "M001"). It goes into a new Model buffer referenced by a Model.metadata entry named
"TFLITE_METADATA"; the Model table itself is re-serialized with the TFLite schema object API
that ships with ai-edge-litert / TensorFlow. ``labels.txt`` is then appended as a stored ZIP, so
the .tflite is also a valid zip: the layout of Google's models that the Android Task Library and
MediaPipe Tasks read. Read it back with :func:`edge.metadata.read_metadata`. Every enum value
and identifier comes from :mod:`edge.schema`, the reader's own definition.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import flatbuffers
import numpy as np

from edge import schema
from edge.flatbuffer import InvalidModelError
from edge.metadata import read_metadata

try:  # the interpreter package ships the TFLite schema object API; TensorFlow has the same module
    from ai_edge_litert import schema_py_generated as tfl
except ImportError:  # pragma: no cover
    from tensorflow.lite.python import schema_py_generated as tfl

LABELS_FILE = "labels.txt"
OPEN_SET_FILE = "open_set.json"  # the none-of-these class: its label and threshold (edge.metadata reads it)
# metadata_schema.fbs: the smallest parser version that understands every field we write
# (ImageProperties without default_size, FeatureProperties, NormalizationOptions, Stats,
# TENSOR_AXIS_LABELS). Google's ImageNet and AutoML models carry the same "1.0.0".
MIN_PARSER_VERSION = "1.0.0"


@dataclass(frozen=True)
class MetadataInfo:
    """What goes into the metadata. Labels are in output index order.

    mean/std: the normalization a client applies to 0-255 RGB before a float input,
    (x - mean) / std. Our models normalize inside the graph: mean 0, std 1.
    input_min/input_max: Stats of the input tensor; None derives them from the input dtype
    (uint8 0..255, int8 -128..127, float (0 - mean) / std .. (255 - mean) / std).
    """

    name: str
    description: str
    version: str
    author: str
    license: str
    labels: list[str]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    input_min: tuple[float, ...] | None = None
    input_max: tuple[float, ...] | None = None
    open_set: dict | None = None  # {"label": the reject class (the last label), "threshold": ...} -> open_set.json

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("labels must not be empty")
        bad = [label for label in self.labels if not label.strip() or "\n" in label or "\r" in label]
        if bad:
            raise ValueError(f"labels must be non-blank single lines, got {bad[0]!r}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need the same non-zero length, got {self.mean} and {self.std}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")
        if self.open_set is not None and self.open_set.get("label") != self.labels[-1]:
            raise ValueError(f"the open-set label {self.open_set.get('label')!r} must be the last label, "
                             f"got {self.labels[-1]!r}")


def input_stats(info: MetadataInfo, tensor_type: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(min, max) Stats of the input tensor: given in info, else derived from its dtype."""
    if info.input_min is not None and info.input_max is not None:
        return tuple(info.input_min), tuple(info.input_max)
    if tensor_type in schema.INT_PIXEL_RANGES:
        lo, hi = schema.INT_PIXEL_RANGES[tensor_type]
        return (lo,), (hi,)
    mean, std = np.asarray(info.mean, np.float64), np.asarray(info.std, np.float64)
    return tuple(((0.0 - mean) / std).tolist()), tuple(((255.0 - mean) / std).tolist())


# --------------------------------------------------------------------------- metadata flatbuffer
class _MetadataBuilder:
    """Thin helpers over flatbuffers.Builder; slots are the field ids of metadata_schema.fbs."""

    def __init__(self) -> None:
        self.b = flatbuffers.Builder(1024)

    def string(self, s: str) -> int:
        return self.b.CreateString(s)

    def floats(self, values) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, dtype="<f4"))

    def vector(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def table(self, n_slots: int, refs: dict[int, int] | None = None, bytes_: dict[int, int] | None = None) -> int:
        """A table with offset fields ``refs`` and ubyte/byte-enum fields ``bytes_`` by slot."""
        self.b.StartObject(n_slots)
        for slot, off in (refs or {}).items():
            self.b.PrependUOffsetTRelativeSlot(slot, off, 0)
        for slot, value in (bytes_ or {}).items():
            self.b.PrependUint8Slot(slot, value, 0)
        return self.b.EndObject()

    def finish(self, root: int) -> bytes:
        self.b.Finish(root, file_identifier=schema.METADATA_IDENTIFIER)
        return bytes(self.b.Output())


def build_metadata(info: MetadataInfo, input_type: int) -> bytes:
    """The ModelMetadata flatbuffer ("M001") of an image classifier: bytes, no model."""
    m = _MetadataBuilder()
    lo, hi = input_stats(info, input_type)

    # Input tensor "image": ImageProperties(RGB), NormalizationOptions, Stats.
    image_props = m.table(2, bytes_={0: schema.RGB})  # ImageProperties.color_space
    image_content = m.table(3, refs={1: image_props}, bytes_={0: schema.IMAGE_PROPERTIES})  # Content
    norm = m.table(2, refs={0: m.floats(info.mean), 1: m.floats(info.std)})  # NormalizationOptions
    unit = m.table(2, refs={1: norm}, bytes_={0: schema.NORMALIZATION_OPTIONS})  # ProcessUnit
    in_stats = m.table(2, refs={0: m.floats(hi), 1: m.floats(lo)})  # Stats: max 0, min 1
    image = m.table(
        7,
        refs={
            0: m.string("image"),
            1: m.string("Input image to be classified: RGB, 0-255 before normalization."),
            3: image_content,
            4: m.vector([unit]),
            5: in_stats,
        },
    )

    # Output tensor "probability": FeatureProperties, Stats 0..1, labels.txt.
    feature_content = m.table(3, refs={1: m.table(0)}, bytes_={0: schema.FEATURE_PROPERTIES})
    out_stats = m.table(2, refs={0: m.floats([1.0]), 1: m.floats([0.0])})
    labels = m.table(
        4,
        refs={0: m.string(LABELS_FILE), 1: m.string("Labels for categories that the model can recognize.")},
        bytes_={2: schema.TENSOR_AXIS_LABELS},
    )
    probability = m.table(
        7,
        refs={
            0: m.string("probability"),
            1: m.string(f"Probabilities of the {len(info.labels)} labels respectively."),
            3: feature_content,
            5: out_stats,
            6: m.vector([labels]),
        },
    )

    subgraph = m.table(7, refs={2: m.vector([image]), 3: m.vector([probability])})
    root = m.table(
        8,
        refs={
            0: m.string(info.name),
            1: m.string(info.description),
            2: m.string(info.version),
            3: m.vector([subgraph]),
            4: m.string(info.author),
            5: m.string(info.license),
            7: m.string(MIN_PARSER_VERSION),
        },
    )
    return m.finish(root)


# --------------------------------------------------------------------------- model rewrite
class _AlignedBufferT(tfl.BufferT):
    """BufferT whose data vector keeps schema.fbs's 16-byte alignment when re-packed."""

    def Pack(self, builder):
        data = None
        if self.data is not None:
            raw = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), schema.BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        tfl.BufferStart(builder)
        if data is not None:
            tfl.BufferAddData(builder, data)
        tfl.BufferAddOffset(builder, self.offset)
        tfl.BufferAddSize(builder, self.size)
        return tfl.BufferEnd(builder)


def _aligned(buffer, model_bytes: bytes) -> _AlignedBufferT:
    """Copy of a BufferT; data stored outside the flatbuffer (offset/size) is pulled inline."""
    if buffer.offset > 1:
        data = np.frombuffer(model_bytes, np.uint8, count=buffer.size, offset=buffer.offset)
        return _AlignedBufferT(data=data)
    return _AlignedBufferT(data=buffer.data, offset=buffer.offset, size=buffer.size)


def _zip_files(files: dict[str, bytes], prefix: bytes) -> bytes:
    """``prefix`` followed by a stored ZIP of ``files`` whose offsets count from the file start."""
    out = io.BytesIO()
    out.write(prefix)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def add_metadata(model_bytes: bytes, info: MetadataInfo) -> bytes:
    """Model bytes -> the same model with metadata and labels.txt. Pure and deterministic.

    Existing Model.metadata entries (e.g. the converter's min_runtime_version) are kept; an
    existing TFLITE_METADATA entry is replaced. Raises ValueError (InvalidModelError for a
    non-TFLite input) when the model is not a single-input, single-output classifier whose
    output size matches the labels.
    """
    read_metadata(model_bytes)  # one-line InvalidModelError for garbage before the object API sees it
    model = tfl.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise ValueError(f"expected 1 input and 1 output, model has {len(sg.inputs)} and {len(sg.outputs)}")
    image, scores = sg.tensors[sg.inputs[0]], sg.tensors[sg.outputs[0]]
    if image.type not in schema.FLOAT_TYPES and image.type not in schema.INT_PIXEL_RANGES:
        raise ValueError(f"unsupported input tensor type {image.type} (expected float or 8-bit integer)")
    n_out = int(scores.shape[-1]) if scores.shape is not None and len(scores.shape) else -1
    if n_out != len(info.labels):
        raise ValueError(f"model has {n_out} outputs but {len(info.labels)} labels were given")
    if len(info.mean) not in (1, int(image.shape[-1])):
        raise ValueError(f"mean/std need 1 or {int(image.shape[-1])} values, got {len(info.mean)}")

    metadata = np.frombuffer(build_metadata(info, image.type), np.uint8)
    model.buffers = [_aligned(b, model_bytes) for b in model.buffers or []]
    entries = list(model.metadata or [])
    existing = [e for e in entries if _name(e.name) == schema.METADATA_NAME]
    if existing:
        model.buffers[existing[0].buffer] = _AlignedBufferT(data=metadata)
    else:
        model.buffers.append(_AlignedBufferT(data=metadata))
        entry = tfl.MetadataT()
        entry.name, entry.buffer = schema.METADATA_NAME, len(model.buffers) - 1
        entries.append(entry)
    model.metadata = entries

    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=schema.MODEL_IDENTIFIER)
    files = {LABELS_FILE: ("\n".join(info.labels) + "\n").encode("utf-8")}
    if info.open_set is not None:
        files[OPEN_SET_FILE] = json.dumps(info.open_set, sort_keys=True).encode("utf-8")
    return _zip_files(files, bytes(builder.Output()))


def _name(name) -> str:
    return name.decode("utf-8", errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)


__all__ = ["MetadataInfo", "add_metadata", "build_metadata", "input_stats", "InvalidModelError", "LABELS_FILE", "OPEN_SET_FILE"]
