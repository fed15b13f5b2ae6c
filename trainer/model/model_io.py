"""Load a saved model.keras (the one place that knows which custom layers a run may contain) and
run it on photos.

A run trained on a TF Hub backbone holds a ``trainer.hub_layer.HubFeatureVector``; Keras finds
it only once that module is imported, so every loader goes through :func:`load_keras`. (The
none-of-these class is made of Keras' own layers: it needs nothing.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_keras(path: str | Path):
    import keras

    from trainer import hub_layer  # noqa: F401  registers HubFeatureVector for deserialization

    return keras.models.load_model(path)


def keras_probabilities(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """model.keras softmax for uint8 images, fed as float32 0..255 (the training contract)."""
    if not len(images):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch, verbose=0))


def photo_probabilities(model, photos, progress: str | None = None) -> np.ndarray:
    """keras_probabilities over a trainer.data.photos.Photos, decoded in bounded chunks (readable photos only)."""
    parts = [keras_probabilities(model, images) for images, _ in photos.chunks(progress=progress)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def embedding_of(model):
    """The pooled embedding tensor the classifier's head reads (before any dropout)."""
    names = [layer.name for layer in model.layers]
    if "none_of_these_unit" in names:
        return model.get_layer("none_of_these_unit").input
    if "head_dropout" in names:
        return model.get_layer("head_dropout").input
    return model.get_layer("probabilities").input


def with_embedding(model):
    """The classifier with two outputs: the pooled embedding its head reads, and its own output."""
    import keras

    return keras.Model(model.input, [embedding_of(model), model.output])


def photo_outputs(model, photos, progress: str | None = None) -> list[np.ndarray]:
    """Every output of a multi-output ``model`` over Photos, in bounded chunks (readable photos only)."""
    parts = [[np.asarray(o) for o in model.predict(images.astype(np.float32), batch_size=32, verbose=0)]
             for images, _ in photos.chunks(progress=progress)]
    if not parts:
        return [np.zeros((0, int(shape[-1])), np.float32) for shape in model.output_shape]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
