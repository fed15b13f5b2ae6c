"""PNG plots for a run: training curves, confusion matrix, a grid of test photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)


def training_curves(history: dict[str, dict[str, list[float]]], path: Path) -> None:
    """history: stage name -> keras History.history. Stages are drawn one after the other."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    offset = 0
    for stage, h in history.items():
        epochs = np.arange(offset + 1, offset + 1 + len(h.get("loss", [])))
        for ax, key in zip(axes, ("loss", "accuracy")):
            if key in h:
                ax.plot(epochs, h[key], label=f"{stage} train")
            if f"val_{key}" in h:
                ax.plot(epochs, h[f"val_{key}"], "--", label=f"{stage} val")
        offset += len(epochs)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def confusion(cm: np.ndarray, labels: list[str], path: Path, title: str = "test confusion matrix") -> None:
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > top / 2 else "black")
    _save(fig, path)


def prediction_grid(images: np.ndarray, y_true, probs: np.ndarray, labels: list[str], path: Path, n: int = 16) -> None:
    """Up to n test photos with true and predicted label (red when wrong)."""
    plt = _pyplot()
    n = min(n, len(images))
    cols = 4
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9))
    for k, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if k >= n:
            continue
        pred = int(np.argmax(probs[k]))
        ax.imshow(images[k])
        ok = pred == int(y_true[k])
        ax.set_title(f"true {labels[int(y_true[k])]}\npred {labels[pred]} {probs[k][pred]:.2f}",
                     fontsize=8, color="black" if ok else "red")
    _save(fig, path)
