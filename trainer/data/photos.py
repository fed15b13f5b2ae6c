"""Photos as a list of files, decoded in bounded chunks when a stage needs their pixels.

No stage holds a dataset's decoded images: memory stays the same at 3,000 photos or 3 million.
Decoding goes through ``trainer.data.dataset.load_images`` (so ``edge.preprocess``: the one preprocessing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec
from trainer.data import dataset

CHUNK = 256  # photos decoded at a time: 38 MB of uint8 at 224x224


@dataclass(frozen=True)
class Photos:
    """Files with their labels and the preprocessing that turns them into model input."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, one per path
    spec: PreprocessSpec

    @classmethod
    def of(cls, splits: dataset.Splits, name: str, spec: PreprocessSpec) -> "Photos":
        return cls(tuple(splits.paths(name)), splits.targets(name), spec)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows) -> "Photos":
        rows = np.asarray(rows, np.int64)
        return Photos(tuple(self.paths[i] for i in rows), self.labels[rows], self.spec)

    def chunks(self, size: int = CHUNK, progress: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 images, labels) of up to ``size`` readable photos at a time, in order.

        A file that no longer decodes is dropped from its chunk (the feature pass that chose the
        photos already skipped and reported every unreadable file)."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self), desc=progress, unit="img", mininterval=0.5)
        try:
            for start in range(0, len(self), size):
                images, ok, _ = dataset.load_images(self.paths[start:start + size], self.spec)
                if bar is not None:
                    bar.update(len(ok))
                yield images[ok], self.labels[start:start + size][ok]
        finally:
            if bar is not None:
                bar.close()

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """All of them at once: only for a small, bounded set (a plot's 16 photos, calibration)."""
        images, ok, _ = dataset.load_images(self.paths, self.spec)
        return images[ok], self.labels[ok]
