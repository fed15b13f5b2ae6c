"""The "none of these" output, built from Keras' own layers, so model.keras loads with plain
``keras.models.load_model`` (no import of ours needed).

Inputs: the pooled embedding (N, D) and the class logits (N, K). The photo's score is its largest
cosine similarity to the per-class prototypes (P unit vectors: the kernel of a Dense layer); the
extra logit is ``max(logits) + clip(sharpness * (threshold - score), -BELOW, ABOVE)``. So the
extra class is the top-1 exactly when the score is below the threshold, the K classes keep their
order (and their probabilities up to one common factor, ~1 - e^-BELOW for an in-distribution
photo), and every op is a TFLite builtin (normalization, fully connected, reshape, max, ReLU-N,
add, concatenation, softmax): MediaPipe, the Task Library and LiteRT.js see "none of these" as one
more label. The layers, in graph order (their names are how trainer.export.ranges finds them)::

    unit     UnitNormalization(embedding)              cosine   Dense(P, no bias): prototypes
    cosines  Reshape (P, 1)                            score    GlobalMaxPooling1D: the score
    raw      Dense(1): sharpness * (threshold - score) + BELOW
    margin   ReLU(max BELOW + ABOVE): the clip, shifted by BELOW
    logits   Reshape (K, 1) of the class logits        best     GlobalMaxPooling1D: the best logit
    lowered  Dense(1): best - BELOW                    extra    Add: best + clipped margin
    concat   [logits, extra]                           none_of_these  Softmax
"""

from __future__ import annotations

import numpy as np

# the extra logit's margin over the best class, in logit units: bounded, so the int8 output scale
# stays near the class logits' (an in-distribution photo: e^-8 of the best class; a rejected one: e^3)
BELOW, ABOVE = 8.0, 3.0
LAYER_NAME = "none_of_these"  # the output layer; the others are LAYER_NAME + "_" + part


def attach(model, prototypes: np.ndarray, threshold: float, sharpness: float, temperature: float = 1.0):
    """The classifier ``model`` (image -> base -> pooled embedding -> [dropout] -> Dense softmax
    "probabilities") with the none-of-these class: the Dense layer's weights divided by
    ``temperature`` (calibration folded in: no new op), its logits and the embedding into the
    layers above. The base's layers are shared, not copied."""
    import keras

    from trainer.model.model_io import embedding_of

    layers = keras.layers
    kernel, bias = model.get_layer("probabilities").get_weights()
    embedding = embedding_of(model)
    k, p = kernel.shape[1], len(prototypes)

    def name(part: str) -> str:
        return f"{LAYER_NAME}_{part}"

    logits = layers.Dense(k, name="logits")(embedding)
    unit = layers.UnitNormalization(name=name("unit"))(embedding)
    cosine = layers.Dense(p, use_bias=False, name=name("cosine"))(unit)
    score = layers.GlobalMaxPooling1D(name=name("score"))(layers.Reshape((p, 1), name=name("cosines"))(cosine))
    margin = layers.ReLU(max_value=BELOW + ABOVE, name=name("margin"))(layers.Dense(1, name=name("raw"))(score))
    best = layers.GlobalMaxPooling1D(name=name("best"))(layers.Reshape((k, 1), name=name("logits"))(logits))
    extra = layers.Add(name=name("extra"))([layers.Dense(1, name=name("lowered"))(best), margin])
    outputs = layers.Softmax(name=LAYER_NAME)(layers.Concatenate(name=name("concat"))([logits, extra]))
    out = keras.Model(model.input, outputs, name=model.name)
    f32 = lambda *a: np.asarray(a[0] if len(a) == 1 else a, np.float32)  # noqa: E731
    out.get_layer("logits").set_weights([kernel / np.float32(temperature), bias / np.float32(temperature)])
    out.get_layer(name("cosine")).set_weights([np.ascontiguousarray(f32(prototypes).T)])
    out.get_layer(name("raw")).set_weights([f32([[-sharpness]]), f32([sharpness * threshold + BELOW])])
    out.get_layer(name("lowered")).set_weights([f32([[1.0]]), f32([-BELOW])])
    return out


def settings(model) -> dict | None:
    """The none-of-these layer's prototypes (P, D), threshold and sharpness, read back from the
    weights of ``model`` (None without one)."""
    if LAYER_NAME not in [layer.name for layer in model.layers]:
        return None
    (weight,), (kernel, bias) = (model.get_layer(f"{LAYER_NAME}_{part}").get_weights() for part in ("cosine", "raw"))
    sharpness = float(-kernel[0, 0])
    return {"prototypes": weight.T, "threshold": float((bias[0] - BELOW) / sharpness), "sharpness": sharpness}


def open_set_pins(model) -> dict[str, tuple[float, float]]:
    """The int8 ranges of ``model``'s none-of-these layers by part name ({} without them). A
    cosine is in [-1, 1]; trainer.export.ranges starts the cosine parts at 0 when the calibration
    saw no negative one (post-ReLU embeddings: twice the resolution)."""
    s = settings(model)
    if s is None:
        return {}
    # raw saturating outside the clip changes nothing (the ReLU-N clips it there): its range is the clip's
    return {"unit": (-1.0, 1.0), "cosine": (-1.0, 1.0), "cosines": (-1.0, 1.0), "score": (-1.0, 1.0),
            "raw": (0.0, BELOW + ABOVE), "margin": (0.0, BELOW + ABOVE)}


def exportable(model):
    """``model`` for TFLite conversion: Keras' UnitNormalization lowers to SQUARE / SUM / RSQRT /
    MUL, and int8 has no SQUARE (full_int8 could not be integer-only); tf.math.l2_normalize
    becomes one L2_NORMALIZATION, which int8 runs. The same function (the parity gate's float32
    check shows it), the same weights (every other layer is shared, not copied); only for
    conversion, model.keras keeps Keras' own layers."""
    import keras

    if f"{LAYER_NAME}_unit" not in [layer.name for layer in model.layers]:
        return model

    class L2Normalize(keras.layers.Layer):
        def call(self, x):
            import tensorflow as tf

            return tf.math.l2_normalize(x, axis=-1)

    def swap(layer):
        return L2Normalize(name=layer.name) if layer.name == f"{LAYER_NAME}_unit" else layer

    return keras.models.clone_model(model, clone_function=swap)
