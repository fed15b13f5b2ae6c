"""Put a backbone's convolution weights on the grid TFLite's int8 rounds them to, before the head
is trained, so the Keras model and its int8 file share every weight and int8 rounds only
activations.

TFLite folds each BatchNormalization into the convolution before it (w * gamma / sqrt(var + eps),
per output channel) and stores the folded kernel as int8, symmetric per output channel
(scale = max |w| / 127). On tf_flowers that weight rounding alone, not the 8-bit activations,
is what moved int8 away from Keras: the rounded network agrees with the original on 96.6 % of the
test photos, and int8 with 16-bit activations (16x8) did no better than plain int8 (96.4 %). A
model whose folded weights already lie on the grid converts them exactly: its int8 file needs no
float layers (logit error 0.148 -> 0.021 with the head alone in float; benchmarks/bench_int8.py),
and with trainer.export.ranges it agrees on 99.3 %. The head trained on the snapped network scores
within the interval of the original's (README).
"""

from __future__ import annotations

import numpy as np

LEVELS = 127  # int8 weights are symmetric, narrow range: -127..127 times a per-channel scale


def _folded_scale(conv, consumer) -> np.ndarray:
    """Per output channel factor TFLite multiplies the kernel by: the BatchNormalization that
    directly consumes the convolution's output, folded; 1 when there is none."""
    import keras

    shape = conv.kernel.shape
    channels = shape[2] * shape[3] if isinstance(conv, keras.layers.DepthwiseConv2D) else shape[-1]
    if not isinstance(consumer, keras.layers.BatchNormalization) or consumer.input is not conv.output:
        return np.ones(channels)
    variance = np.asarray(consumer.moving_variance, np.float64)
    gamma = np.asarray(consumer.gamma, np.float64) if consumer.scale else np.ones_like(variance)
    return gamma / np.sqrt(variance + consumer.epsilon)


def snap_kernel(kernel: np.ndarray, folded: np.ndarray, depthwise: bool) -> np.ndarray:
    """The kernel whose folded copy (kernel * folded) is exactly on the per-channel int8 grid."""
    w = kernel.astype(np.float64)
    # depthwise (kh, kw, C, multiplier): output channel c * multiplier + m; else (..., out)
    g = folded.reshape((1, 1, *w.shape[2:]) if depthwise else (1,) * (w.ndim - 1) + (-1,))
    axes = (0, 1) if depthwise else tuple(range(w.ndim - 1))
    f = w * g
    scale = np.abs(f).max(axis=axes, keepdims=True) / LEVELS
    scale[scale == 0] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        snapped = np.where(g != 0, np.round(f / scale) * scale / np.where(g != 0, g, 1.0), w)
    return snapped.astype(kernel.dtype)


def snap_to_int8_grid(model) -> int:
    """Snap every Conv2D / DepthwiseConv2D kernel of ``model`` (nested models included) in place;
    returns how many were snapped. Idempotent."""
    import keras

    count = 0
    layers = list(model.layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, keras.Model):
            count += snap_to_int8_grid(layer)
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        consumer = layers[i + 1] if i + 1 < len(layers) else None
        folded = _folded_scale(layer, consumer)
        layer.kernel.assign(snap_kernel(np.asarray(layer.kernel), folded, depthwise))
        count += 1
    return count
