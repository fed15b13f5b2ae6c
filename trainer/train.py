"""Training: stage 1 fits the head on cached backbone features, stage 2 optionally fine-tunes
the top of the base (BatchNorm kept in inference mode). Writes the run directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec
from trainer import atomic, data, features, metrics, plots, report_html
from trainer.backbones import Backbone, BackboneError, build_backbone
from trainer.config import RunConfig


def write_tensorboard(logdir: Path, history: dict[str, list[float]]) -> None:
    """Head curves as TensorBoard scalars (the head trains in its own loop, not via fit)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for key, values in history.items():
            for epoch, value in enumerate(values):
                tf.summary.scalar(key, value, step=epoch)
    writer.close()


def _one_hot(y: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[y]


def _loss(cfg: RunConfig):
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)


def _fit_head(cfg: RunConfig, l2: float, x_train, y_train, validation, n_classes: int, bar=None):
    """One head fit: a compiled full-batch (or mini-batch) loop with early stopping on val loss.

    A hand-written loop instead of `fit`: an epoch here is a single step of a few ms, and
    Keras' per-epoch overhead would otherwise be 10x the work."""
    import keras
    import tensorflow as tf

    t = cfg.train
    head = keras.Sequential([
        keras.Input((x_train.shape[1],)),
        keras.layers.Dropout(t.dropout, seed=cfg.seed),
        keras.layers.Dense(n_classes, activation="softmax", kernel_initializer="zeros",
                           kernel_regularizer=keras.regularizers.L2(l2)),
    ], name="head")
    optimizer = keras.optimizers.Adam(t.learning_rate)
    loss_fn = _loss(cfg)
    class_weight = metrics.balanced_class_weights(y_train, n_classes) if t.class_weights else None
    sample_w = np.array([class_weight[int(c)] for c in y_train], np.float32) if class_weight else np.ones(len(y_train), np.float32)
    x_all, y_all, w_all = tf.constant(x_train), tf.constant(_one_hot(y_train, n_classes)), tf.constant(sample_w)
    batch = t.batch_size or len(x_train)

    @tf.function
    def step(x, y, w):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, head(x, training=True), sample_weight=w) + tf.add_n(head.losses)
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    @tf.function
    def evaluate(x, y):
        p = head(x, training=False)
        return loss_fn(y, p), tf.reduce_mean(tf.cast(tf.argmax(p, 1) == tf.argmax(y, 1), tf.float32))

    rng = np.random.default_rng(cfg.seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_weights, since_best = np.inf, None, 0
    for _ in range(t.epochs):
        order = rng.permutation(len(x_train)) if batch < len(x_train) else None
        for start in range(0, len(x_train), batch):
            if order is None:
                step(x_all, y_all, w_all)
            else:
                rows = order[start:start + batch]
                step(tf.gather(x_all, rows), tf.gather(y_all, rows), tf.gather(w_all, rows))
        train_loss, train_acc = evaluate(x_all, y_all)
        history["loss"].append(float(train_loss))
        history["accuracy"].append(float(train_acc))
        monitored = float(train_loss)
        if validation is not None:
            val_loss, val_acc = evaluate(tf.constant(validation[0]), tf.constant(validation[1]))
            history["val_loss"].append(float(val_loss))
            history["val_accuracy"].append(float(val_acc))
            monitored = float(val_loss)
        if bar is not None:
            bar.update(1)
        if monitored < best - 1e-6:
            best, best_weights, since_best = monitored, head.get_weights(), 0
        else:
            since_best += 1
            if since_best > t.patience:
                break
    head.set_weights(best_weights)
    return head, {k: v for k, v in history.items() if v}


def _nll(head, x, y) -> float:
    p = np.asarray(head(x, training=False))
    return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))


def train_head(cfg: RunConfig, x_train, y_train, x_val, y_val, n_classes: int):
    """Softmax regression (Dropout + Dense) on pooled features.

    Zero-initialised, full-batch by default: the problem is convex, so training is deterministic
    and converges in a second or two; early stopping on validation loss ends each fit. The L2
    strength is picked from `l2_grid` by validation log-loss (the one knob that matters here;
    on tf_flowers its choice moves test accuracy more than seeds, epochs or dropout did).
    Returns the best head and its history.
    """
    from tqdm.auto import tqdm

    validation = (x_val, _one_hot(y_val, n_classes)) if len(x_val) else None
    grid = cfg.train.l2_grid if validation else (sorted(cfg.train.l2_grid)[len(cfg.train.l2_grid) // 2],)
    best = None
    with tqdm(total=len(grid) * cfg.train.epochs, desc="head", unit="epoch") as bar:
        for l2 in grid:
            head, history = _fit_head(cfg, l2, x_train, y_train, validation, n_classes, bar)
            score = _nll(head, x_val, y_val) if validation else 0.0
            history["l2"] = [l2]
            if best is None or score < best[0]:
                best = (score, head, history)
    return best[1], best[2]


def assemble(backbone: Backbone, head, n_classes: int, dropout: float):
    """One model: RGB 0..255 image -> normalization -> base (inference mode) -> GAP -> head."""
    import keras

    inputs = keras.Input((backbone.image_size, backbone.image_size, 3), name="image")
    x = backbone.features(inputs, training=False)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="edge_transfer_classifier")
    model.get_layer("probabilities").set_weights(head.layers[-1].get_weights())
    return model


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


def _augmenter(seed: int):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom((-0.15, 0.0), seed=seed + 1, fill_mode="reflect"),
        keras.layers.RandomTranslation(0.05, 0.05, seed=seed + 2, fill_mode="reflect"),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
    ], name="augment")


def fine_tune(cfg: RunConfig, backbone: Backbone, model, images, y_train, val_images, y_val, n_classes, callbacks=()):
    """Stage 2: low learning rate, augmentation, early stopping, best weights restored."""
    import keras
    import tensorflow as tf

    t = cfg.train
    if not backbone.fine_tunable:
        raise BackboneError("this backbone (hub:PATH SavedModel) is inference-only: train without --fine-tune-layers")
    unfreeze_top(backbone.base, t.fine_tune_layers, t.fine_tune_from)
    model.compile(keras.optimizers.Adam(t.fine_tune_learning_rate), _loss(cfg), metrics=["accuracy"])
    augment = _augmenter(cfg.seed)
    train_ds = (tf.data.Dataset.from_tensor_slices((images, _one_hot(y_train, n_classes)))
                .shuffle(len(images), seed=cfg.seed)
                .batch(t.fine_tune_batch_size)
                .map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))
    has_val = len(val_images) > 0
    val_ds = (tf.data.Dataset.from_tensor_slices((val_images.astype(np.float32), _one_hot(y_val, n_classes)))
              .batch(t.fine_tune_batch_size)) if has_val else None
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if has_val else "loss", patience=t.fine_tune_patience,
                                         restore_best_weights=True)
    import sys

    history = model.fit(train_ds, validation_data=val_ds, epochs=t.fine_tune_epochs,
                        verbose=1 if sys.stderr.isatty() else 2,  # a bar on terminals, a line per epoch in logs
                        class_weight=metrics.balanced_class_weights(y_train, n_classes) if t.class_weights else None,
                        callbacks=[stop, *callbacks])
    backbone.base.trainable = False
    return history.history


def without_optimizer(model):
    """A copy of a compiled model with its weights but no optimizer state (nothing to warn about
    when model.keras is loaded for inference)."""
    import keras

    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    return fresh


def predict(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return model.predict(images.astype(np.float32), batch_size=batch, verbose=0) if len(images) else np.zeros((0, model.output_shape[-1]))


def run(cfg: RunConfig, out: Path) -> dict:
    """The whole `train` command; returns the report (also written to out/report.json)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    spec = PreprocessSpec(size=(cfg.backbone.image_size, cfg.backbone.image_size))
    root = Path(cfg.data.dir).resolve()

    # data: scan, decode once (bad files skipped and reported), split; before TensorFlow loads
    classes, candidates = data.scan(root)
    t0 = time.perf_counter()
    images, ok, errors = data.load_images([root / s.path for s in candidates], spec, progress="decode")
    timings["decode_s"] = time.perf_counter() - t0
    skipped = [{"path": s.path, "reason": errors[str(root / s.path)]} for s, good in zip(candidates, ok) if not good]
    samples = [s for s, good in zip(candidates, ok) if good]
    images = images[ok]
    row = {s.path: i for i, s in enumerate(samples)}
    data.check_counts(classes, samples, cfg.data.min_per_class)
    train, val, test = data.stratified_split(samples, len(classes), cfg.data.val_split, cfg.data.test_split, cfg.seed)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    splits = data.Splits(str(root), classes, train, val, test, skipped)
    idx = {name: np.array([row[s.path] for s in part], np.int64) for name, part in
           (("train", train), ("val", val), ("test", test))}
    ys = {name: splits.targets(name) for name in idx}
    atomic.write_text(out / "labels.txt", "\n".join(classes) + "\n")
    atomic.write_json(out / "splits.json", splits.to_dict())
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(root)))
    atomic.write_json(out / "config.json", {**resolved.to_dict(), "preprocess": spec.to_dict(),
                                            "model_input": "RGB uint8 values as float32, 0..255"})

    # stage 1: features once, head on the cache
    backbone = build_backbone(cfg.backbone)
    feature_model = backbone.feature_model()
    feats = features.extract(feature_model, images, cfg.train.threads or None, timings=timings)
    x_train, y_train = feats[idx["train"]], ys["train"]
    if cfg.train.flip_features:
        flipped = features.extract(feature_model, np.ascontiguousarray(images[idx["train"]][:, :, ::-1]),
                                   cfg.train.threads or None, desc="features (mirrored)", timings=timings)
        x_train, y_train = np.concatenate([x_train, flipped]), np.concatenate([y_train, y_train])
    callbacks = []
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard" / "fine_tune")))
    t0 = time.perf_counter()
    head, head_history = train_head(cfg, x_train, y_train, feats[idx["val"]], ys["val"], len(classes))
    timings["head_s"] = time.perf_counter() - t0
    history = {"head": head_history}
    if cfg.train.tensorboard:
        write_tensorboard(out / "tensorboard" / "head", head_history)
    model = assemble(backbone, head, len(classes), cfg.train.dropout)
    fine_tuned = bool(cfg.train.fine_tune_layers or cfg.train.fine_tune_from)
    if fine_tuned:
        t0 = time.perf_counter()
        history["fine_tune"] = fine_tune(cfg, backbone, model, images[idx["train"]], ys["train"],
                                         images[idx["val"]], ys["val"], len(classes), callbacks)
        model = without_optimizer(model)
        timings["fine_tune_s"] = time.perf_counter() - t0

    # evaluation: head-only models score on the cached features (same network, float32 TFLite base)
    t0 = time.perf_counter()
    probs = {}
    for name in ("train", "val", "test"):
        probs[name] = predict(model, images[idx[name]]) if fine_tuned else head.predict(feats[idx[name]], verbose=0)
    timings["evaluate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with atomic.atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    timings["save_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    report = {
        "labels": classes,
        "counts": {name: len(splits.part(name)) for name in ("train", "val", "test")},
        "splits": {name: metrics.classification_report(ys[name], probs[name], classes) for name in probs},
        "skipped": skipped,
        "stages": {name: {"epochs": len(h.get("loss", [])),
                          "best_val_loss": round(float(min(h["val_loss"])), 4) if h.get("val_loss") else None}
                   for name, h in history.items()},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "history": {stage: {k: [round(float(v), 5) for v in vs] for k, vs in h.items()} for stage, h in history.items()},
    }
    eval_split = "test" if len(idx["test"]) else "val"
    report["mistakes"] = metrics.mistakes(eval_split, [s.path for s in splits.part(eval_split)], ys[eval_split],
                                          probs[eval_split], classes)
    atomic.write_json(out / "report.json", report)
    plots.training_curves(history, out / "training_curves.png")
    plots.confusion(np.array(report["splits"][eval_split]["confusion_matrix"]), classes, out / "confusion_matrix.png",
                    title=f"{eval_split} confusion matrix")
    plots.prediction_grid(images[idx[eval_split]], ys[eval_split], probs[eval_split], classes, out / "predictions.png")
    report_html.write(out)
    return report
