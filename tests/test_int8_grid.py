"""The int8 grid: snapped kernels, BatchNorm folded, are stored by TFLite's int8 exactly."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.config import RunConfig
from trainer.model.int8_grid import LEVELS, snap_kernel


def _grid_residual(folded: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    scale = np.abs(folded).max(axis=axes, keepdims=True) / LEVELS
    return np.abs(folded / scale - np.round(folded / scale))


@pytest.mark.parametrize("depthwise", [False, True])
def test_snapped_kernel_times_the_folded_scale_lies_on_the_per_channel_grid(depthwise):
    rng = np.random.default_rng(0)
    shape, axes = ((3, 3, 4, 2), (0, 1)) if depthwise else ((3, 3, 4, 6), (0, 1, 2))
    kernel = rng.normal(size=shape).astype(np.float32)
    folded = rng.uniform(0.1, 3.0, size=8 if depthwise else 6)
    folded[1] = 0.0  # a dead BatchNorm channel: left as it is
    g = folded.reshape((1, 1, 4, 2) if depthwise else (1, 1, 1, 6))
    assert _grid_residual(kernel * g + (g == 0), axes).max() > 0.3  # a random kernel is off the grid

    snapped = snap_kernel(kernel, folded, depthwise)
    on = snapped * g + (g == 0)
    assert _grid_residual(on, axes).max() < 1e-4
    dead = (..., 0, 1) if depthwise else (..., 1)  # output channel 1 (depthwise: input 0, multiplier 1)
    np.testing.assert_array_equal(snapped[dead], kernel[dead])
    np.testing.assert_allclose(snap_kernel(snapped, folded, depthwise), snapped, rtol=1e-6)  # idempotent
    step = np.abs(kernel * g).max(axis=axes, keepdims=True) / LEVELS
    assert np.all(np.abs(snapped * g - kernel * g) <= step / 2 + 1e-6)  # a rounding, nothing more


def test_runs_from_before_the_grid_repeat_off_it():
    old = {"data": {"dir": "photos"}, "backbone": {"name": "mobilenet_v2", "weights": "default",
                                                   "image_size": 224, "alpha": 1.0},
           "train": {}, "seed": 1}
    assert RunConfig.from_dict(old).backbone.int8_grid is False
    assert RunConfig.from_dict({**old, "backbone": {**old["backbone"], "int8_grid": True}}).backbone.int8_grid


def tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    for bn in (model.get_layer("conv_bn"), model.get_layer("dw_bn")):
        n = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.2, 2.0, n), rng.normal(size=n), rng.normal(size=n), rng.uniform(0.05, 4.0, n)])
    return model


def _folded_kernels(model) -> dict[tuple[int, ...], np.ndarray]:
    """Keras kernels with their BatchNorm folded, in TFLite's layout, keyed by that shape."""
    out = {}
    for conv_name, bn_name in (("conv", "conv_bn"), ("dw", "dw_bn")):
        conv, bn = model.get_layer(conv_name), model.get_layer(bn_name)
        gamma, _, _, var = (np.asarray(w, np.float64) for w in bn.get_weights())
        g = gamma / np.sqrt(var + bn.epsilon)
        k = np.asarray(conv.kernel, np.float64)
        if conv_name == "dw":  # (kh, kw, C, 1) -> (1, kh, kw, C)
            folded = (k * g.reshape(1, 1, -1, 1))[..., 0][None]
        else:  # (kh, kw, in, out) -> (out, kh, kw, in)
            folded = (k * g).transpose(3, 0, 1, 2)
        out[folded.shape] = folded
    return out


def _stored_kernels(model_bytes: bytes) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
    """int8 4-D weight tensors of a TFLite file, dequantized, with their per-channel scales."""
    from edge.runtime import make_interpreter

    it = make_interpreter(model_bytes).interpreter
    out = {}
    for t in it.get_tensor_details():
        scales = t["quantization_parameters"]["scales"]
        if np.dtype(t["dtype"]) == np.int8 and len(t["shape"]) == 4 and len(scales) > 1:
            q = it.get_tensor(t["index"]).astype(np.float64)
            axis = t["quantization_parameters"]["quantized_dimension"]
            shape = [1] * 4
            shape[axis] = -1
            out[tuple(t["shape"])] = (q * scales.reshape(shape), scales.reshape(shape))
    return out


@pytest.mark.parametrize("snapped", [True, False])
def test_int8_stores_snapped_weights_exactly_and_others_rounded(snapped):
    from trainer.export.calibration import representative_dataset
    from trainer.export.tflite import calibrate, quantize
    from trainer.model.int8_grid import snap_to_int8_grid

    model = tiny_model(3)
    if snapped:
        assert snap_to_int8_grid(model) == 2
    images = np.random.default_rng(1).uniform(0, 255, (16, 12, 12, 3)).astype(np.uint8)
    int8 = quantize(calibrate(model, representative_dataset(images)), "float32", "float32",
                    ("FULLY_CONNECTED", "SOFTMAX"))
    stored, folded = _stored_kernels(int8), _folded_kernels(model)
    assert set(stored) == set(folded)
    for shape, (weights, scale) in stored.items():
        error = np.abs(weights - folded[shape]) / scale  # in grid steps
        if snapped:
            assert error.max() < 1e-3, shape
        else:
            assert error.mean() > 0.1, shape  # unsnapped: rounded, a quarter step on average
