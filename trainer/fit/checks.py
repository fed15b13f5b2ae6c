"""The data check `train` runs on its own features, and the pieces `trainer doctor` builds on.

No backbone pass: everything works on the pooled features already extracted (through the cache).

- **Mislabeled**: out-of-fold probabilities. A softmax head (the head's objective: class-balanced
  cross-entropy + L2, solved by L-BFGS) is fitted on k - 1 folds and scores the fold left out, on
  the centered features projected onto their top ``DIMS`` principal axes (:func:`reduce`, two
  streamed passes: 1 KB a photo in memory, fits ~5x cheaper, the same photos ranked); averaged
  over fold seeds and, up to ``KNN_MAX`` photos, with a leave-one-out k-nearest-neighbour vote
  (cosine on the same axes, softmax-weighted). A photo is flagged when a
  class other than its own clears that class's confident-learning threshold (the mean probability
  of the class among its own photos) and beats it: Northcutt et al., "Confident Learning" (2021),
  the method of cleanlab, whose code is AGPL-3.0 (we write the small part we need).
- **Of no class**: the largest cosine to the class means (normalized embeddings) below
  Q1 - 1.5 IQR of every photo's.
- **Twins**: trainer.data.twins (sha256 and pHash) with the embedding cosine as the second opinion.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.data import twins

FOLDS = 5
DIMS = 256  # principal axes the k-fold heads are fitted on
L2 = 1e-2  # of the k-fold heads (tf_flowers, 40 flipped labels: 1e-2 to 3e-2 rank them best)
MAX_ITER = 200
KNN_K, KNN_TEMPERATURE = 10, 0.05
KNN_MAX = 20_000  # photos up to which the neighbour vote runs (its cost grows with their square)
CHUNK = 256  # rows at a time (the neighbour vote's similarities: CHUNK x N floats)
TOP = 6  # photos of each finding that report.json keeps


_THREAD_CALLS = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads", "openblas_{}_num_threads64_",
                 "openblas_{}_num_threads")


@contextlib.contextmanager
def one_blas_thread():
    """numpy's and scipy's OpenBLAS on one thread meanwhile (then as they were): the k-fold fits are
    hundreds of small products, and waking its threads for each costs more than they give (5 folds
    of tf_flowers on a busy 2-core machine: 1.1 s on one thread, 12.5 s on its default). A no-op
    where no OpenBLAS is loaded (not Linux, another BLAS)."""
    undo = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            names = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        names = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        for call in _THREAD_CALLS:
            get, put = (getattr(lib, call.format(verb), None) for verb in ("get", "set"))
            if get is not None and put is not None:
                before = get()
                put(1)
                undo.append((put, before))
                break
    try:
        yield
    finally:
        for put, before in undo:
            put(before)


@dataclass(frozen=True)
class Reduced:
    """What the checks need of the features, 1 KB a photo whatever their width: the centered
    features on their top ``DIMS`` principal axes, and each photo's cosine to every class mean."""

    z: np.ndarray  # (N, DIMS) float32
    class_cosine: np.ndarray  # (N, C) float32


def _blocks(tables):
    """Row blocks of the tables (on-disk trainer.data.rows.Rows or arrays), in order."""
    for table in tables:
        for start in range(0, len(table), CHUNK):
            yield np.asarray(table[start:start + CHUNK], np.float32)


def reduce(tables, y: np.ndarray, n_classes: int, dims: int = DIMS) -> Reduced:
    """Two streamed passes over the features (tables one after the other, rows in ``y``'s order):
    mean, scatter and class means of the normalized rows, then the projection and the cosines.
    Memory grows by 1 KB a photo (the features themselves stay on disk)."""
    n, width = 0, None
    total = scatter = class_sum = None
    for block in _blocks(tables):
        if total is None:
            width = block.shape[1]
            total, scatter = np.zeros(width), np.zeros((width, width))
            class_sum = np.zeros((n_classes, width))
        total += block.sum(axis=0, dtype=np.float64)
        scatter += block.T @ block  # float32 products, summed in float64: a basis, not a statistic
        np.add.at(class_sum, y[n:n + len(block)], normalized(block))
        n += len(block)
    mean = total / max(n, 1)
    _, vectors = np.linalg.eigh(scatter / max(n, 1) - np.outer(mean, mean))
    axes = vectors[:, ::-1][:, :min(dims, width)].astype(np.float32)
    means = normalized(class_sum.astype(np.float32))
    z, cos = np.empty((n, axes.shape[1]), np.float32), np.empty((n, n_classes), np.float32)
    start = 0
    for block in _blocks(tables):
        z[start:start + len(block)] = (block - mean.astype(np.float32)) @ axes
        cos[start:start + len(block)] = normalized(block) @ means.T
        start += len(block)
    return Reduced(z, cos)


def folds_of(y: np.ndarray, n_classes: int, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Stratified, seeded fold number of each photo."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(y), np.int64)
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        folds[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % k
    return folds


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2, max_iter: int = MAX_ITER):
    """(kernel, bias) of the class-balanced softmax regression with L2 on ``x`` (in memory)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0)
    xc = x - mean
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = (len(y) / (n_classes * np.maximum(counts, 1)))[y] / len(y)
    onehot = np.eye(n_classes)[y]
    d = x.shape[1]

    def objective(theta):
        kernel = theta[:d * n_classes].reshape(d, n_classes)
        z = (xc @ kernel.astype(np.float32)).astype(np.float64) + theta[d * n_classes:]
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        dz = (np.exp(log_p) - onehot) * w[:, None]
        grad = np.concatenate([(xc.T @ dz.astype(np.float32) + 2 * l2 * kernel).ravel(), dz.sum(axis=0)])
        return -float(np.sum(w * np.sum(onehot * log_p, axis=1))) + l2 * float(np.sum(kernel * kernel)), grad

    theta = minimize(objective, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "gtol": 1e-5}).x
    kernel = theta[:d * n_classes].reshape(d, n_classes).astype(np.float32)
    return kernel, (theta[d * n_classes:] - mean.astype(np.float64) @ kernel).astype(np.float32)


def linear_oof(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, folds: int = FOLDS,
               l2: float = L2, done=None) -> np.ndarray:
    """Out-of-fold class probabilities of every photo from ``folds`` heads (one per fold left
    out; ``done()`` after each). Classes smaller than ``folds`` get fewer folds' worth."""
    folds = max(2, min(folds, int(np.bincount(y, minlength=n_classes).max())))
    fold = folds_of(y, n_classes, folds, seed)
    probs = np.zeros((len(y), n_classes), np.float32)
    for k in range(folds):
        held = fold == k
        if held.any() and (~held).any():
            kernel, bias = fit_softmax(x[~held], y[~held], n_classes, l2)
            probs[held] = _softmax(x[held] @ kernel + bias)
        if done is not None:
            done()
    return probs


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_loo(x: np.ndarray, y: np.ndarray, n_classes: int, k: int = KNN_K,
            temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """Leave-one-out probabilities of a k-nearest-neighbour vote (cosine; each neighbour weighs
    exp((cos - 1) / temperature)), smoothed so no class gets exactly 0."""
    xn = normalized(x)
    k = min(k, len(y) - 1)
    probs = np.zeros((len(y), n_classes), np.float32)
    for start in range(0, len(y), CHUNK):
        sims = xn[start:start + CHUNK] @ xn.T
        rows = np.arange(start, min(start + CHUNK, len(y)))
        sims[rows - start, rows] = -np.inf  # not its own neighbour
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weight = np.exp((np.take_along_axis(sims, near, axis=1) - 1) / temperature)
        for c in range(n_classes):
            probs[rows, c] = np.sum(weight * (y[near] == c), axis=1)
    probs += 1e-3 * probs.sum(axis=1, keepdims=True).clip(1e-12) / n_classes
    return probs / probs.sum(axis=1, keepdims=True)


def label_probabilities(reduced: Reduced, y: np.ndarray, n_classes: int, seeds: int = 1,
                        knn: bool | None = None, done=None) -> np.ndarray:
    """Out-of-sample probabilities: the mean of ``seeds`` k-fold runs of linear heads, averaged
    half and half with the neighbour vote (by default up to KNN_MAX photos)."""
    y = np.asarray(y, np.int64)
    with one_blas_thread():
        probs = np.mean([linear_oof(reduced.z, y, n_classes, seed, done=done) for seed in range(seeds)], axis=0)
        if knn if knn is not None else len(y) <= KNN_MAX:
            probs = 0.5 * probs + 0.5 * knn_loo(reduced.z, y, n_classes)
    return probs


def mislabeled(probs: np.ndarray, y: np.ndarray) -> list[tuple[int, int, float]]:
    """(row, suggested class, probability of its own label) of every flagged photo, most
    suspicious (lowest own-label probability) first. Flagged: another class j has
    p_j >= t_j (t_j: mean p_j over the photos labelled j) and the highest such p_j beats p_own."""
    y = np.asarray(y, np.int64)
    n_classes = probs.shape[1]
    thresholds = np.array([probs[y == c, c].mean() if np.any(y == c) else 1.0 for c in range(n_classes)])
    confident = np.where(probs >= thresholds[None, :], probs, -1.0)
    confident[np.arange(len(y)), y] = -1.0
    suggested = confident.argmax(axis=1)
    own = probs[np.arange(len(y)), y]
    flagged = (confident.max(axis=1) >= 0) & (probs[np.arange(len(y)), suggested] > own)
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(own[rows], kind="stable")]
    return [(int(r), int(suggested[r]), float(own[r])) for r in rows]


def suspicion_order(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Every row, lowest probability of its own label first (the ranking, flagged or not)."""
    return np.argsort(probs[np.arange(len(y)), np.asarray(y, np.int64)], kind="stable")


def outliers(reduced: Reduced) -> list[tuple[int, int, float]]:
    """(row, nearest class, cosine to its mean) of the photos far from every class mean
    (largest cosine below Q1 - 1.5 IQR of all photos'), farthest first."""
    best = reduced.class_cosine.max(axis=1)
    q1, q3 = np.percentile(best, [25, 75])
    rows = np.flatnonzero(best < q1 - 1.5 * (q3 - q1))
    rows = rows[np.argsort(best[rows], kind="stable")]
    return [(int(r), int(reduced.class_cosine[r].argmax()), float(best[r])) for r in rows]


def twin_groups(digests: Sequence[str | None], phashes: np.ndarray | None, ok: np.ndarray | None,
                vectors) -> list[twins.Group]:
    """Exact and near twin groups; ``vectors(rows)`` gives the embedding of those rows (the
    cosine that confirms a pHash pair)."""
    def cosine(pairs: np.ndarray) -> np.ndarray:
        rows = np.unique(pairs)
        table = dict(zip(rows.tolist(), normalized(vectors(rows))))
        return np.array([float(table[a] @ table[b]) for a, b in pairs.tolist()])

    near = twins.near_twins(phashes, ok, cosine) if phashes is not None else np.zeros((0, 2), np.int64)
    return twins.groups(digests, near)


def table_twins(table, paths: Sequence[str]) -> list[tuple[list[str], str]]:
    """Twin groups of a feature pass (trainer.fit.features.FeatureTable with fingerprints) as
    (paths, kind): the photos the pass could read, their bytes' sha256, pHash and features."""
    digests = [d if good else None for d, good in zip(table.digests, table.ok)]
    ok = table.ok & table.phash_ok if table.phash_ok is not None else None

    def vectors(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([table.rows[int(r):int(r) + 1] for r in rows])

    return [([paths[i] for i in g.members], g.kind) for g in twin_groups(digests, table.phashes, ok, vectors)]


def summary(labels: list[str], splits, by_split: dict, twin_paths: list[tuple[list[str], str]], rejoined: int,
            excluded: Sequence[str] = (), data_dir: str = "", top: int = TOP) -> dict:
    """report.json's ``data_check``: what the check found among the photos of the run (paths
    relative to the data folder), the ``top`` of each finding, and how to get all of it."""
    names = ("train", "val", "test")
    samples = [s for name in names for s in splits.part(name)]
    split_of = {s.path: name for name in names for s in splits.part(name)}
    y = np.array([s.label for s in samples], np.int64)
    with one_blas_thread():
        reduced = reduce([by_split[name] for name in names if len(splits.part(name))], y, len(labels))
    probs = label_probabilities(reduced, y, len(labels))
    flagged = mislabeled(probs, y)
    far = outliers(reduced)
    label_of = {s.path: labels[s.label] for s in samples}
    groups = [{"paths": p, "kind": kind, "classes": sorted({label_of[q] for q in p if q in label_of}),
               "split": sorted({split_of[q] for q in p if q in split_of})} for p, kind in twin_paths]
    return {
        "photos": len(samples),
        "mislabeled": {"count": len(flagged), "top": [
            {"path": samples[r].path, "label": labels[y[r]], "suggested": labels[c], "score": round(p, 4),
             "split": split_of[samples[r].path]} for r, c, p in flagged[:top]]},
        "duplicates": {"groups": len(groups), "exact": sum(g["kind"] == twins.EXACT for g in groups),
                       "near": sum(g["kind"] == twins.NEAR for g in groups),
                       "across_classes": sum(len(g["classes"]) > 1 for g in groups),
                       "photos": sum(len(g["paths"]) for g in groups), "rejoined": rejoined,
                       "top": sorted(groups, key=lambda g: (-len(g["classes"]), g["kind"] != twins.EXACT))[:top]},
        "outliers": {"count": len(far), "top": [
            {"path": samples[r].path, "label": labels[y[r]], "nearest": labels[c], "score": round(s, 4),
             "split": split_of[samples[r].path]} for r, c, s in far[:top]]},
        "skipped": len(splits.skipped),
        "excluded": len(excluded),
        "doctor": f"python -m trainer doctor {data_dir or splits.data_dir}",
    }
