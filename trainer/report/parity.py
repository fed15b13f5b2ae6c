"""Parity gate: each .tflite against model.keras on the held-out photos -> RUN_DIR/parity.json.

TFLite runs through the edge runtime (:class:`edge.classifier.Classifier`), so the numbers here
are those of the code that ships to the device, by construction. Both sides get the same uint8
pixels from :class:`trainer.data.photos.Photos`, streamed in bounded chunks (Keras as float32, as it was
trained).

Definitions (also written into parity.json):
  accuracy       top-1 of the edge runtime (exact ties: lowest index, edge.postprocess.rank).
  delta_acc      (TFLite accuracy - Keras accuracy) in percentage points.
  agreement      % of photos whose Keras top-1 is *among* the TFLite top-scoring classes. The
                 tie rule: a uint8 softmax output is quantized to 1/256, so two classes can tie
                 exactly; neither is then more "the" answer than the other, and counting the
                 index order as a disagreement would measure tie-breaking, not the model.
  strict_agreement  the same without the tie rule (edge top-1 == Keras top-1); ties counts them.
  max/mean |dp|  over every photo and class, |p_tflite - p_keras|.
  decision       pass / fail / undecided: agreement and delta_acc are tolerances judged on evidence
                 (trainer.report.evidence): fail only when the photos show a breach at 95 %.
  none_of_these  a model with the none-of-these output (docs/none-of-these.md): accuracy, agreement
                 and delta_acc are over the classes (the top class among them), and the reject
                 decision (is that output the top-1?) has its own agreement and tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.classifier import Classifier, ClassifierOptions
from edge.postprocess import rank
from trainer import atomic
from trainer.data.dataset import DataError
from trainer.data.photos import Photos
from trainer.export.variants import MODES
from trainer.model.model_io import keras_probabilities, load_keras
from trainer.report import evidence
from trainer.report.metrics import ci95
from trainer.run_dir import MODEL, PARITY, RunDir, sha256_file

# the reject decision is a threshold on a continuous score with 5 % of the photos below it: photos
# at the threshold flip between float and int8 more easily than class decisions (tf_flowers default
# run: 8 of 587 for int8, 98.6 %); its tolerance is its own (docs/none-of-these.md)
NONE_OF_THESE_AGREEMENT = 97.0

DEFINITIONS = {
    "accuracy": "top-1 accuracy of the edge runtime (ties: lowest index)",
    "delta_acc": "TFLite accuracy - Keras accuracy, percentage points",
    "agreement": "% of photos whose Keras top-1 is among the tied-max TFLite classes",
    "strict_agreement": "% of photos where the edge top-1 equals the Keras top-1",
    "ties": "photos whose TFLite scores have an exact tie for the maximum",
    "max_abs_dp": "max over photos and classes of |p_tflite - p_keras|",
    "mean_abs_dp": "mean over photos and classes of |p_tflite - p_keras|",
    "evidence": "per tolerance: point estimate, exact one-sided 95 % low / high bounds (together a 90 % "
                "interval), breach = the high bound is below the tolerance (binomial test for agreement, "
                "McNemar with the tolerance as margin for delta_acc)",
    "none_of_these": "a model with the none-of-these output: accuracy and agreement are over its classes; "
                     "this is the agreement of the reject decision (that output ranks first), judged like "
                     "agreement against min_none_agreement",
    "decision": "fail: a tolerance is breached on the evidence (or max |dp| exceeded); undecided: the split "
                "is too small to show a breach (photos_needed would); pass otherwise",
}


@dataclass(frozen=True)
class Thresholds:
    """A variant's tolerances (None: not checked). max |dp| is a bound on every photo; agreement
    and accuracy change are judged on evidence (:mod:`trainer.report.evidence`)."""

    max_abs_dp: float | None = None
    min_delta_acc: float | None = None  # percentage points
    min_agreement: float | None = None  # percent
    min_none_agreement: float | None = None  # percent: the none-of-these decision, when the model has one

    def judge(self, n: int, max_abs_dp: float, counts: "Counts") -> tuple[dict, list[str], str, int | None]:
        """(evidence per measure, failures, decision, photos needed when undecided)."""
        found = {}
        if self.min_agreement is not None:
            found["agreement"] = evidence.agreement(n, counts.disagreements, self.min_agreement)
        if self.min_none_agreement is not None and counts.none_flips is not None:
            found["none_of_these"] = replace(evidence.agreement(n, counts.none_flips, self.min_none_agreement),
                                             measure="none_of_these")
        if self.min_delta_acc is not None:
            found["delta_acc"] = evidence.delta_acc(n, counts.keras_only_right, counts.tflite_only_right,
                                                    self.min_delta_acc)
        failures = [f"max |dp| {max_abs_dp:.3g} > {self.max_abs_dp:g}"
                    for _ in [0] if self.max_abs_dp is not None and not max_abs_dp <= self.max_abs_dp]
        failures += [e.failure() for e in found.values() if e.breach]
        if failures:
            return found, failures, "fail", None
        if self.min_agreement is not None and not evidence.decidable(n, self.min_agreement):
            return found, [], "undecided", evidence.photos_needed(self.min_agreement)
        return found, [], "pass", None


@dataclass(frozen=True)
class Counts:
    """The photo counts the evidence is judged on."""

    disagreements: int  # Keras top-1 not among the TFLite top-scoring classes
    keras_only_right: int
    tflite_only_right: int
    none_flips: int | None = None  # photos where only one side says none of these (None: no such output)


def default_thresholds(float32_max_dp: float | None = None, float16_max_dp: float | None = None,
                       min_delta_acc: float | None = None, min_agreement: float | None = None) -> dict[str, Thresholds]:
    """Each mode's gate from the mode table; a given bound overrides it (min_* for every
    quantized mode). Float copies must match Keras' probabilities, quantized ones its decisions."""
    given = {"float32": float32_max_dp, "float16": float16_max_dp}
    out = {}
    for mode, q in MODES.items():
        if q.gate_max_abs_dp is not None:
            out[mode] = Thresholds(max_abs_dp=given.get(mode) if given.get(mode) is not None else q.gate_max_abs_dp)
        else:
            out[mode] = Thresholds(
                min_delta_acc=q.gate_min_delta_acc if min_delta_acc is None else min_delta_acc,
                min_agreement=q.gate_min_agreement if min_agreement is None else min_agreement,
                min_none_agreement=NONE_OF_THESE_AGREEMENT)
    return out


@dataclass(frozen=True)
class VariantParity:
    mode: str
    file: str
    sha256: str
    n: int
    accuracy: float
    delta_acc: float
    agreement: float
    strict_agreement: float
    ties: int
    max_abs_dp: float
    mean_abs_dp: float
    accuracy_ci95: list[float] = field(default_factory=list)  # 95 % Wilson interval of accuracy
    thresholds: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # Counts: disagreements and the discordant photos
    evidence: dict = field(default_factory=dict)  # measure -> Evidence.to_dict()
    decision: str = "pass"  # pass | fail | undecided (too few photos to show a breach)
    photos_needed: int | None = None  # when undecided: photos that would decide
    none_of_these: dict = field(default_factory=dict)  # the reject decision's agreement (its output only)

    @property
    def passed(self) -> bool:
        """Not shown to be worse than its tolerance (an undecided variant passes, with a warning)."""
        return self.decision != "fail"

    def gate(self) -> str:
        if self.decision == "fail":
            return "FAIL: " + "; ".join(self.failures)
        return f"undecided: too few photos (~{self.photos_needed} needed)" if self.decision == "undecided" else "pass"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict) -> "VariantParity":
        return cls(**{k: v for k, v in d.items() if k != "passed"})


def top1_sets(probs: np.ndarray) -> np.ndarray:
    """Boolean (N, C): which classes share each row's maximum score exactly."""
    return probs == probs.max(axis=1, keepdims=True)


def compare(mode: str, path: Path, keras_probs: np.ndarray, tflite_probs: np.ndarray, y: np.ndarray,
            thresholds: Thresholds, reject: int | None = None) -> VariantParity:
    """Parity numbers of one variant from the two probability matrices (pure numpy). ``reject``:
    the index of the none-of-these output (the last), whose decision is judged on its own."""
    diff = np.abs(tflite_probs.astype(np.float64) - keras_probs.astype(np.float64))
    pct = lambda mask: round(float(np.mean(mask)) * 100, 3)  # noqa: E731
    none = {}
    flips = None
    if reject is not None:
        keras_says = np.argmax(keras_probs, axis=1) == reject
        edge_says = np.array([rank(p)[0] == reject for p in tflite_probs], dtype=bool)
        flips = int(np.sum(keras_says != edge_says))
        none = {"agreement": pct(keras_says == edge_says) if len(y) else 100.0, "flips": flips,
                "keras_rejected": int(keras_says.sum()), "tflite_rejected": int(edge_says.sum())}
        keras_probs, tflite_probs = keras_probs[:, :reject], tflite_probs[:, :reject]
    keras_top = np.argmax(keras_probs, axis=1)
    edge_top = np.array([rank(p)[0] for p in tflite_probs], dtype=np.int64)
    tied = top1_sets(tflite_probs)
    keras_right, edge_right = keras_top == y, edge_top == y
    agree = tied[np.arange(len(y)), keras_top]
    counts = Counts(int(np.sum(~agree)), int(np.sum(keras_right & ~edge_right)), int(np.sum(edge_right & ~keras_right)),
                    flips)
    found, failures, decision, needed = thresholds.judge(len(y), float(diff.max()), counts)
    return VariantParity(
        mode=mode,
        file=path.name,
        sha256=sha256_file(path),
        n=len(y),
        accuracy=round(float(np.mean(edge_right)), 4),
        accuracy_ci95=ci95(float(np.mean(edge_right)), len(y)) if len(y) else [],
        delta_acc=round((float(np.mean(edge_right)) - float(np.mean(keras_right))) * 100, 3),
        agreement=pct(agree),
        strict_agreement=pct(edge_top == keras_top),
        ties=int(np.sum(tied.sum(axis=1) > 1)),
        max_abs_dp=float(diff.max()),
        mean_abs_dp=float(diff.mean()),
        thresholds={k: v for k, v in asdict(thresholds).items() if v is not None},
        failures=failures,
        counts=asdict(counts),
        evidence={k: e.to_dict() for k, e in found.items()},
        decision=decision,
        photos_needed=needed,
        none_of_these=none,
    )


def tflite_probabilities(path: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Score vectors of the edge runtime (dequantized) for uint8 images: the one integration point."""
    return Classifier(ClassifierOptions(model=path, num_threads=threads)).probabilities(images)


def held_out(run: RunDir) -> tuple[str, Photos]:
    """(split name, photos) of the test split, else val when test is empty."""
    splits = run.splits
    name = "test" if splits.test else "val"
    if not splits.part(name):
        raise DataError(f"{run.path}/splits.json has no test or val photos to check parity on")
    return name, Photos.of(splits, name, run.spec)


@dataclass(frozen=True)
class ParityReport:
    split: str
    n: int
    keras_accuracy: float
    keras_sha256: str
    variants: list[VariantParity]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.variants)

    def to_dict(self) -> dict:
        return {"split": self.split, "n": self.n, "keras_accuracy": self.keras_accuracy,
                "keras_accuracy_ci95": ci95(self.keras_accuracy, self.n) if self.n else [],
                "keras_sha256": self.keras_sha256, "passed": self.passed, "definitions": DEFINITIONS,
                "variants": {v.mode: v.to_dict() for v in self.variants}}

    def table(self) -> str:
        lo, hi = ci95(self.keras_accuracy, self.n) if self.n else (0.0, 0.0)
        head = (f"parity on {self.n} {self.split} photos (Keras accuracy {self.keras_accuracy:.4f}, "
                f"95% interval {lo:.3f}-{hi:.3f})\n"
                f"{'variant':<9} {'acc':>7} {'95% interval':>13} {'dAcc pt':>8} {'agree %':>8} {'90% interval':>13} "
                f"{'strict %':>9} {'ties':>5} {'max|dp|':>9} {'mean|dp|':>9} {'none %':>7}  gate")
        rows = [f"{v.mode:<9} {v.accuracy:>7.4f} {_interval(v.accuracy_ci95):>13} {v.delta_acc:>+8.2f} "
                f"{v.agreement:>8.2f} {_bounds(v.evidence.get('agreement')):>13} {v.strict_agreement:>9.2f} "
                f"{v.ties:>5d} {v.max_abs_dp:>9.2e} {v.mean_abs_dp:>9.2e} "
                f"{_none(v.none_of_these):>7}  {v.gate()}" for v in self.variants]
        note = (["(accuracy and agreement over the classes; none %: agreement of the none-of-these decision)"]
                if any(v.none_of_these for v in self.variants) else [])
        return "\n".join([head, *rows, *note])

    def warnings(self) -> list[str]:
        """One line when the split is too small to decide a variant's gate (never a silent pass)."""
        undecided = [v for v in self.variants if v.decision == "undecided"]
        if not undecided:
            return []
        what = ", ".join(f"{v.mode} (agreement >= {v.thresholds['min_agreement']:g} %: ~{v.photos_needed})"
                         for v in undecided)
        return [f"warning: {self.n} {self.split} photos are too few to decide the gate of {what} photos needed; "
                "these variants are neither passed nor failed on evidence"]


def _none(found: dict) -> str:
    return f"{found['agreement']:.2f}" if found else "-"


def _interval(ci: list[float]) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"


def _bounds(found: dict | None) -> str:
    return f"{found['low']:.1f}-{found['high']:.1f}" if found else "-"


def check(run_dir: str | Path, modes: list[str], thresholds: dict[str, Thresholds], keras_model=None,
          threads: int | None = None) -> ParityReport:
    """Run every requested variant and model.keras on the held-out photos and compare."""
    run = RunDir.open(run_dir)
    split, photos = held_out(run)
    for mode in modes:
        if not run.variant(mode).is_file():
            raise DataError(f"{run.variant(mode)} not found: run `python -m trainer convert {run_dir} --mode {mode}` first")
    model = keras_model or load_keras(run / MODEL)
    classifiers = {mode: Classifier(ClassifierOptions(model=run.variant(mode), num_threads=threads)) for mode in modes}
    keras_parts, labels, parts = [], [], {mode: [] for mode in modes}
    for images, y in photos.chunks(progress="parity" if len(photos) > 1000 else None):  # bounded memory
        keras_parts.append(keras_probabilities(model, images))
        labels.append(y)
        for mode, classifier in classifiers.items():
            parts[mode].append(classifier.probabilities(images))
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    keras_probs = np.concatenate(keras_parts) if keras_parts else np.zeros((0, 0), np.float32)
    reject = len(run.labels) if run.open_set and keras_probs.shape[-1] == len(run.labels) + 1 else None
    variants = [compare(mode, run.variant(mode), keras_probs, np.concatenate(parts[mode]), y,
                        thresholds.get(mode, Thresholds()), reject) for mode in modes]
    classes = keras_probs[:, :reject] if reject is not None else keras_probs
    keras_acc = round(float(np.mean(np.argmax(classes, axis=1) == y)), 4) if len(y) else 0.0
    return ParityReport(split, len(y), keras_acc, run.model_digest, variants)


def write(run_dir: str | Path, report: ParityReport) -> Path:
    """Write parity.json, keeping earlier entries of other variants that are still current (same
    model.keras, file unchanged), so converting one mode does not drop the others' numbers."""
    run = RunDir(Path(run_dir))
    merged = {v.mode: v for v in report.variants}
    previous = run.parity()
    if previous.data.get("keras_sha256") == report.keras_sha256 and previous.data.get("split") == report.split:
        for mode in previous.data.get("variants", {}):
            entry = previous.current(mode)
            if mode not in merged and entry is not None:
                merged[mode] = VariantParity.from_dict(entry)
    order = [m for m in MODES if m in merged] + [m for m in merged if m not in MODES]
    full = ParityReport(report.split, report.n, report.keras_accuracy, report.keras_sha256,
                        [merged[m] for m in order])
    return atomic.write_json(run / PARITY, full.to_dict())
