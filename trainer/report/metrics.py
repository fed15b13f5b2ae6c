"""Classification metrics on plain arrays (pure numpy, so they are trivially testable)."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def classification_report(y_true, probs: np.ndarray, labels: list[str]) -> dict:
    """accuracy, n, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {
        name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
        for name, p, r, f, s in zip(labels, precision, recall, f1, actual)
    }
    n = int(len(y_true))
    return {
        "accuracy": round(float(tp.sum() / n), 4) if n else None,
        "accuracy_ci95": ci95(float(tp.sum() / n), n) if n else None,
        "n": n,
        "macro_f1": round(float(f1[actual > 0].mean()), 4) if n else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def mistakes(split: str, paths: list[str], y_true, probs: np.ndarray, labels: list[str], limit: int = 48) -> list[dict]:
    """The photos a split got wrong, most confident first (at most ``limit``): report.json's
    "mistakes", which report.html shows as thumbnails."""
    y_true = np.asarray(y_true, np.int64)
    pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
    wrong = np.flatnonzero(pred != y_true)
    conf = probs[wrong, pred[wrong]] if len(wrong) else np.zeros(0)
    order = wrong[np.argsort(-conf, kind="stable")][:limit]
    return [{"split": split, "path": paths[i], "label": labels[y_true[i]], "predicted": labels[pred[i]],
             "confidence": round(float(probs[i, pred[i]]), 4)} for i in order]


def ci95(accuracy: float, n: int) -> list[float]:
    """The 95 % Wilson interval, rounded, as report.json / parity.json / the model card store it."""
    return [round(x, 4) for x in wilson(accuracy, n)]


def wilson(accuracy: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sound at 0 %, 100 % and small n)."""
    if not n:
        return (0.0, 1.0)
    p, z2 = float(accuracy), Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
