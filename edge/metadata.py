"""Read a .tflite model's TFLite metadata (labels, normalization, model info) without TensorFlow.

The ModelMetadata flatbuffer ("M001", tflite-support ``metadata_schema.fbs``) sits in a Model
buffer named "TFLITE_METADATA"; associated files (e.g. ``labels.txt``) live in a ZIP appended
to the flatbuffer, read with ``zipfile``. A damaged metadata flatbuffer raises
:class:`InvalidModelError` (one line): without it the normalization cannot be trusted. A
damaged or missing labels file does not: labels fall back to indices and
:attr:`ModelMetadata.warnings` says why, so the model still classifies. Likewise a damaged
``open_set.json`` (the none-of-these class) only drops that class's special meaning.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, field

from edge import schema
from edge.flatbuffer import FlatBuffer, InvalidModelError, Table, guarded
from edge.model_file import as_bytes, metadata_entries, model_root

__all__ = ["OPEN_SET_FILE", "InvalidModelError", "ModelMetadata", "OpenSet", "dump_metadata", "metadata_dict",
           "read_metadata"]

OPEN_SET_FILE = "open_set.json"  # written by trainer.export.metadata beside labels.txt


@dataclass(frozen=True)
class OpenSet:
    """The model's "none of these" class (open_set.json): always the last output, so a client
    can say "none of these" instead of naming a wrong flower. threshold / keep are the trainer's
    calibration, for the record: the decision is already in the scores (the reject class wins)."""

    label: str
    threshold: float | None = None
    keep: float | None = None


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
    warnings: tuple[str, ...] = ()  # one line each: what was damaged and what was used instead
    open_set: OpenSet | None = None  # from open_set.json; None without one, or when it is damaged


def _floats(table: Table | None, slot: int) -> tuple[float, ...] | None:
    if table is None:
        return None
    values = table.scalars(slot, "f")
    return None if values is None else tuple(float(v) for v in values)


def _normalization(tensor: Table) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    for unit in tensor.tables(4):  # process_units
        if unit.scalar(0, "B") == schema.NORMALIZATION_OPTIONS:
            options = unit.table(1)
            return _floats(options, 0), _floats(options, 1)
    return None, None


def _color_space(tensor: Table) -> str | None:
    content = tensor.table(3)
    if content is None or content.scalar(0, "B") != schema.IMAGE_PROPERTIES:
        return None
    props = content.table(1)
    if props is None:
        return None
    cs = props.scalar(0, "b")
    return schema.COLOR_SPACES[cs] if 0 <= cs < len(schema.COLOR_SPACES) else f"COLOR_SPACE_{cs}"


def _label_file(tensor: Table) -> str | None:
    for f in tensor.tables(6):  # associated_files
        if f.scalar(2, "b") == schema.TENSOR_AXIS_LABELS:
            return f.string(0)
    return None


def _zip_files(data: bytes) -> tuple[dict[str, bytes], str | None]:
    """Files of the ZIP appended to the flatbuffer ({} when there is none), and a warning
    when it is there but unreadable."""
    if b"PK\x05\x06" not in data[-(65535 + 22) :]:
        return {}, None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {info.filename: z.read(info) for info in z.infolist() if not info.is_dir()}, None
    except Exception as exc:  # zipfile/zlib raise a zoo of types on garbage; all mean "corrupt"
        detail = " ".join(str(exc).split())[:200]
        return {}, f"associated-file zip is corrupt ({type(exc).__name__}: {detail})"


def _split_lines(raw: bytes) -> list[str]:
    """One label a line; inner blank lines are kept so line i stays output index i."""
    lines = [line.rstrip("\r") for line in raw.decode("utf-8", errors="replace").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _open_set(files: dict[str, bytes], labels: list[str] | None) -> tuple[OpenSet | None, str | None]:
    """open_set.json -> (OpenSet, None); (None, a warning) when it is damaged or its label is
    not the last label (the reject class must be the last output); (None, None) without one."""
    raw = files.get(OPEN_SET_FILE)
    if raw is None:
        return None, None
    try:
        spec = json.loads(raw.decode("utf-8"))
        if not isinstance(spec, dict) or not isinstance(spec.get("label"), str) or not spec["label"]:
            raise ValueError("no label")
        found = OpenSet(spec["label"], _number(spec.get("threshold")), _number(spec.get("keep")))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        detail = " ".join(str(exc).split())[:120]
        return None, f"{OPEN_SET_FILE} is damaged ({detail}); no none-of-these class"
    if not labels or labels[-1] != found.label:
        last = f"the last label is {labels[-1]!r}" if labels else "the model has no labels"
        return None, f"{OPEN_SET_FILE} names {found.label!r} but {last}; no none-of-these class"
    return found, None


@guarded
def read_metadata(model: bytes | str | os.PathLike) -> ModelMetadata:
    """Metadata of a .tflite model (bytes or path). A model without metadata is not an error."""
    data = as_bytes(model)
    entries = metadata_entries(model_root(data))
    runtime = entries.get(schema.MIN_RUNTIME_NAME)
    min_runtime = runtime.split(b"\0", 1)[0].decode("ascii", errors="replace") if runtime else None
    files, zip_warning = _zip_files(data)
    warnings = [zip_warning] if zip_warning else []
    raw = entries.get(schema.METADATA_NAME)
    if raw is None:
        return ModelMetadata(associated_files=files, min_runtime_version=min_runtime, warnings=tuple(warnings))
    if raw[4:8] != schema.METADATA_IDENTIFIER:
        raise InvalidModelError(f"corrupt TFLite metadata: identifier {raw[4:8]!r}, expected b'M001'")
    meta = FlatBuffer(raw, "corrupt TFLite metadata").root()
    subgraphs = meta.tables(3)
    inputs = subgraphs[0].tables(2) if subgraphs else []
    outputs = subgraphs[0].tables(3) if subgraphs else []
    image = inputs[0] if inputs else None
    mean, std = _normalization(image) if image else (None, None)
    stats = image.table(5) if image else None
    label_name = _label_file(outputs[0]) if outputs else None
    labels = None
    if label_name is not None and label_name in files:
        labels = _split_lines(files[label_name])
    elif label_name is not None:
        why = zip_warning or f"metadata names label file {label_name!r} but the model does not contain it"
        warnings = [f"{why}; labels are category indices"]
    open_set, open_set_warning = _open_set(files, labels)
    warnings += [open_set_warning] if open_set_warning else []
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
        open_set=open_set,
        warnings=tuple(warnings),
    )


def metadata_dict(meta: ModelMetadata) -> dict:
    """A JSON-ready, canonical view of ModelMetadata (associated files as name -> size and
    text), for golden files and `--json` dumps. ``open_set`` ({label, threshold, keep}) is there
    only when the model has one, so the dump of a model without it is unchanged."""
    out = asdict(meta)
    if out["open_set"] is None:
        del out["open_set"]
    out["associated_files"] = {
        name: {"bytes": len(raw), "text": raw.decode("utf-8", errors="replace")}
        for name, raw in sorted(meta.associated_files.items())
    }
    for key in ("mean", "std", "input_min", "input_max", "warnings"):
        if out[key] is not None:
            out[key] = list(out[key])
    return out


def _tensor_dict(tensor: Table) -> dict:
    content = tensor.table(3)
    kind = content.scalar(0, "B") if content is not None else None
    props = content.table(1) if content is not None and kind == schema.IMAGE_PROPERTIES else None
    stats = tensor.table(5)
    return {
        "name": tensor.string(0),
        "description": tensor.string(1),
        "content": None if content is None else {"type": kind, "color_space": props and props.scalar(0, "b")},
        "process_units": [{"type": u.scalar(0, "B"), "mean": _floats(u.table(1), 0), "std": _floats(u.table(1), 1)}
                          for u in tensor.tables(4)],
        "stats": None if stats is None else {"max": _floats(stats, 0), "min": _floats(stats, 1)},
        "associated_files": [{"name": f.string(0), "description": f.string(1), "type": f.scalar(2, "b")}
                             for f in tensor.tables(6)],
    }


@guarded
def dump_metadata(model: bytes | str | os.PathLike) -> dict:
    """Everything the metadata says, JSON-ready: :func:`metadata_dict` plus each subgraph's
    tensor metadata as written (names, descriptions, content, process units, stats, files)."""
    data = as_bytes(model)
    out = {"metadata": metadata_dict(read_metadata(data)), "subgraphs": []}
    raw = metadata_entries(model_root(data)).get(schema.METADATA_NAME)
    if raw is not None:
        for sg in FlatBuffer(raw, "corrupt TFLite metadata").root().tables(3):
            out["subgraphs"].append({"name": sg.string(0), "description": sg.string(1),
                                     "inputs": [_tensor_dict(t) for t in sg.tables(2)],
                                     "outputs": [_tensor_dict(t) for t in sg.tables(3)]})
    return out
