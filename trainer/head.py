"""Stage 1: the classification head, a softmax regression on cached backbone features.

Zero-initialised and full-batch by default: the problem is convex, so the fit is deterministic;
the L2 strength is chosen on validation log-loss. :func:`assemble` puts the head on the base.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer import metrics
from trainer.backbones import Backbone
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


def one_hot(y: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[y]


def loss_for(cfg: RunConfig):
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)


def _fit_head(cfg: RunConfig, l2: float, x_train, y_train, validation, n_classes: int):
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
    loss_fn = loss_for(cfg)
    class_weight = metrics.balanced_class_weights(y_train, n_classes) if t.class_weights else None
    sample_w = np.array([class_weight[int(c)] for c in y_train], np.float32) if class_weight else np.ones(len(y_train), np.float32)
    x_all, y_all, w_all = tf.constant(x_train), tf.constant(one_hot(y_train, n_classes)), tf.constant(sample_w)
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

    validation = (x_val, one_hot(y_val, n_classes)) if len(x_val) else None
    grid = cfg.train.l2_grid if validation else (sorted(cfg.train.l2_grid)[len(cfg.train.l2_grid) // 2],)
    best = None
    with tqdm(grid, desc="head (L2 grid)", unit="fit") as bar:  # counts fits: epochs end early
        for l2 in bar:
            head, history = _fit_head(cfg, l2, x_train, y_train, validation, n_classes)
            score = _nll(head, x_val, y_val) if validation else 0.0
            history["l2"] = [l2]
            bar.set_postfix(l2=l2, epochs=len(history["loss"]), val_nll=round(score, 4))
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
