"""Folder-per-class datasets: scan, decode once (skipping bad files), stratified seeded splits.

Decoding goes through ``edge.preprocess.prepare``: the same pixels the edge runtime will see.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec, list_images, prepare


class DataError(ValueError):
    """A dataset problem the user must fix; the CLI prints it as one line (exit code 2)."""


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root, POSIX separators
    label: int


@dataclass(frozen=True)
class Splits:
    """The resolved split of a run (written to RUN_DIR/splits.json so later steps reuse it)."""

    data_dir: str
    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[dict] = field(default_factory=list)

    def part(self, name: str) -> list[Sample]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    def paths(self, name: str) -> list[Path]:
        return [Path(self.data_dir) / s.path for s in self.part(name)]

    def targets(self, name: str) -> np.ndarray:
        return np.array([s.label for s in self.part(name)], dtype=np.int64)

    def to_dict(self) -> dict:
        enc = lambda xs: [{"path": s.path, "label": s.label} for s in xs]  # noqa: E731
        return {"data_dir": self.data_dir, "labels": self.labels, "train": enc(self.train),
                "val": enc(self.val), "test": enc(self.test), "skipped": self.skipped}

    @classmethod
    def from_dict(cls, d: dict) -> "Splits":
        dec = lambda xs: [Sample(x["path"], int(x["label"])) for x in xs]  # noqa: E731
        return cls(d["data_dir"], list(d["labels"]), dec(d["train"]), dec(d["val"]), dec(d["test"]),
                   list(d.get("skipped", [])))


def read_splits(run_dir: str | Path) -> Splits:
    path = Path(run_dir) / "splits.json"
    if not path.exists():
        raise DataError(f"{path} not found: is {run_dir} a training run directory?")
    return Splits.from_dict(json.loads(path.read_text()))


def list_classes(root: Path) -> list[str]:
    """Sorted names of the visible sub-folders: the label order of every model trained on root."""
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Class names and every candidate image (not yet decoded)."""
    root = Path(root)
    classes = list_classes(root)
    samples = [Sample(p.relative_to(root).as_posix(), i)
               for i, c in enumerate(classes) for p in list_images(root / c)]
    if not samples:
        raise DataError(f"no images found in {root} (expected {root}/<class>/*.jpg)")
    if len(classes) < 2:
        raise DataError(f"need at least 2 class folders in {root}, found {len(classes)}: {classes}")
    return classes, samples


def _decode(path: Path, spec: PreprocessSpec):
    try:
        return prepare(path, spec), None
    except Exception as exc:  # any decoder failure means "skip this file", reported by reason
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def load_images(paths, spec: PreprocessSpec, threads: int | None = None, progress: str | None = None):
    """Decode paths in a thread pool (PIL releases the GIL) -> (uint8 N*H*W*3, ok mask, errors).

    Failed files are not fatal: their rows stay zero, ok is False and errors maps path -> reason.
    """
    paths = [Path(p) for p in paths]
    out = np.zeros((len(paths), *spec.size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    errors: dict[str, str] = {}
    threads = threads or os.cpu_count() or 2  # one per core: more threads only contend (measured)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda p: _decode(p, spec), paths)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(paths), desc=progress, unit="img")
        for i, (img, err) in enumerate(results):
            if err is None:
                out[i], ok[i] = img, True
            else:
                errors[str(paths[i])] = err
    return out, ok, errors


def stratified_split(samples: list[Sample], n_classes: int, val: float, test: float, seed: int):
    """Per class: shuffle (seeded), take round(n*test) for test, round(n*val) for val (at least
    one each when the fraction is > 0), the rest for train. Returns (train, val, test) lists."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"--val-split and --test-split must be in [0, 1) with a sum below 1, got {val} and {test}")
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in range(n_classes):
        members = [s for s in samples if s.label == c]
        order = rng.permutation(len(members))
        n_test = max(1, round(len(members) * test)) if test > 0 else 0
        n_val = max(1, round(len(members) * val)) if val > 0 else 0
        picked = [members[i] for i in order]
        parts[2].extend(picked[:n_test])
        parts[1].extend(picked[n_test:n_test + n_val])
        parts[0].extend(picked[n_test + n_val:])
    return tuple(sorted(p, key=lambda s: s.path) for p in parts)


def keep_together(parts: tuple[list[Sample], list[Sample], list[Sample]], groups, seed: int):
    """Move photos so that every group (paths of twins: trainer.data.twins) lies in one part of
    (train, val, test). A straddling group goes where most of it already is (ties: train, then
    val, then test); each photo moved trades places with a seeded pick among the photos of its
    class in no group at its destination, so every class keeps its count in every part. Returns
    (parts, how many groups straddled). Only photos of straddling groups (and their trade
    partners) move: with none straddling, the parts come back unchanged."""
    where = {s.path: k for k, part in enumerate(parts) for s in part}
    label = {s.path: s.label for part in parts for s in part}
    grouped = {p for g in groups for p in g if p in where}
    pools: dict[tuple[int, int], list[str]] = {}  # (part, label) -> photos in no group, in path order
    for path in sorted(set(where) - grouped):
        pools.setdefault((where[path], label[path]), []).append(path)
    rng = np.random.default_rng([seed, 0x7417])  # its own stream: the split's draws stay as they were
    moved = rejoined = 0
    for group in sorted(sorted(p for p in g if p in where) for g in groups):
        counts = [sum(where[p] == k for p in group) for k in range(3)]
        target = int(np.argmax(counts))
        if counts[target] == len(group):
            continue
        rejoined += 1
        for path in group:
            source = where[path]
            if source == target:
                continue
            where[path], moved = target, moved + 1
            pool = pools.get((target, label[path]), [])
            if pool:  # a partner of the same class goes the other way
                partner = pool.pop(int(rng.integers(len(pool))))
                where[partner] = source
                pools.setdefault((source, label[path]), []).append(partner)
    if not moved:
        return parts, 0
    samples = {s.path: s for part in parts for s in part}
    out = ([], [], [])
    for path, k in where.items():
        out[k].append(samples[path])
    return tuple(sorted(p, key=lambda s: s.path) for p in out), rejoined


def check_counts(classes: list[str], samples: list[Sample], min_per_class: int) -> None:
    counts = np.bincount([s.label for s in samples], minlength=len(classes))
    low = [f"{c} ({n})" for c, n in zip(classes, counts) if n < min_per_class]
    if low:
        raise DataError(f"classes below the minimum of {min_per_class} readable images: {', '.join(low)}")
