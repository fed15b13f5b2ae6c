"""Feature tables on disk: an (N, D) float32 matrix in a raw file, read and written by row ranges.

Plain reads and writes, not a memory map: the pages a map touches count as the process's
memory (peak RSS grew with the photos when the tables were memory-mapped), while a read of a
row range costs only that range. Readers slice it like an array: ``rows[a:b]`` -> ndarray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 2048  # rows per read when copying: 10 MB at D=1280
_F32 = np.dtype(np.float32).itemsize


@dataclass(frozen=True)
class Rows:
    path: Path
    n: int
    d: int

    @classmethod
    def create(cls, path: Path, n: int, d: int) -> "Rows":
        with open(path, "wb") as f:
            f.truncate(n * d * _F32)
        return cls(Path(path), n, d)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("Rows reads contiguous row ranges: rows[a:b]")
        start, stop, _ = index.indices(self.n)
        count = max(0, stop - start)
        with open(self.path, "rb") as f:
            f.seek(start * self.d * _F32)
            return np.fromfile(f, np.float32, count * self.d).reshape(count, self.d)

    def write(self, start: int, values: np.ndarray) -> None:
        """Rows ``start .. start + len(values)`` (they must be contiguous)."""
        with open(self.path, "r+b") as f:
            f.seek(start * self.d * _F32)
            f.write(np.ascontiguousarray(values, np.float32).tobytes())

    def read_all(self) -> np.ndarray:
        """The whole table in memory: for small tables (tests, a few photos) only."""
        return self[:]

    def gather(self, rows: np.ndarray, out: Path) -> "Rows":
        """Rows ``rows`` (any order) into a new table at ``out``: one sequential pass over this one
        in bounded chunks, each chosen row written at its place."""
        rows = np.asarray(rows, np.int64)
        dst = Rows.create(out, len(rows), self.d)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        for start in range(0, self.n, CHUNK):
            lo, hi = np.searchsorted(sorted_rows, [start, start + CHUNK])
            if lo == hi:
                continue
            block = self[start:start + CHUNK]
            picked, places = block[sorted_rows[lo:hi] - start], order[lo:hi]
            if np.all(np.diff(places) == 1):  # the usual case: rows ascending, one write
                dst.write(int(places[0]), picked)
            else:
                for place, value in zip(places, picked):
                    dst.write(int(place), value[None])
        return dst

    @staticmethod
    def concat(parts: list["Rows"], out: Path) -> "Rows":
        """The rows of ``parts`` one after the other in a new table, copied in bounded chunks."""
        dst = Rows.create(out, sum(p.n for p in parts), parts[0].d)
        offset = 0
        for part in parts:
            for start in range(0, part.n, CHUNK):
                dst.write(offset + start, part[start:start + CHUNK])
            offset += part.n
        return dst
