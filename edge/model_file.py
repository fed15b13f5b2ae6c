"""Inspect a .tflite file without TensorFlow: read it, its op names, tensor types, metadata buffers.

Reads are bounds-checked (:mod:`edge.flatbuffer`); :func:`edge.verify.verify_model` checks the
whole structure before an interpreter sees the bytes.
"""

from __future__ import annotations

import os

from edge import schema
from edge.flatbuffer import FlatBuffer, InvalidModelError, Table, guarded


def check_identifier(data: bytes) -> None:
    """Raise unless ``data`` starts like a TFLite flatbuffer (length and "TFL3")."""
    if len(data) < 8:
        raise InvalidModelError(f"not a TFLite model: {len(data)} bytes is too short")
    if data[4:8] != schema.MODEL_IDENTIFIER:
        raise InvalidModelError(f"not a TFLite model: file identifier {data[4:8]!r}, expected b'TFL3'")


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
        check_identifier(data)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{os.fspath(path)!s}: {exc}") from None
    return data


def as_bytes(model: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    """Model bytes from bytes or a path, identifier checked."""
    if isinstance(model, (str, os.PathLike)):
        return read_model_bytes(model)
    data = bytes(model)
    check_identifier(data)
    return data


def model_root(data: bytes) -> Table:
    """The Model table of TFLite bytes (reads are bounds-checked, not yet verified)."""
    return FlatBuffer(data, "corrupt TFLite model").root()


def metadata_entries(model: Table) -> dict[str, bytes]:
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


def _first_subgraph(root: Table) -> Table:
    subgraphs = root.tables(2)
    if not subgraphs:
        raise InvalidModelError("corrupt TFLite model: no subgraphs")
    return subgraphs[0]


@guarded
def op_names(model: bytes | str | os.PathLike) -> list[str]:
    """Builtin op name of each subgraph-0 operator, in execution order (e.g. "CONV_2D").

    The opcode is max(deprecated_builtin_code, builtin_code): old files only set the first
    (capped at 127), new ones set both. Custom ops appear as "CUSTOM:<custom_code>".
    """
    root = model_root(as_bytes(model))
    codes = []
    for oc in root.tables(1):
        code = max(oc.scalar(0, "b"), oc.scalar(3, "i"))
        name = schema.BUILTIN_OPS[code] if 0 <= code < len(schema.BUILTIN_OPS) else f"BUILTIN_{code}"
        if code == schema.CUSTOM_OP:
            name = f"CUSTOM:{oc.string(1) or ''}"
        codes.append(name)
    names = []
    for op in _first_subgraph(root).tables(3):
        index = op.scalar(0, "I")
        if index >= len(codes):
            raise InvalidModelError(f"corrupt TFLite model: opcode index {index} out of range")
        names.append(codes[index])
    return names


@guarded
def tensor_types(model: bytes | str | os.PathLike) -> dict[str, list[str]]:
    """Subgraph-0 input and output tensor dtypes: {"inputs": ["uint8"], "outputs": ["uint8"]}."""
    sg = _first_subgraph(model_root(as_bytes(model)))
    tensors = sg.tables(0)

    def types(slot: int) -> list[str]:
        out = []
        for i in sg.scalars(slot, "i") or ():
            if not 0 <= i < len(tensors):
                raise InvalidModelError(f"corrupt TFLite model: tensor index {i} out of range")
            t = tensors[i].scalar(1, "b")
            out.append(schema.TENSOR_TYPES[t] if 0 <= t < len(schema.TENSOR_TYPES) else f"type_{t}")
        return out

    return {"inputs": types(1), "outputs": types(2)}
