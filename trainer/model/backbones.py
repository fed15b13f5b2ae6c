"""Frozen feature extractors: the shipped MobileNetV2, any keras.applications model, or a
TF Hub feature vector (a tfhub.dev / Kaggle handle, or a SavedModel folder). Every backbone
takes RGB 0..255 (its own normalization is a layer inside), so the trained model and its
TFLite files share one input contract.

Hub models load through trainer.model.hub (tensorflow_hub's cache layout, no tensorflow-hub package)
and trainer.hub_layer (a Keras 3 layer that carries the SavedModel inside model.keras):
`hub.KerasLayer` is a tf-keras (Keras 2) layer that a Keras 3 model refuses. Inference only,
so hub backbones train the head but cannot be fine-tuned.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import BackboneConfig
from trainer.model.int8_grid import snap_to_int8_grid

SHIPPED_WEIGHTS = Path(__file__).parents[1] / "assets" / "mobilenet_v2_1.0_224_no_top.npz"


class BackboneError(ValueError):
    """A backbone that cannot be built as asked; the CLI prints it as one line (exit 2)."""


# keras.applications name -> how it wants its 0..255 RGB input normalized.
# "tf": [-1, 1]; "torch": /255 then ImageNet mean/std; "caffe": BGR minus ImageNet means;
# "raw": the model normalizes inside (include_preprocessing / built-in rescaling).
APPLICATIONS = {
    "MobileNet": "tf", "MobileNetV2": "tf", "MobileNetV3Small": "raw", "MobileNetV3Large": "raw",
    "EfficientNetB0": "raw", "EfficientNetB1": "raw", "EfficientNetB2": "raw", "EfficientNetB3": "raw",
    "EfficientNetV2B0": "raw", "EfficientNetV2B1": "raw", "EfficientNetV2S": "raw",
    "ResNet50": "caffe", "ResNet101": "caffe", "ResNet50V2": "tf", "ResNet101V2": "tf",
    "InceptionV3": "tf", "Xception": "tf", "DenseNet121": "torch", "DenseNet169": "torch",
    "VGG16": "caffe", "VGG19": "caffe", "NASNetMobile": "tf", "ConvNeXtTiny": "raw",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass
class Backbone:
    """A frozen base and what the rest of the trainer needs to know about it."""

    base: object  # keras.Model: normalized image -> feature map (or vector for hub models)
    normalization: str  # key of APPLICATIONS' values, or "unit" for hub ([0, 1])
    image_size: int
    fine_tunable: bool

    def feature_model(self):
        """RGB 0..255 -> pooled feature vector: what stage 1 caches."""
        import keras

        inputs = keras.Input((self.image_size, self.image_size, 3), name="image")
        x = self.features(inputs)
        return keras.Model(inputs, x, name="feature_extractor")

    def features(self, inputs, training=False):
        import keras

        x = normalization_layers(self.normalization, inputs)
        x = self.base(x, training=training)
        if isinstance(x, dict):  # a SavedModel signature returns a dict of outputs
            x = next(iter(x.values()))
        if len(x.shape) == 4:
            x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        return x


def normalization_layers(kind: str, x):
    """Apply the backbone's input normalization to an RGB 0..255 tensor, as plain Keras layers
    (serializable, and they convert to TFLite ops, so every exported file takes 0..255)."""
    import keras

    if kind == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)
    if kind == "unit":
        return keras.layers.Rescaling(1 / 255.0, name="to_0_1")(x)
    if kind == "torch":
        x = keras.layers.Rescaling(1 / 255.0, name="to_0_1")(x)
        return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD), name="imagenet_norm")(x)
    if kind == "caffe":  # RGB -> BGR and mean subtraction as one fixed 1x1 convolution
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_ch, in_ch in enumerate((2, 1, 0)):
            kernel[0, 0, in_ch, out_ch] = 1.0
        layer = keras.layers.Conv2D(3, 1, name="caffe_bgr_mean", trainable=False)
        y = layer(x)
        layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
        return y
    return x


def _check_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneError(f"weights file not found: {path}")
    return p


def load_npz_weights(model, path: Path) -> None:
    """Assign arrays saved as "<layer name>/<weight index>" (our shipped format) by layer name."""
    arrays = np.load(path)
    layers = {layer.name: layer for layer in model.layers}
    by_layer: dict[str, dict[int, np.ndarray]] = {}
    for key in arrays.files:
        name, index = key.rsplit("/", 1)
        by_layer.setdefault(name, {})[int(index)] = arrays[key]
    missing = [n for n in by_layer if n not in layers]
    if missing:
        raise BackboneError(f"{path.name} does not fit this model: no layers named {missing[:3]}")
    for name, ws in by_layer.items():
        layer = layers[name]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        given = [ws[i] for i in range(len(ws))]
        if [tuple(g.shape) for g in given] != expected:
            raise BackboneError(f"{path.name}: shapes for layer {name} do not match the model")
        layer.set_weights(given)


def build_mobilenet_v2(cfg: BackboneConfig) -> Backbone:

    weights = cfg.weights
    if weights in ("default", "shipped") and cfg.alpha != 1.0:
        raise BackboneError(f"shipped weights are for alpha 1.0, got --alpha {cfg.alpha}; pass --weights none or PATH")
    base = _application("MobileNetV2", cfg, keras_weights="imagenet" if weights == "imagenet" else None)
    if weights in ("default", "shipped"):
        load_npz_weights(base, SHIPPED_WEIGHTS)
    elif weights not in ("imagenet", "none"):
        _load_weights_file(base, _check_file(weights))
    return Backbone(base, "tf", cfg.image_size, fine_tunable=True)


def _application(name: str, cfg: BackboneConfig, keras_weights):
    import keras

    ctor = getattr(keras.applications, name)
    kwargs = {"include_top": False, "weights": keras_weights, "input_shape": (cfg.image_size, cfg.image_size, 3)}
    if name in ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large"):
        kwargs["alpha"] = cfg.alpha
    try:
        return ctor(**kwargs)
    except Exception as exc:
        if keras_weights == "imagenet":
            cache = Path(keras.config.keras_home() if hasattr(keras.config, "keras_home") else "~/.keras").expanduser() / "models"
            raise BackboneError(
                f"ImageNet weights for {name} are not in the Keras cache ({cache}) and cannot be downloaded here "
                f"({type(exc).__name__}); copy the file Keras expects into {cache}, or pass --weights PATH "
                "(a .weights.h5 saved from this model) or --weights none"
            ) from None
        raise BackboneError(f"cannot build {name} at {cfg.image_size}px: {exc}".splitlines()[0]) from None


def _load_weights_file(model, path: Path) -> None:
    if path.suffix == ".npz":
        return load_npz_weights(model, path)
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise BackboneError(f"cannot load weights {path}: {exc}".splitlines()[0]) from None


def build_application(cfg: BackboneConfig) -> Backbone:
    name = cfg.name
    if name not in APPLICATIONS:
        close = [n for n in APPLICATIONS if n.lower() == name.lower()]
        if close:
            name = close[0]
        else:
            raise BackboneError(f"unknown backbone {cfg.name!r}; use mobilenet_v2, hub:PATH, a TF Hub / Kaggle model URL or one of {sorted(APPLICATIONS)}")
    weights = "imagenet" if cfg.weights in ("default", "imagenet") else cfg.weights
    base = _application(name, cfg, keras_weights="imagenet" if weights == "imagenet" else None)
    if weights not in ("imagenet", "none"):
        _load_weights_file(base, _check_file(weights))
    return Backbone(base, APPLICATIONS[name], cfg.image_size, fine_tunable=True)


def build_hub(cfg: BackboneConfig) -> Backbone:
    """hub:PATH (a SavedModel folder) or a TF Hub / Kaggle handle (resolved by trainer.model.hub)."""
    import keras

    from trainer import hub_layer
    from trainer.model import hub

    name = cfg.name[len("hub:"):] if cfg.name.startswith("hub:") else cfg.name
    if hub.is_handle(name):
        try:
            path = hub.resolve(name)
        except hub.HubError as exc:
            raise BackboneError(str(exc)) from None
    else:
        path = Path(name).expanduser().resolve()
        if not (path / "saved_model.pb").exists():
            raise BackboneError(f"hub backbone must be a SavedModel folder (with saved_model.pb): {path}")
    try:
        layer = hub_layer.from_folder(name, path, cfg.image_size)
    except Exception as exc:
        raise BackboneError(f"cannot load SavedModel {path}: {exc}".splitlines()[0]) from None
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3))
    return Backbone(keras.Model(inputs, layer(inputs), name="hub_base"), "unit", cfg.image_size, fine_tunable=False)


def is_hub(name: str) -> bool:
    """A SavedModel backbone (hub:PATH or a TF Hub / Kaggle URL): weights not Keras layers."""
    return name.startswith(("hub:", "https://", "http://"))


def resolved(cfg: BackboneConfig) -> BackboneConfig:
    """The configuration as it will be built: hub backbones cannot be put on the int8 grid."""
    return dataclasses.replace(cfg, int8_grid=False) if is_hub(cfg.name) else cfg


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Validated factory: arguments are checked first, errors echo what was received. Hub
    SavedModels keep their weights as they are (int8_grid applies to Keras layers)."""
    if not 32 <= cfg.image_size <= 1024:
        raise BackboneError(f"--image-size must be between 32 and 1024, got {cfg.image_size}")
    if is_hub(cfg.name):
        return build_hub(cfg)
    backbone = build_mobilenet_v2(cfg) if cfg.name.lower() in ("mobilenet_v2", "mobilenetv2") else build_application(cfg)
    if cfg.int8_grid:
        snap_to_int8_grid(backbone.base)
    return backbone


def weights_digest(model) -> str:
    """Hash of a model's weights and input shape: the key of the cached TFLite feature extractor."""
    h = hashlib.sha256(repr(model.inputs[0].shape).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    for layer in model._flatten_layers():  # hub SavedModels: their variables are not Keras weights
        h.update(getattr(layer, "fingerprint", "").encode())
    return h.hexdigest()[:16]
