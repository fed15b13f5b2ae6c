"""Model output -> scored categories, as pure functions on arrays (testable without a model).

Score rule (:func:`to_scores`): a raw output vector is turned into probabilities as follows.

* Integer outputs are dequantized first, subtracting the zero point in int64 so an int8/uint8
  value can never wrap.
* An integer output quantized with scale 1/256 and the zero point at the dtype's minimum is the
  TFLite softmax output encoding: it already holds probabilities and is returned as dequantized
  (automl's [0, 64, 255, 32, 128] -> [0, .25, .996, .125, .5], which does not sum to 1).
* Otherwise a vector whose values all lie in [0, 1] and sum to 1 within 1% is taken as
  probabilities; anything else is logits and gets a softmax. (A multi-label sigmoid output that
  does not sum to 1 would be softmaxed too; no model we ship or test has one.)

Ranking: scores descending; exact ties keep the lower class index first (stable sort).

None of these (:func:`is_none_of_these`): a model with an open-set class (edge.metadata.OpenSet,
always the last output) says "none of these" when that class ranks first; a user threshold
replaces this rule with its own, which needs no such class: no known class scores >= T.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOFTMAX_SCALE = 1.0 / 256.0
PROBABILITY_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class Category:
    """One ranked class: output index, its label (the index as text when unlabelled), score."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Verdict:
    """What one photo's scores say: the ranked categories and whether it is none of the classes.

    none_score: the reject class's probability (None for a model without an open-set class);
    best: the best known class (never the reject one), what a "none of these" line names;
    reject_label: the reject class's label (None without one).
    """

    categories: tuple[Category, ...] = ()
    unknown: bool = False
    none_score: float | None = None
    best: Category | None = None
    reject_label: str | None = None


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> float32 real values; float tensors and scale 0 pass through as float32."""
    values = np.asarray(values)
    if values.dtype.kind == "f" or scale == 0:
        return values.astype(np.float32)
    return (np.float64(scale) * (values.astype(np.int64) - np.int64(zero_point))).astype(np.float32)


def is_softmax_quantized(dtype: np.dtype, scale: float, zero_point: int) -> bool:
    """True for TFLite's quantized softmax encoding (scale 1/256, zero point at the dtype minimum)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and scale == SOFTMAX_SCALE and zero_point == np.iinfo(dtype).min


def is_probabilities(scores: np.ndarray) -> bool:
    """True when a float vector is already a probability distribution (see module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or scores.min() < 0 or scores.max() > 1:
        return False
    return abs(scores.sum() - 1.0) <= PROBABILITY_SUM_TOLERANCE


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, float32."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def to_scores(raw: np.ndarray, quantization: tuple[float, int] = (0.0, 0)) -> np.ndarray:
    """One raw output vector (any dtype) -> float32 class scores, by the module's score rule."""
    raw = np.asarray(raw).reshape(-1)
    scale, zero_point = quantization
    with np.errstate(all="ignore"):  # inf/NaN outputs (damaged weights) rank last, silently
        values = dequantize(raw, scale, zero_point)
        if is_softmax_quantized(raw.dtype, scale, zero_point) or is_probabilities(values):
            return values
        return softmax(values)


def rank(scores: np.ndarray) -> np.ndarray:
    """Class indices by descending score; exact ties keep the lower index first."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def label_of(index: int, labels: list[str] | None) -> str:
    """The label for an output index, or the index itself when there is no label for it."""
    if labels is not None and 0 <= index < len(labels) and labels[index]:
        return labels[index]
    return str(index)


def top_categories(
    scores: np.ndarray,
    labels: list[str] | None = None,
    top_k: int | None = 3,
    threshold: float = 0.0,
    allow: tuple[str, ...] | list[str] = (),
    deny: tuple[str, ...] | list[str] = (),
) -> list[Category]:
    """The best ``top_k`` (None or <= 0: all) classes scoring >= ``threshold``.

    ``allow`` keeps only the named labels, ``deny`` drops them; both match the label exactly
    (or the index as text for unlabelled classes) and apply before ranking, so a denied class
    never takes a top-k slot.
    """
    allow_set, deny_set = set(allow), set(deny)
    result = []
    for i in rank(scores):
        index = int(i)
        score = float(scores[index])
        if score < threshold:
            break
        label = label_of(index, labels)
        if (allow_set and label not in allow_set) or label in deny_set:
            continue
        result.append(Category(index, label, score))
        if top_k and top_k > 0 and len(result) == top_k:
            break
    return result


def is_none_of_these(scores: np.ndarray, reject_index: int | None = None, threshold: float = 0.0) -> bool:
    """True when the photo shows none of the classes.

    ``threshold > 0`` (the user's rule) overrides the model's: none when no known class (every
    class but ``reject_index``) scores >= threshold. Else the model's own decision: the reject
    class ranks first (:func:`rank`); without one (``reject_index`` None) never.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold > 0:
        known = np.delete(scores, reject_index) if reject_index is not None else scores
        return not bool((known >= threshold).any())
    return reject_index is not None and scores.size > 0 and int(rank(scores)[0]) == reject_index


def best_known(
    scores: np.ndarray,
    labels: list[str] | None = None,
    reject_index: int | None = None,
    allow: tuple[str, ...] | list[str] = (),
    deny: tuple[str, ...] | list[str] = (),
) -> Category | None:
    """The best class that is not the reject one (allow / deny as top_categories), for
    "none of these (...; best: roses 0.10)"; None when no class is left."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    masked = scores.copy()
    if reject_index is not None and 0 <= reject_index < masked.size:
        masked[reject_index] = -np.inf
    best = top_categories(masked, labels, 1, -np.finfo(np.float64).max, allow, deny)
    return Category(best[0].index, best[0].label, float(scores[best[0].index])) if best else None


# ------------------------------------------------------------- one result, as `edge classify` shows it
def result_fields(result) -> dict:
    """The JSON keys of one classified photo (or frame): the ranking, the none-of-these verdict
    (``unknown``, ``none_score``: the reject class's probability, null without one), timings."""
    cats = result.categories
    return {
        "indices": [c.index for c in cats],
        "labels": [c.label for c in cats],
        "scores": [round(c.score, 6) for c in cats],
        "unknown": bool(result.unknown),
        "none_score": None if result.none_score is None else round(result.none_score, 6),
        "latency_ms": round(result.inference_ms, 3),
        "preprocess_ms": round(result.preprocess_ms, 3),
    }


def verdict_text(result, ranked: str, digits: int = 2) -> str:
    """``ranked`` as is, or for a photo of none of the classes
    "none of these (unknown 0.87; best: roses 0.10)" (no reject class: no first part)."""
    if not result.unknown:
        return ranked
    parts = [] if result.none_score is None else [f"{result.reject_label} {result.none_score:.{digits}f}"]
    if result.best is not None:
        parts.append(f"best: {result.best.label} {result.best.score:.{digits}f}")
    return "none of these" + (f" ({'; '.join(parts)})" if parts else "")


_INDEXED_LINE = re.compile(r"^\s*(\d+)[\s:]+(.*\S)\s*$")


def parse_labels(text: str) -> list[str]:
    """Label file text -> list by output index.

    Plain files have one label a line (line i = index i; inner blank lines are kept). Coral-style
    files whose every non-blank line starts with its index ("0  background") are placed by
    that index instead.
    """
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    matches = [_INDEXED_LINE.match(line) for line in lines if line.strip()]
    if matches and all(matches):
        by_index = {int(m.group(1)): m.group(2) for m in matches}
        return [by_index.get(i, "") for i in range(max(by_index) + 1)]
    return lines


def read_labels(path: str | Path) -> list[str]:
    """Read a labels file (see :func:`parse_labels`)."""
    return parse_labels(Path(path).read_text(encoding="utf-8", errors="replace"))
