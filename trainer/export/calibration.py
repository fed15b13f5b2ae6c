"""int8 calibration photos: class-balanced, seeded, decoded by the one preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from trainer.data import dataset
from trainer.data.dataset import DataError
from trainer.run_dir import RunDir

DEFAULT_CALIBRATION_IMAGES = 300


def calibration_paths(splits: dataset.Splits, n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` training photos, class-balanced and seeded: each class in turn gives its next
    photo (in a seeded shuffle) until n are chosen, so small classes are fully represented and
    the activation ranges see every class, whatever the class imbalance."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[dataset.Sample]] = {}
    for s in splits.train:
        by_class.setdefault(s.label, []).append(s)
    queues = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    chosen: list[dataset.Sample] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        chosen.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    chosen = chosen[:n]
    return [Path(splits.data_dir) / s.path for s in chosen]


def calibration_images(run: RunDir, n: int, seed: int = 0) -> np.ndarray:
    """Decoded calibration photos (uint8, the one preprocessing), pixel range anchored at 0..255.

    The uint8 input's quantization comes from the calibrated input range; it must be exactly
    0..255 for scale 1 / zero point 0 (raw pixels in). Photos almost always span it; if the
    chosen ones do not, one pixel of the first image is set to 0 and one to 255.
    """
    if n < 1:
        raise DataError(f"--calibration-images must be at least 1, got {n}")
    splits = run.splits
    if not splits.train:
        raise DataError(f"{run.path}/splits.json has no training photos to calibrate int8 with")
    images, ok, errors = dataset.load_images(calibration_paths(splits, n, seed), run.spec)
    images = images[ok]
    if not len(images):
        raise DataError(f"no calibration photo could be read, e.g. {next(iter(errors.items()))}")
    if images.min() > 0:
        images[0, 0, 0, 0] = 0
    if images.max() < 255:
        images[0, 0, 1, 0] = 255
    return images


SELECTION_IMAGES = 500  # at most this many val photos (evenly spaced): bounded memory on any dataset


def selection_images(run: RunDir, limit: int = SELECTION_IMAGES) -> np.ndarray | None:
    """The validation photos, on which int8 chooses its activation ranges and the layers it keeps
    in float (None: the run has none). Not the calibration photos: their activations lie inside
    the calibrated ranges by construction, so clipping error never shows on them (tf_flowers, the
    test split: 97.8 % agreement when chosen on the calibration photos, 98.8 % on the val photos)."""
    paths = run.splits.paths("val")
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    if not paths:
        return None
    images, ok, _ = dataset.load_images(paths, run.spec)
    return images[ok] if ok.any() else None


def representative_dataset(images: np.ndarray) -> Callable:
    """The converter's calibration input: one float32 0..255 image a step, as model.keras takes."""
    return lambda: ([image[None].astype(np.float32)] for image in images)
