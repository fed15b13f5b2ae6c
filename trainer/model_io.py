"""Load a saved model.keras: the one place that knows which custom layers a run may contain.

A run trained on a TF Hub backbone holds a ``trainer.hub_layer.HubFeatureVector``; Keras finds
it only once that module is imported, so every loader goes through :func:`load_keras`.
"""

from __future__ import annotations

from pathlib import Path


def load_keras(path: str | Path):
    import keras

    from trainer import hub_layer  # noqa: F401  registers HubFeatureVector for deserialization

    return keras.models.load_model(path)
