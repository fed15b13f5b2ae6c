"""Does a variant breach its tolerance, on the evidence of the photos? (the parity gate's statistics)

The tolerances stay what users set (int8: agreement >= 99 %, accuracy change >= -0.3 points),
but a point estimate on a few hundred photos flips on one photo (0.17 pt on 587, 1.3 pt on 78).
So a variant fails only when the photos show, with 95 % confidence, that it is worse than its
tolerance; and a split too small to show that is said to be so, never passed in silence:

- agreement: the disagreements are Binomial(n, d); fail when the exact (Clopper-Pearson)
  one-sided 95 % upper bound of the agreement is below the tolerance (the exact binomial test).
- accuracy change: a paired test on the photos where exactly one of Keras / TFLite is right
  (McNemar's, with the tolerance as margin): given m such photos, the b that only Keras gets
  right are Binomial(m, pi); fail when the one-sided 95 % upper bound of (m - 2b) / n is below it.
- too few photos: a variant that disagreed twice as often as its tolerance allows would not even
  be expected to fail; the report names how many photos would be needed.

Pure functions of counts (scipy.stats), so the decision is testable without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

ALPHA = 0.05  # one-sided: each bound is a 95 % bound, together a 90 % two-sided interval
DETECT = 2.0  # "enough photos": a variant at DETECT x the tolerated disagreement would be expected to fail


@dataclass(frozen=True)
class Evidence:
    """One tolerance against the photos: point estimate, one-sided 95 % bounds, the verdict."""

    measure: str  # "agreement" (%) or "delta_acc" (points)
    point: float
    low: float
    high: float
    tolerance: float
    breach: bool  # the photos show, at 95 %, that the measure is below its tolerance

    def to_dict(self) -> dict:
        return asdict(self)

    def failure(self) -> str:
        percent = self.measure in ("agreement", "none_of_these")
        unit = "%" if percent else " points"
        name = {"agreement": "agreement", "none_of_these": "none-of-these agreement"}.get(self.measure, "delta acc")
        return (f"{name} {self.point:.2f}{unit} (95 % bound {self.high:.2f}) < {self.tolerance:g}{unit}"
                if percent else
                f"{name} {self.point:+.2f}{unit} (95 % bound {self.high:+.2f}) < {self.tolerance:+g}{unit}")


def _cp_bounds(k: int, n: int) -> tuple[float, float]:
    """Exact one-sided 95 % lower and upper bounds of a binomial proportion k / n."""
    low = 0.0 if k == 0 else float(stats.beta.ppf(ALPHA, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - ALPHA, k + 1, n - k))
    return low, high


def agreement(n: int, disagreements: int, min_agreement: float) -> Evidence:
    """Agreement in % against its tolerance (%), from the count of photos whose top-1 differs."""
    d_low, d_high = _cp_bounds(disagreements, n) if n else (0.0, 1.0)
    low, high = 100 * (1 - d_high), 100 * (1 - d_low)
    point = 100 * (1 - disagreements / n) if n else 100.0
    return Evidence("agreement", round(point, 3), round(low, 3), round(high, 3), min_agreement,
                    breach=bool(n) and high < min_agreement)


def delta_acc(n: int, keras_only: int, tflite_only: int, min_delta: float) -> Evidence:
    """Accuracy change in points (TFLite - Keras) against its tolerance, from the discordant
    photos: ``keras_only`` right only in Keras, ``tflite_only`` right only in TFLite."""
    m = keras_only + tflite_only
    point = 100 * (tflite_only - keras_only) / n if n else 0.0
    if m == 0:
        return Evidence("delta_acc", round(point, 3), 0.0, 0.0, min_delta, breach=False)
    pi_low, pi_high = _cp_bounds(keras_only, m)  # pi: share of the discordant photos Keras wins
    low, high = 100 * m * (1 - 2 * pi_high) / n, 100 * m * (1 - 2 * pi_low) / n
    return Evidence("delta_acc", round(point, 3), round(low, 3), round(high, 3), min_delta,
                    breach=high < min_delta)


@lru_cache(maxsize=64)
def photos_needed(min_agreement: float, limit: int = 200_000) -> int:
    """The fewest photos on which a variant disagreeing DETECT x as often as the tolerance allows
    is expected to fail: its expected disagreements reach the count the test fails at."""
    tolerated = 1 - min_agreement / 100
    if tolerated <= 0:
        return 1
    n = np.arange(1, limit + 1)
    fails_at = stats.binom.isf(ALPHA, n, tolerated) + 1  # smallest k with P(X >= k | tolerated) <= ALPHA
    enough = np.flatnonzero(n * min(1.0, DETECT * tolerated) >= fails_at)
    return int(n[enough[0]]) if len(enough) else limit


def decidable(n: int, min_agreement: float) -> bool:
    return n >= photos_needed(min_agreement)
