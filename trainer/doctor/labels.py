"""Labels that look wrong and photos of no class, ranked, from the cached features.

The probabilities are out of sample: k-fold softmax heads over ``SEEDS`` fold seeds, averaged half
and half with a leave-one-out neighbour vote (trainer.fit.checks, which `train` runs with one
seed). On tf_flowers/train with 40 labels flipped on purpose the lowest 100 held 35-39 of them
(6 draws), where one 5-fold linear probe held 31-36: docs/doctor.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainer.fit import checks

SEEDS = 3


def reduce(x: np.ndarray, y: np.ndarray, n_classes: int) -> checks.Reduced:
    """The features on their principal axes and their cosines to the class means."""
    with checks.one_blas_thread():
        return checks.reduce([x], y, n_classes)


def probabilities(reduced: checks.Reduced, y: np.ndarray, n_classes: int, seeds: int = SEEDS,
                  progress: str | None = "labels (k-fold heads)") -> np.ndarray:
    """Out-of-sample class probabilities of every photo, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=seeds * checks.FOLDS, desc=progress, unit="fit", disable=progress is None) as bar:
        return checks.label_probabilities(reduced, y, n_classes, seeds=seeds, done=lambda: bar.update(1))


def mislabeled(probs: np.ndarray, y: np.ndarray, labels: list[str], path: Callable[[int], str]) -> list[dict]:
    """The flagged photos, most suspicious first: path, given label, suggested label and the
    out-of-sample probability of the given label (``score``: lower is more suspicious)."""
    return [{"path": path(r), "label": labels[y[r]], "suggested": labels[c], "score": round(p, 4)}
            for r, c, p in checks.mislabeled(probs, y)]


def outliers(reduced: checks.Reduced, y: np.ndarray, labels: list[str], path: Callable[[int], str]) -> list[dict]:
    """Photos far from every class, farthest first: path, given label, the nearest class and the
    cosine to its mean (``score``: lower is farther)."""
    return [{"path": path(r), "label": labels[y[r]], "nearest": labels[c], "score": round(s, 4)}
            for r, c, s in checks.outliers(reduced)]


def ranking(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Every row, most suspicious first (flagged or not): what the benchmark counts."""
    return checks.suspicion_order(probs, y)
