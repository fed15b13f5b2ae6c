"""The none-of-these class, fitted on the embeddings train already has: per-class prototypes,
a threshold chosen on val, temperature scaling, and leave-one-class-out measurement.

Why prototypes: the top softmax probability separates flowers from other photos poorly (AUROC
0.79 in the probe that opened the issue), while the cosine similarity of the pooled embedding to
a few prototypes per class separates them well (0.98), and it needs only K x P x D numbers in
the model. Everything here is numpy; the graph side is :mod:`trainer.model.open_set_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the one stable softmax (float64 inside, float32 out)
from edge.postprocess import softmax

SHARPNESS = 25.0  # extra-class logit per unit of cosine below the threshold (0.1 below: odds e^2.5)
MAX_PER_CLASS = 2000  # photos per class the prototypes are fitted on (seeded sample: bounded memory)
KMEANS_ITERATIONS = 25
CHUNK = 4096
ECE_BINS = 15


@dataclass(frozen=True)
class OpenSet:
    """What the model carries: prototypes (P, D) unit rows, the threshold (cosine), the
    temperature folded into the class logits."""

    prototypes: np.ndarray
    threshold: float
    temperature: float
    sharpness: float = SHARPNESS


def take(x, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` for an array or a table on disk (trainer.data.rows.Rows reads row ranges), in chunks."""
    rows = np.asarray(rows, np.int64)
    if isinstance(x, np.ndarray):
        return np.asarray(x[rows], np.float32)
    out = np.empty((len(rows), x.shape[1]), np.float32)
    for start in range(0, len(x), CHUNK):
        inside = (rows >= start) & (rows < start + CHUNK)
        if inside.any():
            out[inside] = np.asarray(x[start:start + CHUNK], np.float32)[rows[inside] - start]
    return out


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k unit centres of the unit rows ``x`` (cosine k-means, k-means++ start, fixed iterations)."""
    x = unit(x)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = np.maximum(1.0 - np.max(x @ np.stack(centres).T, axis=1), 0.0)
        total = distance.sum()
        centres.append(x[rng.choice(len(x), p=distance / total)] if total > 0 else x[rng.integers(len(x))])
    centres = np.stack(centres)
    for _ in range(KMEANS_ITERATIONS):
        nearest = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            members = x[nearest == j]
            if len(members):
                centres[j] = members.sum(axis=0)
        centres = unit(centres)
    return centres


def fit_prototypes(x: np.ndarray, y: np.ndarray, n_classes: int, per_class: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_class`` prototypes for each class: (P, D) unit rows and their classes."""
    rng = np.random.default_rng(seed)
    rows, owners = [], []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        if not len(members):
            continue
        if len(members) > MAX_PER_CLASS:
            members = np.sort(rng.choice(members, MAX_PER_CLASS, replace=False))
        centres = spherical_kmeans(take(x, members), per_class, rng)
        rows.append(centres)
        owners.append(np.full(len(centres), c))
    return np.concatenate(rows).astype(np.float32), np.concatenate(owners)


def similarity(x, prototypes: np.ndarray) -> np.ndarray:
    """The open-set score of each row: its largest cosine similarity to a prototype."""
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), CHUNK):
        out[start:start + CHUNK] = np.max(unit(np.asarray(x[start:start + CHUNK])) @ prototypes.T, axis=1)
    return out


def threshold(scores: np.ndarray, keep: float) -> float:
    """The score below which a photo is none of these: ``keep`` of ``scores`` (val) stay above."""
    if not len(scores):
        raise ValueError("no validation photos to choose the none-of-these threshold on")
    return float(np.quantile(np.asarray(scores, np.float64), 1.0 - keep))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known photo > score of an unknown one), ties counting one half."""
    if not len(known) or not len(unknown):
        return float("nan")
    both = np.concatenate([known, unknown]).astype(np.float64)
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[:len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the validation log-loss of softmax(logits / T) (golden section on log T)."""
    if not len(y):
        return 1.0

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / np.exp(log_t))[np.arange(len(y)), y]))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    for _ in range(60):
        if nll(a) < nll(b):
            hi, b = b, a
            a = hi - ratio * (hi - lo)
        else:
            lo, a = a, b
            b = lo + ratio * (hi - lo)
    return float(np.exp((lo + hi) / 2))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width confidence bins."""
    if not len(y):
        return float("nan")
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)



def fit(x_train, y_train, x_val, y_val, kernel: np.ndarray, bias: np.ndarray, n_classes: int, keep: float,
        per_class: int, seed: int) -> OpenSet:
    """Prototypes on train, the threshold keeping ``keep`` of val, the temperature on val logits."""
    prototypes, _ = fit_prototypes(x_train, y_train, n_classes, per_class, seed)
    val_scores = similarity(x_val, prototypes) if len(y_val) else similarity(x_train, prototypes)
    temperature = fit_temperature(logits_of(x_val, kernel, bias), np.asarray(y_val)) if len(y_val) else 1.0
    return OpenSet(prototypes, threshold(val_scores, keep), temperature)


def logits_of(x, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = np.empty((len(x), kernel.shape[1]), np.float32)
    for start in range(0, len(x), CHUNK):
        out[start:start + CHUNK] = np.asarray(x[start:start + CHUNK], np.float32) @ kernel + bias
    return out


def calibration(x_test, y_test, kernel: np.ndarray, bias: np.ndarray, temperature: float) -> dict:
    """ECE on the held-out split before and after temperature scaling."""
    logits, y = logits_of(x_test, kernel, bias), np.asarray(y_test)
    return {"temperature": round(temperature, 4), "ece_before": round(ece(softmax(logits), y), 4),
            "ece_after": round(ece(softmax(logits / temperature), y), 4), "photos": int(len(y))}


def decisions(model: OpenSet, x) -> np.ndarray:
    """True where a photo is none of these (the graph's rule: score below the threshold)."""
    return similarity(x, model.prototypes) < model.threshold


def leave_one_class_out(split: dict[str, tuple], n_classes: int, classes: list[str], solve, keep: float,
                        per_class: int, seed: int, progress=None) -> dict:
    """Each class in turn is the unknown: the head (``solve(x, y, x_val, y_val, k) -> (kernel,
    bias)``), prototypes and threshold are fitted on the other classes' train and val photos, and
    the left-out class's test photos must be rejected. Beside our score, the top softmax
    probability with its own threshold keeping ``keep`` of val (the baseline every client has)."""
    rows = []
    for c in range(n_classes):
        if progress is not None:
            progress(classes[c])
        known = {name: np.asarray(y) != c for name, (_, y) in split.items()}
        remap = np.cumsum(np.arange(n_classes) != c) - 1
        part = {name: (take(x, np.flatnonzero(known[name])), remap[np.asarray(y)[known[name]]])
                for name, (x, y) in split.items()}
        (xt, yt), (xv, yv), (xs, ys) = part["train"], part["val"], part["test"]
        kernel, bias = solve(xt, yt, xv, yv, n_classes - 1)
        model = fit(xt, yt, xv, yv, kernel, bias, n_classes - 1, keep, per_class, seed)
        x_out = take(split["test"][0], np.flatnonzero(~known["test"]))
        s_known, s_out = similarity(xs, model.prototypes), similarity(x_out, model.prototypes)
        p_val = softmax(logits_of(xv, kernel, bias) / model.temperature) if len(yv) else np.zeros((0, 1))
        p_known = softmax(logits_of(xs, kernel, bias) / model.temperature)
        p_out = softmax(logits_of(x_out, kernel, bias) / model.temperature)
        t_max = threshold(p_val.max(axis=1), keep) if len(yv) else 0.0
        kept = s_known >= model.threshold
        right = p_known.argmax(axis=1) == ys
        rows.append({
            "left_out": classes[c], "known_photos": int(len(ys)), "left_out_photos": int(len(x_out)),
            "auroc": round(auroc(s_known, s_out), 4),
            "auroc_max_probability": round(auroc(p_known.max(axis=1), p_out.max(axis=1)), 4),
            "rejected": round(float(np.mean(s_out < model.threshold)), 4) if len(x_out) else None,
            "rejected_max_probability": round(float(np.mean(p_out.max(axis=1) < t_max)), 4) if len(x_out) else None,
            "known_kept": round(float(np.mean(kept)), 4) if len(ys) else None,
            "known_accuracy": round(float(np.mean(right)), 4) if len(ys) else None,
            "known_accuracy_with_rejections": round(float(np.mean(right & kept)), 4) if len(ys) else None,
        })
    keys = [k for k in rows[0] if k not in ("left_out", "known_photos", "left_out_photos")] if rows else []
    mean = {k: round(float(np.nanmean([r[k] for r in rows if r[k] is not None])), 4) for k in keys}
    return {"classes": rows, "mean": mean, "keep": keep}
