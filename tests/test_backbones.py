"""Backbones: the shipped ImageNet weights are the real arrays and really see flowers; other
backbone kinds (keras.applications by name, weights from a file, hub SavedModel) build and train."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import PreprocessSpec
from tests.conftest import run_cli
from tests.paths import SHARED_DATA, SMALL_FLOWERS
from trainer.config import BackboneConfig
from trainer.data import dataset
from trainer.data.feature_cache import FeatureCache
from trainer.fit import features
from trainer.model.backbones import SHIPPED_WEIGHTS, BackboneError, build_backbone

SLIM = SHARED_DATA / "keras_mobilenet_v2" / "slim_npy_1.0_224"


def test_shipped_weights_equal_the_slim_arrays():
    from scripts.build_assets import slim_to_keras_names

    shipped = np.load(SHIPPED_WEIGHTS)
    mapping = slim_to_keras_names()
    assert len(shipped.files) == sum(len(v) for v in mapping.values()) == 260
    for layer, names in mapping.items():
        for i, name in enumerate(names):
            np.testing.assert_array_equal(shipped[f"{layer}/{i}"], np.load(SLIM / f"{name}.npy"), err_msg=name)


def test_shipped_weights_land_in_the_keras_model_and_the_grid_moves_them_by_under_half_a_step():
    shipped = np.load(SLIM / "expanded_conv_16_project_weights.npy")
    exact = build_backbone(BackboneConfig(int8_grid=False))
    np.testing.assert_array_equal(exact.base.get_layer("block_16_project").get_weights()[0], shipped)
    bn = exact.base.get_layer("Conv_1_bn").get_weights()
    np.testing.assert_array_equal(bn[3], np.load(SLIM / "Conv_1_BatchNorm_moving_variance.npy"))

    snapped = build_backbone(BackboneConfig()).base  # the default: on the int8 grid
    gamma, _, _, var = snapped.get_layer("block_16_project_BN").get_weights()
    g = gamma / np.sqrt(var + snapped.get_layer("block_16_project_BN").epsilon)
    moved = (snapped.get_layer("block_16_project").get_weights()[0] - shipped) * g
    step = np.abs(shipped * g).max(axis=(0, 1, 2)) / 127
    assert np.abs(moved).max() > 0 and np.all(np.abs(moved) <= step / 2 * (1 + 1e-4))
    np.testing.assert_array_equal(snapped.get_layer("Conv_1_bn").get_weights()[3], bn[3])  # BatchNorm untouched


def _knn_accuracy(feats: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN (cosine) accuracy."""
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    votes = np.array([np.bincount(y[row], minlength=y.max() + 1).argmax() for row in nearest])
    return float((votes == y).mean())


@pytest.mark.slow
def test_shipped_features_separate_flower_classes_and_random_init_does_not():
    classes, samples = dataset.scan(SMALL_FLOWERS)
    images, ok, _ = dataset.load_images([SMALL_FLOWERS / s.path for s in samples], PreprocessSpec())
    assert ok.all() and len(samples) == 200
    y = np.array([s.label for s in samples])
    import keras

    cache = FeatureCache.default()
    shipped = features.Extractor(build_backbone(BackboneConfig()).feature_model(), cache)(images)
    keras.utils.set_random_seed(0)  # random conv features still see colour: 0.34-0.57 over seeds 0-3
    random = features.Extractor(build_backbone(BackboneConfig(weights="none")).feature_model(), cache)(images)
    shipped_acc, random_acc = _knn_accuracy(shipped, y), _knn_accuracy(random, y)
    assert shipped_acc >= 0.75
    assert random_acc <= 0.6 and shipped_acc - random_acc >= 0.2


def _tiny_dataset(root, n=8, size=48):
    """Two visibly different classes of real photo crops: daisies vs roses, small and fast."""
    for cls in ("daisy", "roses"):
        (root / cls).mkdir(parents=True)
        for f in sorted((SMALL_FLOWERS / cls).glob("*.jpg"))[:n]:
            Image.open(f).convert("RGB").resize((size, size)).save(root / cls / f.name)
    return root


def _make_hub_savedmodel(path, size=32):
    """A stand-in for a TF Hub image feature-vector SavedModel: images [0,1] -> 8-d vector."""
    import tensorflow as tf

    class FeatureVector(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 8), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def __call__(self, images):
            x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME"))
            return {"feature_vector": tf.reduce_mean(x, axis=[1, 2])}

    module = FeatureVector()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


def test_keras_application_by_name_with_weights_from_a_file(tmp_path):
    cfg = BackboneConfig(name="MobileNetV3Small", weights="none", image_size=64)
    first = build_backbone(cfg)
    weights = tmp_path / "small.weights.h5"
    first.base.save_weights(weights)
    second = build_backbone(BackboneConfig(name="MobileNetV3Small", weights=str(weights), image_size=64))
    for a, b in zip(first.base.get_weights(), second.base.get_weights()):
        np.testing.assert_array_equal(a, b)
    third = build_backbone(cfg)  # fresh random init differs: proves the file was really loaded
    assert any(not np.array_equal(a, b) for a, b in zip(first.base.get_weights(), third.base.get_weights()))


def test_imagenet_weights_missing_from_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    with pytest.raises(BackboneError, match="Keras cache"):
        build_backbone(BackboneConfig(name="MobileNetV3Small", weights="imagenet", image_size=64))


def test_unknown_backbone_and_bad_weights_path_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone(BackboneConfig(name="NotANet"))
    with pytest.raises(BackboneError, match="not found"):
        build_backbone(BackboneConfig(weights="/nonexistent/weights.h5"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keras_app", "hub"])
def test_other_backbones_train_end_to_end(tmp_path, kind):
    ds = _tiny_dataset(tmp_path / "ds")
    if kind == "hub":
        backbone = ["--backbone", f"hub:{_make_hub_savedmodel(tmp_path / 'hub_model')}", "--image-size", "32"]
    else:
        backbone = ["--backbone", "MobileNetV3Small", "--weights", "none", "--image-size", "48"]
    out = tmp_path / "run"
    result = run_cli("trainer", "train", "--data", str(ds), "--out", str(out), "--epochs", "3",
                     "--min-per-class", "4", *backbone, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.keras").exists() and (out / "report.json").exists()
