"""Stage 2 (optional): fine-tune the top of the base, BatchNorm kept in inference mode.

A custom loop with ``strategy.run`` instead of ``model.fit``: Keras 3 ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow/tensorflow#72388) and its
BackupAndRestore is not multi-worker aware. Photos stream from their files through
``edge.preprocess`` (never all in memory); every worker runs the same fixed number of steps per
epoch (collectives hang otherwise) and takes the same early-stopping decision (all-reduced
metrics). With a checkpoint directory every completed epoch is saved, and a rerun resumes after
the last epoch that every worker saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.config import SCHEDULES, RunConfig
from trainer.data.photos import Photos
from trainer.fit import signals
from trainer.fit.cluster import Cluster, all_sum, cluster_errors
from trainer.fit.head import balanced_class_weights
from trainer.model.backbones import Backbone, BackboneError

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
PREFIX = "fine_tune-"  # checkpoint sub-folder: PREFIX + fingerprint of the configuration


def unfreeze_top(base, n_layers: int, from_layer: str | None) -> int:
    """Make the top of the base trainable (BatchNorm excluded); returns the first trainable index."""
    import keras

    layers = base.layers
    if from_layer:
        names = [layer.name for layer in layers]
        if from_layer not in names:
            blocks = sorted({n for n in names if n.endswith("_expand") or n.startswith("Conv")})
            raise BackboneError(f"no layer named {from_layer!r} in the base; block starts: {', '.join(blocks[-6:])}")
        start = names.index(from_layer)
    else:
        if not 0 < n_layers <= len(layers):
            raise BackboneError(f"--fine-tune-layers must be between 1 and {len(layers)}, got {n_layers}")
        start = len(layers) - n_layers
    base.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return start


def _augmenter(seed: int, zoom: float):
    """Flip, a random crop of up to ``zoom`` of the side (zoomed back to full size), shift, brightness."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom((-zoom, 0.0), seed=seed + 1, fill_mode="reflect"),
        keras.layers.RandomTranslation(0.05, 0.05, seed=seed + 2, fill_mode="reflect"),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
    ], name="augment")


def learning_rate(t, steps_per_epoch: int):
    """The optimizer's learning rate: a number, or warmup + cosine decay over every step (a
    function of the optimizer's step count, so a resumed run continues the same curve)."""
    import keras

    if t.fine_tune_schedule not in SCHEDULES:
        raise BackboneError(f"--fine-tune-schedule must be one of {', '.join(SCHEDULES)}, got {t.fine_tune_schedule!r}")
    if t.fine_tune_schedule == "constant":
        return t.fine_tune_learning_rate
    total = steps_per_epoch * t.fine_tune_epochs
    warmup = min(steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warmup), warmup_target=t.fine_tune_learning_rate,
                                                  warmup_steps=warmup)


@dataclass(frozen=True)
class Plan:
    """The shape of an epoch, the same on every worker."""

    per_replica_batch: int
    replicas: int
    workers: int
    steps: int  # per epoch, fixed: ceil(train photos / global batch)

    @property
    def global_batch(self) -> int:
        return self.per_replica_batch * self.replicas

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers


def fingerprint(cfg: RunConfig, train: Photos, val: Photos, n_classes: int, plan: Plan) -> str:
    """What a checkpoint must match to be resumed: the fine-tuning recipe, data and cluster shape."""
    t = cfg.train
    recipe = {k: getattr(t, k) for k in ("fine_tune_layers", "fine_tune_from", "fine_tune_epochs",
                                         "fine_tune_learning_rate", "fine_tune_schedule", "fine_tune_patience",
                                         "label_smoothing", "class_weights", "dropout", "fine_tune_zoom")}
    h = hashlib.sha256(json.dumps([recipe, asdict(cfg.backbone), cfg.seed, n_classes, asdict(plan),
                                   train.spec.to_dict()], sort_keys=True, default=str).encode())
    for photos in (train, val):
        h.update(json.dumps([[str(p) for p in photos.paths], photos.labels.tolist()]).encode())
    return h.hexdigest()[:16]


def _decode(photos: Photos, order: np.ndarray, weights: np.ndarray, n_classes: int):
    """(path, label, weight) rows in ``order`` -> a dataset of (uint8 image, one-hot, weight)."""
    import tensorflow as tf

    from edge.preprocess import prepare

    spec = photos.spec

    def load(path, label, weight):
        image = tf.numpy_function(lambda p: prepare(p.decode(), spec), [path], tf.uint8, stateful=False)
        image.set_shape((*spec.size, 3))
        return image, tf.one_hot(label, n_classes), weight

    rows = (np.array([str(p) for p in photos.paths])[order], photos.labels[order].astype(np.int32),
            weights[order].astype(np.float32))
    return tf.data.Dataset.from_tensor_slices(rows), load


def _train_dataset(strategy, train: Photos, weights, n_classes: int, plan: Plan, seed: int, epoch: int, augment):
    """This epoch's shuffled photos (seed + epoch: a resumed run sees the same order), each worker
    reading its shard, exactly ``plan.steps`` batches per replica, augmented (the augmenter is
    seeded per epoch too, so a resumed epoch draws what an uninterrupted one would)."""
    import tensorflow as tf

    order = np.random.default_rng(seed + epoch).permutation(len(train))

    def dataset_fn(ctx):
        ds, load = _decode(train, order, weights, n_classes)
        return (ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).repeat()
                .map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
                .batch(ctx.get_per_replica_batch_size(plan.global_batch), drop_remainder=True)
                # one batch at a time: parallel calls would draw the augmenter's random state in
                # a racing order, and the same seed would give another model each run
                .map(lambda x, y, w: (augment(tf.cast(x, tf.float32), training=True), y, w))
                .take(plan.steps * plan.local_replicas).prefetch(tf.data.AUTOTUNE))

    return strategy.distribute_datasets_from_function(dataset_fn)


def _val_dataset(val: Photos, cluster: Cluster, n_classes: int, batch: int):
    """This worker's share of the validation photos (evaluated locally, totals all-reduced)."""
    import tensorflow as tf

    rows = np.arange(len(val))[cluster.rank::cluster.workers]
    ds, load = _decode(val, rows, np.ones(len(val), np.float32), n_classes)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(batch).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class _State:
    """What a checkpoint holds beside the model and optimizer: epochs done, the early-stopping
    state, the best weights so far and the history (one row of KEYS per epoch, NaN when absent)."""

    epoch: object
    best: object
    since_best: object
    history: object
    best_weights: list

    @classmethod
    def create(cls, model, epochs: int) -> "_State":
        import tensorflow as tf

        return cls(tf.Variable(0, dtype=tf.int64), tf.Variable(np.inf, dtype=tf.float32),
                   tf.Variable(0, dtype=tf.int64), tf.Variable(np.full((epochs, len(KEYS)), np.nan, np.float32)),
                   [tf.Variable(v.numpy(), trainable=False) for v in model.trainable_variables])

    def as_dict(self) -> dict[str, list[float]]:
        rows = self.history.numpy()[: int(self.epoch.numpy())]
        return {k: [float(v) for v in rows[:, i]] for i, k in enumerate(KEYS) if not np.isnan(rows[:, i]).any()}


def _checkpoints(checkpoint_dir: Path, fp: str, ckpt):
    """The manager for this configuration's checkpoints; other configurations' are removed."""
    import tensorflow as tf

    for stale in sorted(checkpoint_dir.glob(PREFIX + "*")):
        if stale.name != PREFIX + fp:
            print(f"note: fine-tuning checkpoint {stale} is from another configuration; starting fresh", flush=True)
            shutil.rmtree(stale, ignore_errors=True)
    return tf.train.CheckpointManager(ckpt, str(checkpoint_dir / (PREFIX + fp)), max_to_keep=2)


def _resume(strategy, manager, ckpt, epochs: int) -> int:
    """Restore the latest epoch that every worker saved (workers save in step, at most one apart)."""
    saved = {int(re.search(r"ckpt-(\d+)$", p).group(1)): p for p in manager.checkpoints}
    have = np.zeros(epochs + 1, np.float32)
    have[0] = 1.0
    for k in saved:
        if k <= epochs:
            have[k] = 1.0
    everyone = all_sum(strategy, have)
    common = max(k for k in range(epochs + 1) if everyone[k] == everyone[0])
    if common:
        ckpt.restore(saved[common]).assert_consumed()
        print(f"resuming fine-tuning after epoch {common}", flush=True)
        signals.report("saved", common, epochs)
    return common


def _start_from_chief(strategy, cluster: Cluster, variables) -> None:
    """Every worker starts from the chief's trainable weights: MWMS broadcasts initial values
    only when variables are created, so a head set afterwards (assemble) could differ by worker."""
    if cluster.workers < 2:
        return
    flat = np.concatenate([v.numpy().ravel() for v in variables]) * (1.0 if cluster.is_chief else 0.0)
    chief = all_sum(strategy, flat)
    for v, part in zip(variables, np.split(chief, np.cumsum([int(np.prod(v.shape)) for v in variables])[:-1])):
        v.assign(part.reshape(v.shape))


def fine_tune(cfg: RunConfig, backbone: Backbone, model, train: Photos, val: Photos, n_classes: int,
              strategy, checkpoint_dir: Path | None = None, logdir: Path | None = None,
              keep_checkpoints: bool = False) -> dict[str, list[float]]:
    """Stage 2: low learning rate, augmentation, early stopping on val loss, best weights restored.

    Call it outside ``strategy.scope()``, with ``model`` built inside it. ``checkpoint_dir``: this
    worker's own folder (saved after every epoch, resumed from, deleted after success unless
    ``keep_checkpoints``: the caller deletes it once the model is safe, and a run stopped before
    that resumes without training). ``logdir``: TensorBoard scalars (the chief writes them).
    Returns the history per epoch."""
    import tensorflow as tf

    if not backbone.fine_tunable:
        raise BackboneError("this backbone (hub:PATH SavedModel) is inference-only: train without --fine-tune-layers")
    if tf.distribute.has_strategy():
        raise RuntimeError("call fine_tune outside strategy.scope() (build the model inside it)")
    cluster = Cluster.of(strategy)
    with cluster_errors(cluster):
        history = _fine_tune(cfg, backbone, model, train, val, n_classes, strategy, cluster, checkpoint_dir, logdir)
    backbone.base.trainable = False
    if checkpoint_dir is not None and not keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return history


def _fine_tune(cfg, backbone, model, train, val, n_classes, strategy, cluster, checkpoint_dir, logdir):
    import keras
    import tensorflow as tf

    t = cfg.train
    unfreeze_top(backbone.base, t.fine_tune_layers, t.fine_tune_from)
    variables = model.trainable_variables
    plan = Plan(t.fine_tune_batch_size, strategy.num_replicas_in_sync, cluster.workers,
                max(1, math.ceil(len(train) / (t.fine_tune_batch_size * strategy.num_replicas_in_sync))))
    with strategy.scope():
        optimizer = keras.optimizers.Adam(learning_rate(t, plan.steps))
        optimizer.build(variables)
    class_weight = balanced_class_weights(train.labels, n_classes) if t.class_weights else None
    weights = (np.array([class_weight[int(c)] for c in train.labels], np.float32) if class_weight
               else np.ones(len(train), np.float32))
    smoothing = t.label_smoothing

    def replica_step(x, y, w):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = keras.losses.categorical_crossentropy(y, p, label_smoothing=smoothing) * w
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=plan.global_batch)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.argmax(p, 1) == tf.argmax(y, 1), tf.float32))
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(x)[0], tf.float32)])

    @tf.function
    def train_step(iterator):
        return strategy.run(replica_step, args=next(iterator))

    @tf.function(reduce_retracing=True)
    def evaluate(x, y):
        p = model(x, training=False)
        per_example = keras.losses.categorical_crossentropy(y, p, label_smoothing=smoothing)
        correct = tf.reduce_sum(tf.cast(tf.argmax(p, 1) == tf.argmax(y, 1), tf.float32))
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(x)[0], tf.float32)])

    state = _State.create(model, t.fine_tune_epochs)
    manager, start = None, 0
    if checkpoint_dir is not None:
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=state.epoch, best=state.best,
                                   since_best=state.since_best, history=state.history, best_weights=state.best_weights)
        manager = _checkpoints(Path(checkpoint_dir), fingerprint(cfg, train, val, n_classes, plan), ckpt)
        start = _resume(strategy, manager, ckpt, t.fine_tune_epochs)
    _start_from_chief(strategy, cluster, variables)
    signals.report("stage", signals.FINE_TUNING)
    val_ds = _val_dataset(val, cluster, n_classes, t.fine_tune_batch_size) if len(val) else None
    writer = tf.summary.create_file_writer(str(logdir)) if logdir is not None and cluster.is_chief else None
    for epoch in range(start, t.fine_tune_epochs):
        since = int(state.since_best.numpy())
        if since and since >= t.fine_tune_patience:
            break  # a resumed run whose last saved epoch already stopped early
        t0 = time.perf_counter()
        augment = _augmenter(cfg.seed + 1009 * epoch, t.fine_tune_zoom)
        iterator = iter(_train_dataset(strategy, train, weights, n_classes, plan, cfg.seed, epoch, augment))
        sums = np.zeros(3)
        bar = _bar(plan.steps, f"fine-tune {epoch + 1}/{t.fine_tune_epochs}")
        for _ in range(plan.steps):
            sums += sum(np.asarray(v) for v in strategy.experimental_local_results(train_step(iterator)))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=round(sums[0] / sums[2], 4))
        if bar is not None:
            bar.close()
        local_val = np.zeros(3)
        for x, y, _ in val_ds if val_ds is not None else ():
            local_val += np.asarray(evaluate(x, y))
        total = all_sum(strategy, np.concatenate([sums, local_val]))  # every worker decides alike
        row = [total[0] / total[2], total[1] / total[2]]
        row += [total[3] / total[5], total[4] / total[5]] if total[5] else [np.nan, np.nan]
        monitored = row[2] if total[5] else row[0]
        state.history[epoch].assign(np.array(row, np.float32))
        if monitored < float(state.best.numpy()):
            state.best.assign(monitored)
            state.since_best.assign(0)
            for best, v in zip(state.best_weights, variables):
                best.assign(v.value)
        else:
            state.since_best.assign_add(1)
        state.epoch.assign(epoch + 1)
        _report(epoch, t.fine_tune_epochs, row, time.perf_counter() - t0, writer)
        if manager is not None:
            with signals.critical():  # a stop waits for the save (a partial one is never listed anyway)
                manager.save(checkpoint_number=epoch + 1)
            signals.report("saved", epoch + 1, t.fine_tune_epochs)
    for best, v in zip(state.best_weights, variables):
        v.assign(best)
    if writer is not None:
        writer.close()
    return state.as_dict()


def _bar(steps: int, desc: str):
    """A tqdm bar on terminals; None in logs (one line per epoch is printed instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, unit="step", leave=False)


def _report(epoch: int, epochs: int, row: list[float], seconds: float, writer) -> None:
    values = {k: v for k, v in zip(KEYS, row) if not np.isnan(v)}
    print(f"fine-tune epoch {epoch + 1}/{epochs}: " + " ".join(f"{k} {v:.4f}" for k, v in values.items())
          + f" ({seconds:.1f} s)", flush=True)
    if writer is not None:
        import tensorflow as tf

        with writer.as_default():
            for k, v in values.items():
                tf.summary.scalar(k, v, step=epoch)
        writer.flush()


def without_optimizer(model):
    """A plain copy of a fine-tuned model: its weights, no optimizer state and no distribution
    strategy (a model built under MultiWorkerMirroredStrategy would predict through it)."""
    import keras

    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    return fresh
