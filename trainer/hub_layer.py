"""HubFeatureVector: a TF2 SavedModel feature vector as a Keras 3 layer that travels inside
model.keras, so a run trained on a hub backbone needs neither the hub cache nor the folder.

Why not keras.layers.TFSMLayer: it stores the SavedModel *path* in model.keras (the run breaks
when the cache is cleaned) and calls a named signature, while real TF2 hub feature vectors
expose only ``__call__``. This layer calls ``__call__`` (``training=False`` when accepted, like
hub.KerasLayer), falls back to the ``serving_default`` signature, and copies the SavedModel
folder into the .keras archive's assets (Keras' save_assets / load_assets hooks).

``keras.models.load_model`` finds the class once this module is imported:
``import trainer.hub_layer``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from pathlib import Path

import keras
import tensorflow as tf

ASSET_DIR = "saved_model"


def fingerprint(folder: Path) -> str:
    """sha256 of a SavedModel folder (file names and bytes): tells two hub models apart where
    Keras weights cannot (the hub variables are not Keras weights)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@keras.saving.register_keras_serializable(package="edge_transfer")
class HubFeatureVector(keras.layers.Layer):
    """images in [0, 1] (N, H, W, 3) float32 -> (N, output_dim) features, frozen."""

    def __init__(self, handle: str, output_dim: int, source: str | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.handle = handle
        self.output_dim = int(output_dim)
        self._source = None
        self._fn = None
        self.fingerprint = ""
        if source is not None:
            self._load(Path(source))
        self.built = True

    def _load(self, folder: Path) -> None:
        module = tf.saved_model.load(str(folder))
        self._holder = [module]  # keeps the restored variables alive; a list Keras does not track
        self._source, self._fn = folder, _callable(module)
        self.fingerprint = fingerprint(folder)

    def call(self, images):
        if self._fn is None:
            raise ValueError(f"HubFeatureVector({self.handle}) has no SavedModel: load model.keras with "
                             "keras.models.load_model after `import trainer.hub_layer`")
        out = self._fn(images)
        if isinstance(out, dict):
            out = out["default"] if "default" in out else next(iter(out.values()))
        return out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "output_dim": self.output_dim}

    def save_assets(self, dir_path):
        if self._source is None:
            raise ValueError(f"HubFeatureVector({self.handle}) has no SavedModel to save")
        shutil.copytree(self._source, Path(dir_path) / ASSET_DIR, dirs_exist_ok=True)

    def load_assets(self, dir_path):
        # Keras deletes its extraction folder after loading: keep a private copy for re-saving
        keep = Path(tempfile.mkdtemp(prefix="hub_feature_vector."))
        weakref.finalize(self, shutil.rmtree, keep, True)
        shutil.copytree(Path(dir_path) / ASSET_DIR, keep / ASSET_DIR)
        self._load(keep / ASSET_DIR)


def _callable(module):
    """The feature function of a restored SavedModel: ``__call__`` (TF2 hub format), else the
    ``serving_default`` signature (called by its single input name, returns a dict)."""
    if callable(module):
        def call(x):
            try:
                return module(x, training=False)
            except (TypeError, ValueError):  # no concrete function with a training argument
                return module(x)
        return call
    signature = module.signatures.get("serving_default")
    if signature is None:
        raise ValueError("the SavedModel has neither __call__ nor a serving_default signature")
    (name,) = signature.structured_input_signature[1].keys()
    return lambda x: signature(**{name: x})


def from_folder(handle: str, folder: Path, image_size: int, name: str = "hub_backbone") -> HubFeatureVector:
    """The layer for a SavedModel folder; its feature length comes from one call on a black
    image (a SavedModel does not declare it)."""
    layer = HubFeatureVector(handle, 0, source=str(folder), name=name)
    out = layer.call(tf.zeros((1, image_size, image_size, 3), tf.float32))
    if len(out.shape) != 2:
        raise ValueError(f"expected a (N, D) feature vector, the SavedModel returns shape {tuple(out.shape)}")
    layer.output_dim = int(out.shape[-1])
    return layer

