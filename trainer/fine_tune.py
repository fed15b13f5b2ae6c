"""Stage 2 (optional): fine-tune the top of the base, BatchNorm kept in inference mode."""

from __future__ import annotations

import sys

import numpy as np

from trainer import metrics
from trainer.backbones import Backbone, BackboneError
from trainer.config import RunConfig


def one_hot(y, n):
    return np.eye(n, dtype=np.float32)[y]


def loss_for(cfg):
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)


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
    model.compile(keras.optimizers.Adam(t.fine_tune_learning_rate), loss_for(cfg), metrics=["accuracy"])
    augment = _augmenter(cfg.seed)
    train_ds = (tf.data.Dataset.from_tensor_slices((images, one_hot(y_train, n_classes)))
                .shuffle(len(images), seed=cfg.seed)
                .batch(t.fine_tune_batch_size)
                .map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))
    has_val = len(val_images) > 0
    val_ds = (tf.data.Dataset.from_tensor_slices((val_images.astype(np.float32), one_hot(y_val, n_classes)))
              .batch(t.fine_tune_batch_size)) if has_val else None
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if has_val else "loss", patience=t.fine_tune_patience,
                                         restore_best_weights=True)
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
