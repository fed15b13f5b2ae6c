"""Evaluate a saved run on any folder-per-class directory (classes matched by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data import dataset
from trainer.data.dataset import DataError
from trainer.data.photos import CHUNK, Photos
from trainer.model.model_io import keras_probabilities, load_keras
from trainer.report import metrics
from trainer.run_dir import CONFIG, LABELS, MODEL, RunDir


def evaluate_folder(run_dir: str | Path, folder: str | Path) -> dict:
    from tqdm.auto import tqdm

    run = RunDir.open(run_dir, require=(MODEL, LABELS, CONFIG))
    labels = run.labels
    root = Path(folder)
    classes = dataset.list_classes(root)
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"class folders not in the model's labels {labels}: {unknown}")
    samples = [dataset.Sample(p.relative_to(root).as_posix(), labels.index(c))
               for c in classes for p in dataset.list_images(root / c)]
    if not samples:
        raise DataError(f"no images found in {root}")
    model = load_keras(run / MODEL)
    photos = Photos(tuple(root / s.path for s in samples), np.array([s.label for s in samples], np.int64), run.spec)
    probs, ys, skipped = [], [], []
    for start in tqdm(range(0, len(photos), CHUNK), desc="evaluate", unit="chunk"):  # bounded memory
        part = photos.take(range(start, min(start + CHUNK, len(photos))))
        images, ok, errors = dataset.load_images(part.paths, run.spec)
        probs.append(keras_probabilities(model, images[ok]))
        ys.append(part.labels[ok])
        skipped += [{"path": p, "reason": r} for p, r in errors.items()]
    probs, ys = np.concatenate(probs), np.concatenate(ys)
    if probs.shape[1] == len(labels) + 1:  # the none-of-these class: the classes' metrics, and its rejections
        rejected = probs.argmax(axis=1) == len(labels)
        result = metrics.classification_report(ys, probs[:, :-1], labels)
        right = probs[:, :-1].argmax(axis=1) == ys
        result["none_of_these"] = {"label": (run.open_set or {}).get("label", "unknown"),
                                   "rejected": round(float(rejected.mean()), 4) if len(ys) else None,
                                   "accuracy_with_rejections": round(float(np.mean(right & ~rejected)), 4)
                                   if len(ys) else None}
    else:
        result = metrics.classification_report(ys, probs, labels)
    result["skipped"] = skipped
    return result
