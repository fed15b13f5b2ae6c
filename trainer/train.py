"""`train` as stages with typed results: load dataset -> extract features -> fit head ->
fine-tune -> evaluate -> write the run directory.

Each stage is a function of its own that takes the previous stages' results, so one stage can be
replaced (streaming data, a multi-worker fine-tune) without touching the others. :func:`run`
only chains them and times them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec
from trainer import atomic, data, features, metrics, plots, report_html
from trainer.backbones import Backbone, build_backbone
from trainer.config import RunConfig
from trainer.fine_tune import fine_tune, without_optimizer
from trainer.head import assemble, train_head, write_tensorboard
from trainer.model_io import keras_probabilities
from trainer.run_dir import CONFIG, LABELS, MODEL, REPORT, SPLITS, RunDir

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """Decoded photos (uint8, the one preprocessing) and the split; rows index ``images``."""

    root: Path
    spec: PreprocessSpec
    splits: data.Splits
    images: np.ndarray
    rows: dict[str, np.ndarray]  # split name -> row indices into images
    skipped: list[dict]

    @property
    def classes(self) -> list[str]:
        return self.splits.labels

    def images_of(self, split: str) -> np.ndarray:
        return self.images[self.rows[split]]

    def targets(self, split: str) -> np.ndarray:
        return self.splits.targets(split)

    @property
    def eval_split(self) -> str:
        return "test" if len(self.rows["test"]) else "val"


@dataclass(frozen=True)
class Features:
    """Pooled backbone features per split; ``train_x/train_y`` include mirrored copies if asked."""

    by_split: dict[str, np.ndarray]
    train_x: np.ndarray
    train_y: np.ndarray


@dataclass(frozen=True)
class Trained:
    """The assembled model and what each stage recorded."""

    model: object
    head: object
    fine_tuned: bool
    history: dict[str, dict[str, list[float]]]


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, since: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - since


def load_dataset(cfg: RunConfig, timer: Timer) -> Dataset:
    """Scan, decode once (bad files skipped and reported), split: before TensorFlow loads."""
    spec = PreprocessSpec(size=(cfg.backbone.image_size, cfg.backbone.image_size))
    root = Path(cfg.data.dir).resolve()
    classes, candidates = data.scan(root)
    t0 = time.perf_counter()
    images, ok, errors = data.load_images([root / s.path for s in candidates], spec, progress="decode")
    timer.add("decode_s", t0)
    skipped = [{"path": s.path, "reason": errors[str(root / s.path)]} for s, good in zip(candidates, ok) if not good]
    samples = [s for s, good in zip(candidates, ok) if good]
    data.check_counts(classes, samples, cfg.data.min_per_class)
    train, val, test = data.stratified_split(samples, len(classes), cfg.data.val_split, cfg.data.test_split, cfg.seed)
    splits = data.Splits(str(root), classes, train, val, test, skipped)
    row = {s.path: i for i, s in enumerate(samples)}
    rows = {name: np.array([row[s.path] for s in splits.part(name)], np.int64) for name in SPLIT_NAMES}
    return Dataset(root, spec, splits, images[ok], rows, skipped)


def extract_features(cfg: RunConfig, backbone: Backbone, ds: Dataset, timer: Timer) -> Features:
    """The frozen base runs once over every photo (cached TFLite copy, see trainer.features)."""
    feature_model = backbone.feature_model()
    timings: dict[str, float] = {}
    feats = features.extract(feature_model, ds.images, cfg.train.threads or None, timings=timings)
    by_split = {name: feats[ds.rows[name]] for name in SPLIT_NAMES}
    train_x, train_y = by_split["train"], ds.targets("train")
    if cfg.train.flip_features:
        mirrored = np.ascontiguousarray(ds.images_of("train")[:, :, ::-1])
        flipped = features.extract(feature_model, mirrored, cfg.train.threads or None, desc="features (mirrored)",
                                   timings=timings)
        train_x, train_y = np.concatenate([train_x, flipped]), np.concatenate([train_y, train_y])
    timer.seconds.update({k: timer.seconds.get(k, 0.0) + v for k, v in timings.items()})
    return Features(by_split, train_x, train_y)


def fit(cfg: RunConfig, backbone: Backbone, ds: Dataset, feats: Features, out: Path, timer: Timer) -> Trained:
    """Stage 1 (head on cached features), then stage 2 (fine-tuning) when configured."""
    import keras

    n = len(ds.classes)
    t0 = time.perf_counter()
    head, head_history = train_head(cfg, feats.train_x, feats.train_y, feats.by_split["val"], ds.targets("val"), n)
    timer.add("head_s", t0)
    if cfg.train.tensorboard:
        write_tensorboard(out / "tensorboard" / "head", head_history)
    history = {"head": head_history}
    model = assemble(backbone, head, n, cfg.train.dropout)
    fine_tuned = bool(cfg.train.fine_tune_layers or cfg.train.fine_tune_from)
    if fine_tuned:
        callbacks = []
        if cfg.train.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard" / "fine_tune")))
        t0 = time.perf_counter()
        history["fine_tune"] = fine_tune(cfg, backbone, model, ds.images_of("train"), ds.targets("train"),
                                         ds.images_of("val"), ds.targets("val"), n, callbacks)
        model = without_optimizer(model)
        timer.add("fine_tune_s", t0)
    return Trained(model, head, fine_tuned, history)


def evaluate(trained: Trained, ds: Dataset, feats: Features, timer: Timer) -> dict[str, np.ndarray]:
    """Probabilities per split. A head-only model scores on the cached features (the same network:
    the float32 TFLite base matches Keras to 1e-6); a fine-tuned one runs whole."""
    t0 = time.perf_counter()
    probs = {}
    for name in SPLIT_NAMES:
        if trained.fine_tuned:
            probs[name] = keras_probabilities(trained.model, ds.images_of(name))
        else:
            probs[name] = np.asarray(trained.head.predict(feats.by_split[name], verbose=0))
    timer.add("evaluate_s", t0)
    return probs


def build_report(cfg: RunConfig, ds: Dataset, trained: Trained, probs: dict[str, np.ndarray], timer: Timer) -> dict:
    ys = {name: ds.targets(name) for name in SPLIT_NAMES}
    return {
        "labels": ds.classes,
        "counts": {name: len(ds.splits.part(name)) for name in SPLIT_NAMES},
        "splits": {name: metrics.classification_report(ys[name], probs[name], ds.classes) for name in SPLIT_NAMES},
        "skipped": ds.skipped,
        "mistakes": metrics.mistakes(ds.eval_split, [s.path for s in ds.splits.part(ds.eval_split)],
                                     ys[ds.eval_split], probs[ds.eval_split], ds.classes),
        "stages": {name: {"epochs": len(h.get("loss", [])),
                          "best_val_loss": round(float(min(h["val_loss"])), 4) if h.get("val_loss") else None}
                   for name, h in trained.history.items()},
        "timings": {k: round(v, 2) for k, v in timer.seconds.items()},
        "history": {stage: {k: [round(float(v), 5) for v in vs] for k, vs in h.items()}
                    for stage, h in trained.history.items()},
    }


def write_inputs(cfg: RunConfig, ds: Dataset, out: Path) -> None:
    """labels.txt, splits.json, config.json: what the run was given (written before training, so
    a run that fails later still says what it tried)."""
    atomic.write_text(out / LABELS, "\n".join(ds.classes) + "\n")
    atomic.write_json(out / SPLITS, ds.splits.to_dict())
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(ds.root)))
    atomic.write_json(out / CONFIG, {**resolved.to_dict(), "preprocess": ds.spec.to_dict(),
                                     "model_input": "RGB uint8 values as float32, 0..255"})


def write_outputs(out: Path, trained: Trained, ds: Dataset, probs: dict[str, np.ndarray], report: dict,
                  timer: Timer) -> None:
    """model.keras, report.json, the plots and report.html, each written atomically."""
    t0 = time.perf_counter()
    with atomic.atomic_path(out / MODEL) as tmp:
        trained.model.save(tmp)
    timer.add("save_s", t0)
    report["timings"] = {k: round(v, 2) for k, v in timer.seconds.items()}
    atomic.write_json(out / REPORT, report)
    split = ds.eval_split
    plots.training_curves(trained.history, out / "training_curves.png")
    plots.confusion(np.array(report["splits"][split]["confusion_matrix"]), ds.classes, out / "confusion_matrix.png",
                    title=f"{split} confusion matrix")
    plots.prediction_grid(ds.images_of(split), ds.targets(split), probs[split], ds.classes, out / "predictions.png")
    report_html.write(out)


def run(cfg: RunConfig, out: Path) -> dict:
    """The whole `train` command; returns the report (also written to out/report.json)."""
    t_start = time.perf_counter()
    timer = Timer()
    out = Path(out)
    ds = load_dataset(cfg, timer)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    RunDir(out).clean_stale_temps()
    write_inputs(cfg, ds, out)
    backbone = build_backbone(cfg.backbone)
    feats = extract_features(cfg, backbone, ds, timer)
    trained = fit(cfg, backbone, ds, feats, out, timer)
    probs = evaluate(trained, ds, feats, timer)
    report = build_report(cfg, ds, trained, probs, timer)
    timer.seconds["total_s"] = time.perf_counter() - t_start
    write_outputs(out, trained, ds, probs, report, timer)
    return report
