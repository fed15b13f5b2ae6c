"""A small bounds-checked flatbuffer reader on ``struct``, for files nobody vouches for.

The edge side must not depend on the ``flatbuffers`` package or TensorFlow, and a .tflite file
is hostile input: every read is checked against the buffer, every fault becomes an
:class:`InvalidModelError` with one line, and table nesting is bounded so cyclic offsets end.
Field slots are the field ids of the schema (see :mod:`edge.schema`).
"""

from __future__ import annotations

import functools
import struct

MAX_DEPTH = 64  # nesting guard against cyclic offsets in hostile files

_U8, _U16, _I32, _U32 = (struct.Struct(f"<{c}") for c in "BHiI")


class InvalidModelError(ValueError):
    """Not a TFLite flatbuffer, truncated, or garbage. The message is always one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class FlatBuffer:
    """Bounds-checked little-endian reads over bytes; ``what`` prefixes every error."""

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.size = len(data)
        self.what = what

    def fail(self, why: str) -> InvalidModelError:
        return InvalidModelError(f"{self.what}: {why}")

    def read(self, fmt: str, pos: int):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > self.size:
            raise self.fail(f"offset {pos} out of bounds (size {self.size})")
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > self.size:
            raise self.fail(f"offset {pos} out of bounds (size {self.size})")
        return _U32.unpack_from(self.data, pos)[0]

    def check(self, pos: int, size: int) -> None:
        """Raise unless [pos, pos + size) lies inside the buffer (no copy)."""
        if pos < 0 or size < 0 or pos + size > self.size:
            raise self.fail(f"range {pos}+{size} out of bounds (size {self.size})")

    def span(self, pos: int, size: int) -> bytes:
        self.check(pos, size)
        return self.data[pos : pos + size]

    def root(self) -> "Table":
        off = self.u32(0)
        if not 0 < off < 0x80000000:
            raise self.fail(f"bad root offset {off}")
        return Table(self, off, 0)


class Table:
    """A flatbuffer table: a position plus its vtable; slot n is field id n of the schema.

    Construction checks the vtable and the table's inline object are inside the buffer, so
    every later field read only needs its own bounds check."""

    __slots__ = ("buf", "pos", "depth", "vtable", "vt_size", "obj_size")

    def __init__(self, buf: FlatBuffer, pos: int, depth: int):
        if depth > MAX_DEPTH:
            raise buf.fail("tables nested too deep")
        if pos < 0 or pos + 4 > buf.size:
            raise buf.fail(f"table at {pos} out of bounds (size {buf.size})")
        self.buf, self.pos, self.depth = buf, pos, depth
        self.vtable = vtable = pos - _I32.unpack_from(buf.data, pos)[0]
        if vtable < 0 or vtable + 4 > buf.size:
            raise buf.fail(f"vtable {vtable} of table {pos} out of bounds (size {buf.size})")
        self.vt_size, self.obj_size = struct.unpack_from("<HH", buf.data, vtable)
        if self.vt_size < 4 or self.vt_size % 2 or vtable + self.vt_size > buf.size:
            raise buf.fail(f"bad vtable at {vtable}")
        if self.obj_size < 4 or pos + self.obj_size > buf.size:
            raise buf.fail(f"table at {pos} of size {self.obj_size} out of bounds (size {buf.size})")

    def field(self, slot: int) -> int | None:
        """Absolute position of field ``slot``, or None when absent (default value)."""
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return None
        off = _U16.unpack_from(self.buf.data, self.vtable + entry)[0]
        if not off:
            return None
        if off >= self.obj_size:
            raise self.buf.fail(f"field {slot} of table {self.pos} lies outside the table")
        return self.pos + off

    def has(self, slot: int) -> bool:
        return self.field(slot) is not None

    def _deref(self, pos: int) -> int:
        """Follow a uoffset: 0 (pointing at itself) and >= 2**31 are invalid, as flatbuffers'
        own verifier says."""
        off = self.buf.u32(pos)
        if not 0 < off < 0x80000000:
            raise self.buf.fail(f"bad offset {off} at {pos}")
        return pos + off

    def scalar(self, slot: int, fmt: str, default=0):
        pos = self.field(slot)
        return default if pos is None else self.buf.read(fmt, pos)

    def table(self, slot: int) -> "Table | None":
        pos = self.field(slot)
        return None if pos is None else Table(self.buf, self._deref(pos), self.depth + 1)

    def vector(self, slot: int, elem_size: int) -> tuple[int, int] | None:
        """(start of the elements, count) of a vector field, bounds-checked; None when absent."""
        pos = self.field(slot)
        if pos is None:
            return None
        start = self._deref(pos)
        n = self.buf.u32(start)
        self.buf.check(start + 4, n * elem_size)  # bounds check before anyone iterates
        return start + 4, n

    def string(self, slot: int) -> str | None:
        raw = self.bytes(slot)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def bytes(self, slot: int) -> bytes | None:
        vec = self.vector(slot, 1)
        return None if vec is None else self.buf.span(*vec)

    def scalars(self, slot: int, fmt: str) -> tuple | None:
        size = struct.calcsize(fmt)
        vec = self.vector(slot, size)
        if vec is None:
            return None
        start, n = vec
        return struct.unpack_from(f"<{n}{fmt}", self.buf.data, start)

    def tables(self, slot: int) -> list["Table"]:
        vec = self.vector(slot, 4)
        if vec is None:
            return []
        start, n = vec
        return [Table(self.buf, self._deref(start + 4 * i), self.depth + 1) for i in range(n)]


def guarded(fn):
    """Turn any low-level fault on hostile bytes into a one-line InvalidModelError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InvalidModelError:
            raise
        except (struct.error, IndexError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
            raise InvalidModelError(f"corrupt TFLite model: {type(exc).__name__}: {exc}") from None

    return wrapper
