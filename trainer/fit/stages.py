"""`train` as stages with typed results: load dataset -> extract features -> fit head ->
fine-tune -> evaluate -> write the run directory.

Each stage is a function of its own that takes the previous stages' results, so one stage can be
replaced (streaming data, a multi-worker fine-tune) without touching the others. :func:`run`
only chains them and times them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec
from trainer import atomic
from trainer.config import RunConfig
from trainer.data import dataset, exclude
from trainer.data.feature_cache import FeatureCache, cache_root
from trainer.data.photos import Photos
from trainer.data.rows import Rows
from trainer.fit import checks, features, open_set, signals
from trainer.fit.cluster import Cluster, barrier, gather_rows, make_strategy, share
from trainer.fit.fine_tune import fine_tune, without_optimizer
from trainer.fit.head import LinearHead, assemble, train_head, write_tensorboard
from trainer.model.backbones import Backbone, build_backbone, resolved
from trainer.model.int8_grid import snap_to_int8_grid
from trainer.model.model_io import photo_outputs, with_embedding
from trainer.report import metrics, page, plots
from trainer.run_dir import CONFIG, LABELS, MODEL, REPORT, SPLITS, Output

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """What the folder holds: classes and every candidate photo (not decoded: stages stream)."""

    root: Path
    spec: PreprocessSpec
    classes: list[str]
    candidates: list[dataset.Sample]
    excluded: list[str] = field(default_factory=list)  # `--exclude`: left out (relative paths)


@dataclass(frozen=True)
class Features:
    """The readable photos' split and their pooled features (tables on disk, per split); ``train_x``
    / ``train_y`` include mirrored copies when asked."""

    splits: dataset.Splits
    by_split: dict[str, Rows]
    train_x: Rows
    train_y: np.ndarray
    cache_hits: int
    twins: list[tuple[list[str], str]] = field(default_factory=list)  # twin groups: (paths, kind)
    rejoined: int = 0  # twin groups the split had to bring together

    def photos(self, split: str, spec: PreprocessSpec) -> Photos:
        return Photos.of(self.splits, split, spec)

    def targets(self, split: str) -> np.ndarray:
        return self.splits.targets(split)

    @property
    def eval_split(self) -> str:
        return "test" if self.splits.test else "val"


@dataclass(frozen=True)
class Trained:
    """The assembled model and what each stage recorded."""

    model: object
    head: LinearHead
    fine_tuned: bool
    history: dict[str, dict[str, list[float]]]


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, since: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - since


def scan_dataset(cfg: RunConfig) -> Dataset:
    """Classes and candidate files, before TensorFlow loads (a bad --data fails at once)."""
    spec = PreprocessSpec(size=(cfg.backbone.image_size, cfg.backbone.image_size))
    root = Path(cfg.data.dir).resolve()
    classes, candidates = dataset.scan(root)
    candidates, excluded = exclude.apply(candidates, cfg.data.exclude)
    if cfg.train.open_set and cfg.train.open_set_label in classes:
        raise dataset.DataError(f"a class folder is named {cfg.train.open_set_label!r}, the none-of-these label: "
                                "name that class otherwise or pass --open-set-label NAME")
    dataset.check_counts(classes, candidates, cfg.data.min_per_class)  # again once unreadable files are known
    return Dataset(root, spec, classes, candidates, excluded)


def extract_features(cfg: RunConfig, backbone: Backbone, ds: Dataset, work: Path, timer: Timer,
                     strategy=None) -> Features:
    """Every photo through the frozen base once (streamed, through the persistent feature cache),
    then the split of the readable ones (unreadable files are skipped and reported).

    On several workers each first extracts its share into the shared cache and waits for the
    others (:func:`trainer.fit.cluster.barrier`); the full pass after that only reads the cache."""
    t0 = time.perf_counter()
    cache = FeatureCache.default()
    extractor = features.Extractor(backbone.feature_model(), cache, cfg.train.threads or None)
    paths = [ds.root / s.path for s in ds.candidates]
    cluster = Cluster.of(strategy)
    if cluster.workers > 1:
        features.extract(paths, ds.spec, extractor, cache, None, rows=share(range(len(paths)), cluster),
                         progress=f"features (worker {cluster.rank} of {cluster.workers})")
        barrier(strategy)
    table = features.extract(paths, ds.spec, extractor, cache, work / "features.f32", fingerprints=True)
    skipped = [{"path": ds.candidates[row].path, "reason": reason} for row, reason in sorted(table.errors.items())]
    samples = [s for s, good in zip(ds.candidates, table.ok) if good]
    dataset.check_counts(ds.classes, samples, cfg.data.min_per_class)
    train, val, test = dataset.stratified_split(samples, len(ds.classes), cfg.data.val_split, cfg.data.test_split, cfg.seed)
    twins = checks.table_twins(table, [s.path for s in ds.candidates])  # exact + near twins: one split each
    (train, val, test), rejoined = dataset.keep_together((train, val, test), [p for p, _ in twins], cfg.seed)
    splits = dataset.Splits(str(ds.root), ds.classes, train, val, test, skipped)
    row = {s.path: i for i, s in enumerate(ds.candidates)}
    rows = {name: np.array([row[s.path] for s in splits.part(name)], np.int64) for name in SPLIT_NAMES}
    by_split = {name: table.gather(rows[name], work / f"{name}.f32") for name in SPLIT_NAMES}
    train_x, train_y, hits = by_split["train"], splits.targets("train"), table.hits
    if cfg.train.flip_features:
        if cluster.workers > 1:
            features.extract(paths, ds.spec, extractor, cache, None, view="mirrored",
                             rows=share(rows["train"], cluster), progress="features (mirrored, my share)")
            barrier(strategy)
        mirrored = features.extract(paths, ds.spec, extractor, cache, work / "mirrored.f32", view="mirrored",
                                    rows=rows["train"], progress="features (mirrored)")
        train_x = Rows.concat([by_split["train"], mirrored.gather(rows["train"], work / "mirrored_train.f32")],
                              work / "train_both.f32")
        train_y, hits = np.concatenate([train_y, train_y]), hits + mirrored.hits
    timer.add("features_s", t0)
    return Features(splits, by_split, train_x, train_y, hits, twins, rejoined)


def fit(cfg: RunConfig, backbone: Backbone, ds: Dataset, feats: Features, out: Path, timer: Timer,
        strategy=None, checkpoint_dir: Path | None = None) -> Trained:
    """Stage 1 (head on cached features), then stage 2 (fine-tuning) when configured: data-parallel
    over every worker of ``strategy``, checkpointed each epoch to this worker's ``checkpoint_dir``.
    Every worker solves the same head (deterministic, cheap); the model is built in the scope."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    chief = Cluster.of(strategy).is_chief
    n = len(ds.classes)
    t0 = time.perf_counter()
    head, head_history = train_head(cfg, feats.train_x, feats.train_y, feats.by_split["val"], feats.targets("val"), n)
    timer.add("head_s", t0)
    if cfg.train.tensorboard and chief:
        write_tensorboard(out / "tensorboard" / "head", head_history)
    history = {"head": head_history}
    fine_tuned = bool(cfg.train.fine_tune_layers or cfg.train.fine_tune_from)
    # variables made in an MWMS scope are broadcast, a collective every worker must join: only
    # when all of them fine-tune (head only, the chief alone assembles the model)
    with strategy.scope() if fine_tuned else contextlib.nullcontext():
        model = assemble(backbone, head, n, cfg.train.dropout)
    if fine_tuned:
        t0 = time.perf_counter()
        logdir = out / "tensorboard" / "fine_tune" if cfg.train.tensorboard and chief else None
        history["fine_tune"] = fine_tune(cfg, backbone, model, feats.photos("train", ds.spec),
                                         feats.photos("val", ds.spec), n, strategy, checkpoint_dir, logdir,
                                         keep_checkpoints=True)  # run() deletes them once the run is written
        model = without_optimizer(model)
        if cfg.backbone.int8_grid:  # fine-tuning moved the weights off the grid; the head needs no refit
            snap_to_int8_grid(model)  # (tf_flowers best: test accuracy 0.937 before and after)
        timer.add("fine_tune_s", t0)
    return Trained(model, head, fine_tuned, history)


def evaluate(trained: Trained, ds: Dataset, feats: Features, timer: Timer,
             strategy=None) -> tuple[dict[str, np.ndarray], dict]:
    """Probabilities and pooled embeddings per split. A head-only model scores on the cached
    features (the same network: the float32 TFLite base matches Keras to 1e-6); a fine-tuned one
    runs whole, streaming photos, and on several workers each runs its share of every split (they
    all hold the same weights)."""
    t0 = time.perf_counter()
    cluster = Cluster.of(strategy)
    probs, embeddings = {}, {}
    both = with_embedding(trained.model) if trained.fine_tuned else None  # one model: one traced predict
    for name in SPLIT_NAMES:
        if trained.fine_tuned:
            photos = feats.photos(name, ds.spec)
            rows = share(np.arange(len(photos)), cluster)
            mine = photo_outputs(both, photos.take(rows), progress=f"evaluate {name}")
            gathered = [gather_rows(strategy, len(photos), rows, m) if cluster.workers > 1 else m for m in mine]
            embeddings[name], probs[name] = gathered
        else:
            probs[name], embeddings[name] = trained.head.probabilities(feats.by_split[name]), feats.by_split[name]
    timer.add("evaluate_s", t0)
    return probs, embeddings


def add_open_set(cfg: RunConfig, ds: Dataset, feats: Features, trained: Trained, embeddings: dict,
                 timer: Timer) -> tuple[Trained, dict | None]:
    """The none-of-these class (trainer.fit.open_set) on the embeddings in hand: prototypes,
    threshold and temperature into the model, and its measurement (leave-one-class-out, the
    calibration, the held-out split's rejections) for report.json."""
    from trainer.model.open_set_layer import attach

    t = cfg.train
    if not t.open_set:
        return trained, None
    t0 = time.perf_counter()
    n = len(ds.classes)
    kernel, bias = trained.model.get_layer("probabilities").get_weights()
    y = {name: feats.targets(name) for name in SPLIT_NAMES}
    fitted = open_set.fit(embeddings["train"], y["train"], embeddings["val"], y["val"], kernel, bias, n,
                          t.open_set_keep, t.open_set_prototypes, cfg.seed)
    one_l2 = dataclasses.replace(cfg, train=dataclasses.replace(t, l2_grid=(trained.head.l2,)))

    def solve(x, y_, xv, yv, k):
        with contextlib.redirect_stderr(io.StringIO()):  # one bar for the whole loop, below
            head, _ = train_head(one_l2, x, y_, xv, yv, k)
        return head.kernel, head.bias

    loco = None
    if n >= 3:
        from tqdm.auto import tqdm

        with tqdm(total=n, desc="none of these (leave one class out)", unit="class") as bar:
            loco = open_set.leave_one_class_out({name: (embeddings[name], y[name]) for name in SPLIT_NAMES}, n,
                                                ds.classes, solve, t.open_set_keep, t.open_set_prototypes, cfg.seed,
                                                progress=lambda _: bar.update(1))
        loco["backbone_saw_every_class"] = trained.fine_tuned  # fine-tuned on all: only the head is refit
    split = feats.eval_split
    rejected = open_set.decisions(fitted, embeddings[split])
    right = np.argmax(open_set.logits_of(embeddings[split], kernel, bias), axis=1) == y[split]
    model = attach(trained.model, fitted.prototypes, fitted.threshold, fitted.sharpness, fitted.temperature)
    timer.add("open_set_s", t0)
    report = {
        "label": t.open_set_label, "score": "prototype_cosine", "threshold": round(fitted.threshold, 6),
        "keep": t.open_set_keep, "prototypes_per_class": t.open_set_prototypes,
        "prototypes": int(len(fitted.prototypes)), "sharpness": fitted.sharpness,
        split: {"photos": int(len(rejected)), "rejected": round(float(np.mean(rejected)), 4) if len(rejected) else None,
                "accuracy": round(float(np.mean(right)), 4) if len(right) else None,
                "accuracy_with_rejections": round(float(np.mean(right & ~rejected)), 4) if len(right) else None},
        "calibration": open_set.calibration(embeddings[split], y[split], kernel, bias, fitted.temperature),
        "leave_one_class_out": loco,
    }
    return dataclasses.replace(trained, model=model), report


def build_report(cfg: RunConfig, ds: Dataset, feats: Features, trained: Trained, probs: dict[str, np.ndarray],
                 timer: Timer, workers: int = 1) -> dict:
    ys = {name: feats.targets(name) for name in SPLIT_NAMES}
    split = feats.eval_split
    t0 = time.perf_counter()  # the cheap data check, on the features in hand (trainer doctor: all of it)
    check = checks.summary(ds.classes, feats.splits, feats.by_split, feats.twins, feats.rejoined, ds.excluded)
    timer.add("data_check_s", t0)
    return {
        "labels": ds.classes,
        "counts": {name: len(feats.splits.part(name)) for name in SPLIT_NAMES},
        "splits": {name: metrics.classification_report(ys[name], probs[name], ds.classes) for name in SPLIT_NAMES},
        "skipped": feats.splits.skipped,
        "excluded": ds.excluded,
        "data_check": check,
        "mistakes": metrics.mistakes(split, [s.path for s in feats.splits.part(split)], ys[split], probs[split],
                                     ds.classes),
        "workers": workers,
        "feature_cache": {"dir": str(cache_root()), "photos": len(ds.candidates), "hits": feats.cache_hits},
        "stages": {name: {"epochs": len(h.get("loss", [])),
                          "best_val_loss": round(float(min(h["val_loss"])), 4) if h.get("val_loss") else None}
                   for name, h in trained.history.items()},
        "timings": {k: round(v, 2) for k, v in timer.seconds.items()},
        "history": {stage: {k: [round(float(v), 5) for v in vs] for k, vs in h.items()}
                    for stage, h in trained.history.items()},
    }


def write_inputs(cfg: RunConfig, ds: Dataset, splits: dataset.Splits, out: Path) -> None:
    """labels.txt, splits.json, config.json: what the run was given (written before training, so
    a run that fails later still says what it tried)."""
    atomic.write_text(out / LABELS, "\n".join(ds.classes) + "\n")
    atomic.write_json(out / SPLITS, splits.to_dict())
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(ds.root)))
    atomic.write_json(out / CONFIG, {**resolved.to_dict(), "preprocess": ds.spec.to_dict(),
                                     "model_input": "RGB uint8 values as float32, 0..255"})


def write_outputs(out: Path, trained: Trained, ds: Dataset, feats: Features, probs: dict[str, np.ndarray],
                  report: dict, timer: Timer) -> None:
    """model.keras, report.json, the plots and report.html, each written atomically."""
    t0 = time.perf_counter()
    with atomic.atomic_path(out / MODEL) as tmp:
        trained.model.save(tmp)
    timer.add("save_s", t0)
    report["timings"] = {k: round(v, 2) for k, v in timer.seconds.items()}
    atomic.write_json(out / REPORT, report)
    split = feats.eval_split
    plots.training_curves(trained.history, out / "training_curves.png")
    plots.confusion(np.array(report["splits"][split]["confusion_matrix"]), ds.classes, out / "confusion_matrix.png",
                    title=f"{split} confusion matrix")
    shown = feats.photos(split, ds.spec).take(range(min(16, len(feats.splits.part(split)))))
    images, ok, _ = dataset.load_images(shown.paths, ds.spec)  # only the 16 photos the grid shows
    plots.prediction_grid(images[ok], shown.labels[ok], probs[split][:len(ok)][ok], ds.classes, out / "predictions.png")
    page.write(out)


@contextlib.contextmanager
def _dropped_when_stopped(build: Path, final: Path):
    """A stopped chief deletes the run it was building beside the one it replaces (which stays
    whole); SIGKILL leaves it to the next run's clean-up (trainer.atomic.recover)."""
    try:
        yield
    except BaseException:
        if build != final and signals.requested() is not None:
            shutil.rmtree(build, ignore_errors=True)
        raise


def checkpoint_dir(cfg: RunConfig, out: Path, cluster: Cluster) -> Path:
    """This worker's fine-tuning checkpoints, under the cache (so the workers that are not the
    chief write nothing into RUN_DIR), keyed by the run directory and the configuration: the same
    command, run again after a kill, finds them and resumes."""
    key = hashlib.sha256(json.dumps([str(out.resolve()), cfg.to_dict()], sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "checkpoints" / key / f"worker_{cluster.rank}"


def run(cfg: RunConfig, out: Path | Output) -> dict | None:
    """The whole `train` command on this worker. Returns the report (also written to
    report.json) on the chief; None on the other workers, which write nothing into the run.

    ``out``: an :class:`Output` (the CLI checks --out before TensorFlow loads), or a folder that
    holds no run yet. The chief writes into ``Output.start()`` (the run folder, or the hidden
    sibling a replaced run is built in) and ``Output.finish()`` swaps it in at the very end; the
    checkpoint key is the final folder, so a killed run resumes however it was started."""
    t_start = time.perf_counter()
    timer = Timer()
    cluster = Cluster.from_env()
    target = out if isinstance(out, Output) else Output.choose(Path(out), workers=cluster.workers,
                                                                chief=cluster.is_chief)
    cfg = dataclasses.replace(cfg, backbone=resolved(cfg.backbone))
    ds = scan_dataset(cfg)
    import tensorflow  # noqa: F401  (loaded first: the wait below is the peers' alone)

    signals.report("stage", signals.WAITING)  # (a no-op without a supervisor, as on one worker)
    strategy = make_strategy(cluster)  # before any other TensorFlow op; the cluster forms here
    signals.after_tensorflow()  # TF's preemption notifier took SIGTERM: take it back
    signals.report("stage", signals.JOINED)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    build = target.start() if cluster.is_chief else target.final  # the others never write there
    checkpoints = checkpoint_dir(cfg, target.final, cluster)
    with strategy.scope():
        backbone = build_backbone(cfg.backbone)
    with _dropped_when_stopped(build, target.final), \
            tempfile.TemporaryDirectory(prefix="edge-transfer-features-") as work:
        signals.report("stage", "extracting features")
        feats = extract_features(cfg, backbone, ds, Path(work), timer, strategy)
        fine_tuning = bool(cfg.train.fine_tune_layers or cfg.train.fine_tune_from)
        report = None
        if cluster.is_chief:
            write_inputs(cfg, ds, feats.splits, build)
            if build == target.final:  # a stopped run leaves them: the rerun needs --overwrite
                signals.report("inputs", target.final)
        if cluster.is_chief or fine_tuning:  # the others' share of the features is in the cache
            signals.report("stage", "fitting the head")
            trained = fit(cfg, backbone, ds, feats, build, timer, strategy, checkpoints)
            signals.report("stage", "evaluating")
            probs, embeddings = evaluate(trained, ds, feats, timer, strategy)  # fine-tuned: each worker its share
        if cluster.is_chief:
            signals.report("stage", "none of these")
            trained, open_report = add_open_set(cfg, ds, feats, trained, embeddings, timer)
            report = build_report(cfg, ds, feats, trained, probs, timer, cluster.workers)
            if open_report is not None:
                report["open_set"] = open_report
            timer.seconds["total_s"] = time.perf_counter() - t_start
            signals.report("stage", "writing the run")
            with signals.critical():  # a stop waits: the run is written whole (or killed after the grace)
                write_outputs(build, trained, ds, feats, probs, report, timer)
                target.finish(build)  # a replaced run: renames only, the old one goes whole
            signals.report("written", target.final)
    if cluster.workers > 1:
        signals.report("stage", "waiting for the other workers to finish")
        barrier(strategy)  # everyone stays until the chief has written: no peer vanishes mid-run
    shutil.rmtree(checkpoints, ignore_errors=True)  # kept so far: a run stopped after fine-tuning resumes
    return report
