"""The one benchmark core: bare invoke latency and per-photo end to end, with fixed counts.

`python -m edge bench`, `python -m trainer bench` and `benchmarks/` all time through these
functions, so their numbers mean the same thing. Sizes are reported in MB = 10^6 bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edge.runtime import LoadedModel, invoke

MB = 1_000_000


def size_mb(n_bytes: int) -> float:
    """Bytes -> MB (10^6 bytes), two decimals: the one size unit of every table."""
    return round(n_bytes / MB, 2)


@dataclass(frozen=True)
class Timing:
    """Milliseconds per item over a fixed number of timed runs."""

    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float

    @classmethod
    def of(cls, ms: np.ndarray) -> "Timing":
        ms = np.asarray(ms, np.float64)
        return cls(len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), float(ms.mean()))

    @property
    def images_per_s(self) -> float:
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"runs": self.runs, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms,
                "images_per_s": self.images_per_s}


def random_input(model: LoadedModel, seed: int = 0) -> np.ndarray:
    """A seeded random tensor of the model's input shape and dtype (the same every run)."""
    rng = np.random.default_rng(seed)
    spec = model.input
    if spec.dtype.kind == "f":
        return rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    return rng.integers(info.min, info.max, size=spec.shape, dtype=spec.dtype, endpoint=True)


def time_invoke(model: LoadedModel, runs: int = 50, warmup: int = 5, seed: int = 0) -> Timing:
    """set_tensor + invoke on seeded random input: the interpreter's own cost."""
    data = random_input(model, seed)
    interpreter, index = model.interpreter, model.input.index
    for _ in range(warmup):
        interpreter.set_tensor(index, data)
        invoke(interpreter)
    times = np.empty(max(1, runs))
    for i in range(len(times)):
        start = time.perf_counter()
        interpreter.set_tensor(index, data)
        invoke(interpreter)
        times[i] = (time.perf_counter() - start) * 1000
    return Timing.of(times)


def time_photos(classifier, photos: Iterable[str | Path], warmup: int = 2) -> Timing:
    """Photo file -> top-k, one at a time (decode, resize, invoke, rank): what a user waits for."""
    photos = list(photos)
    if not photos:
        raise ValueError("no photos to time")
    for photo in photos[:warmup]:
        classifier.classify_path(photo)
    times = np.empty(len(photos))
    for i, photo in enumerate(photos):
        start = time.perf_counter()
        classifier.classify_path(photo)
        times[i] = (time.perf_counter() - start) * 1000
    return Timing.of(times)


def time_folder(classifier, photos: Iterable[str | Path]) -> float:
    """ms per photo of the CLI's folder path (decoding ahead while the interpreter runs)."""
    photos = list(photos)
    start = time.perf_counter()
    results = list(classifier.classify_paths(photos))
    elapsed = time.perf_counter() - start
    failed = [r.path for r in results if r.error]
    if failed:
        raise ValueError(f"benchmark photos failed: {failed[:3]}")
    return elapsed * 1000 / max(1, len(photos))
