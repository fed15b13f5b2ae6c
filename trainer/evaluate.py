"""Evaluate a saved run on any folder-per-class directory (classes matched by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer import data, metrics
from trainer.data import DataError
from trainer.model_io import keras_probabilities, load_keras
from trainer.run_dir import CONFIG, LABELS, MODEL, RunDir


def evaluate_folder(run_dir: str | Path, folder: str | Path) -> dict:
    run = RunDir.open(run_dir, require=(MODEL, LABELS, CONFIG))
    labels = run.labels
    root = Path(folder)
    classes = data.list_classes(root)
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"class folders not in the model's labels {labels}: {unknown}")
    samples = [data.Sample(p.relative_to(root).as_posix(), labels.index(c))
               for c in classes for p in data.list_images(root / c)]
    if not samples:
        raise DataError(f"no images found in {root}")
    images, ok, errors = data.load_images([root / s.path for s in samples], run.spec, progress="decode")
    model = load_keras(run / MODEL)
    y = np.array([s.label for s in samples])[ok]
    probs = keras_probabilities(model, images[ok])
    result = metrics.classification_report(y, probs, labels)
    result["skipped"] = [{"path": p, "reason": r} for p, r in errors.items()]
    return result
