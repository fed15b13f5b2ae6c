"""Evaluate a saved run on any folder-per-class directory (classes matched by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec
from trainer import data, metrics
from trainer.data import DataError


def load_run(run_dir: str | Path):
    """(keras model, labels, PreprocessSpec) of a run directory, with clear errors."""
    import json

    import keras

    import trainer.hub_layer  # noqa: F401  registers the hub layer for keras.models.load_model

    run_dir = Path(run_dir)
    for name in ("model.keras", "labels.txt", "config.json"):
        if not (run_dir / name).exists():
            raise DataError(f"{run_dir / name} not found: is {run_dir} a training run directory?")
    labels = (run_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
    spec = PreprocessSpec.from_dict(json.loads((run_dir / "config.json").read_text())["preprocess"])
    return keras.models.load_model(run_dir / "model.keras"), labels, spec


def evaluate_folder(run_dir: str | Path, folder: str | Path) -> dict:
    model, labels, spec = load_run(run_dir)
    root = Path(folder)
    classes = data.list_classes(root)
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"class folders not in the model's labels {labels}: {unknown}")
    samples = [data.Sample(p.relative_to(root).as_posix(), labels.index(c))
               for c in classes for p in data.list_images(root / c)]
    if not samples:
        raise DataError(f"no images found in {root}")
    images, ok, errors = data.load_images([root / s.path for s in samples], spec, progress="decode")
    y = np.array([s.label for s in samples])[ok]
    probs = model.predict(images[ok].astype(np.float32), batch_size=32, verbose=0)
    result = metrics.classification_report(y, probs, labels)
    result["skipped"] = [{"path": p, "reason": r} for p, r in errors.items()]
    return result
