"""`trainer doctor DATA...`: scan, one feature pass through the cache, the findings, the files.

Output: doctor.json (the findings, paths as given on the command line) and doctor.html (a contact
sheet per finding) in ``--out``, by default a new runs/doctor, runs/doctor2, ... Both are written
atomically; a run stopped before it writes leaves no folder it made.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec, list_images
from trainer import atomic
from trainer.config import BackboneConfig
from trainer.data import dataset
from trainer.data.dataset import DataError
from trainer.doctor import labels as label_check
from trainer.doctor import page
from trainer.doctor import twins as twin_check
from trainer.run_dir import RUNS, next_run_dir

JSON, HTML = "doctor.json", "doctor.html"
MIN_PER_CLASS = 2  # a label is judged against the other photos of its class


@dataclass(frozen=True)
class Photo:
    path: str  # as given: the DATA argument joined with the path under it
    rel: str  # relative to its folder (POSIX)
    folder: int
    label: int


def scan(folders: list[str]) -> tuple[list[str], list[Photo]]:
    """Class names (the union over the folders, sorted) and every candidate photo."""
    named = []
    for folder in folders:
        classes, _ = dataset.scan(folder)  # one line for a missing, empty or one-class folder
        named.append(classes)
    labels = sorted({c for classes in named for c in classes})
    photos = []
    for k, (folder, classes) in enumerate(zip(folders, named)):
        root = Path(folder)
        for c in classes:
            for p in list_images(root / c):
                rel = p.relative_to(root).as_posix()
                photos.append(Photo(os.path.join(folder, rel), rel, k, labels.index(c)))
    return labels, photos


def _check_counts(labels: list[str], y: np.ndarray) -> None:
    counts = np.bincount(y, minlength=len(labels))
    if np.count_nonzero(counts) < 2:
        raise DataError("need readable photos in at least 2 classes to check labels, found "
                        f"{np.count_nonzero(counts)}")
    low = [f"{c} ({n})" for c, n in zip(labels, counts) if n < MIN_PER_CLASS]
    if low:
        raise DataError(f"classes with fewer than {MIN_PER_CLASS} readable photos (a label is judged against the "
                        f"others of its class): {', '.join(low)}")


def examine(folders: list[str], backbone: BackboneConfig, seeds: int = label_check.SEEDS,
            progress: bool = True) -> dict:
    """Every finding, as doctor.json holds them."""
    from trainer.data.feature_cache import FeatureCache
    from trainer.fit import features
    from trainer.model.backbones import build_backbone, resolved

    t0 = time.perf_counter()
    labels, photos = scan(folders)
    backbone = resolved(backbone)
    spec = PreprocessSpec(size=(backbone.image_size, backbone.image_size))
    cache = FeatureCache.default()
    extractor = features.Extractor(build_backbone(backbone).feature_model(), cache)
    with tempfile.TemporaryDirectory(prefix="edge-transfer-doctor-") as work:
        table = features.extract([Path(p.path) for p in photos], spec, extractor, cache, Path(work) / "f.f32",
                                 progress="features" if progress else None, fingerprints=True)
        rows = np.flatnonzero(table.ok)
        x = table.rows.read_all()[rows] if table.rows is not None else np.zeros((0, 0), np.float32)
    t_features = time.perf_counter() - t0
    y = np.array([photos[r].label for r in rows], np.int64)
    _check_counts(labels, y)
    reduced = label_check.reduce(x, y, len(labels))
    probs = label_check.probabilities(reduced, y, len(labels), seeds,
                                      progress="labels (k-fold heads)" if progress else None)
    at = lambda k: photos[rows[k]].path  # noqa: E731
    readable = [d if good else None for d, good in zip(table.digests, table.ok)]  # unreadable: "skipped" only
    groups = twin_check.find(readable, table.phashes, table.phash_ok, x, rows)
    several = len(folders) > 1
    return {
        "data": [str(Path(f).resolve()) for f in folders], "cwd": os.getcwd(), "labels": labels,
        "photos": len(photos), "readable": len(rows),
        "mislabeled": label_check.mislabeled(probs, y, labels, at),
        "duplicates": twin_check.entries(groups, lambda i: photos[i].path, lambda i: labels[photos[i].label],
                                         (lambda i: folders[photos[i].folder]) if several else None),
        "outliers": label_check.outliers(reduced, y, labels, at),
        "skipped": [{"path": photos[r].path, "reason": reason} for r, reason in sorted(table.errors.items())],
        "settings": {"backbone": backbone.name, "image_size": backbone.image_size, "seeds": seeds,
                     "preprocess": spec.to_dict()},
        "timings": {"features_s": round(t_features, 2), "total_s": round(time.perf_counter() - t0, 2),
                    "cache_hits": table.hits},
    }


def backbone_of(config: str | Path | None, name: str, image_size: int) -> BackboneConfig:
    """A run's backbone (its config.json: the same cached features), else the one named."""
    import json

    from trainer.config import RunConfig

    if config is None:
        return BackboneConfig(name, image_size=image_size)
    try:
        return RunConfig.from_dict(json.loads(Path(config).read_text())).backbone
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read run config {config}: {exc}".splitlines()[0]) from None


def summary_line(found: dict, where: Path) -> str:
    dup = found["duplicates"]
    return (f"{len(found['mislabeled'])} look mislabeled, {len(dup)} twin groups "
            f"({sum(d['kind'] == 'exact' for d in dup)} exact, {sum(len(d['classes']) > 1 for d in dup)} across "
            f"classes), {len(found['outliers'])} of no class, {len(found['skipped'])} unreadable; "
            f"{found['timings']['total_s']:.1f} s; wrote {where / HTML} and {JSON}")


def choose_out(out: str | Path | None) -> tuple[Path, bool]:
    """(--out, or a new runs/doctor, runs/doctor2, ...; whether this made it)."""
    if out is None:
        return next_run_dir(RUNS, "doctor"), True
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: give a folder")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out, made


def write(out: Path, found: dict) -> tuple[Path, Path]:
    """doctor.json, then doctor.html, each atomically (temp file + rename)."""
    return atomic.write_json(out / JSON, found), atomic.write_text(out / HTML, page.render(found))


def run(folders: list[str], out: str | Path | None, backbone: BackboneConfig, seeds: int = label_check.SEEDS,
        progress: bool = True) -> tuple[dict, Path]:
    """The whole command: findings written to the output folder (which is removed again when
    this made it and stops before writing: an error, Ctrl-C)."""
    labels, photos = scan(folders)  # before TensorFlow loads and before any folder is made
    _check_counts(labels, np.array([p.label for p in photos], np.int64))
    target, made = choose_out(out)
    try:
        found = examine(folders, backbone, seeds, progress)
        write(target, found)
    except BaseException:
        if made and not any(target.iterdir()):
            target.rmdir()
        raise
    return found, target
