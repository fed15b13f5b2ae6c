"""NoneOfThese: the Keras layer that adds the "none of these" class to a classifier, in the graph.

Inputs: the pooled embedding (N, D) and the class logits (N, K). The photo's score is its largest
cosine similarity to the per-class prototypes (K x P unit vectors, a constant of the layer); the
extra logit is ``max(logits) + clip(sharpness * (threshold - score), -BELOW, ABOVE)``. So the extra
class is the top-1 exactly when the score is below the threshold, the K classes keep their order
(and their probabilities up to one common factor, which is ~1 for an in-distribution photo), and
every op is a TFLite builtin (L2 normalization, a fully connected layer, max, add, concat,
softmax): MediaPipe, the Task Library and LiteRT.js see "none of these" as one more label.

``keras.models.load_model`` finds the class once this module is imported
(:func:`trainer.model.model_io.load_keras` does).
"""

from __future__ import annotations

import keras
import numpy as np

# the extra logit's margin over the best class, in logit units: bounded, so the int8 output scale
# stays near the class logits' (an in-distribution photo: e^-8 of the best class; a rejected one: e^3)
BELOW, ABOVE = 8.0, 3.0
# TensorFlow name scopes of the layer's tensors and their ranges for int8 (by construction: the
# calibration photos are the user's classes, which never show a positive margin);
# trainer.export.ranges pins them, and widens the logits' shared range by ABOVE.
LAYER_NAME = "none_of_these"


@keras.saving.register_keras_serializable(package="edge_transfer")
class NoneOfThese(keras.layers.Layer):
    """[embedding (N, D), logits (N, K)] -> probabilities (N, K + 1); the last is none of these."""

    def __init__(self, n_prototypes: int, threshold: float, sharpness: float, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.n_prototypes = int(n_prototypes)
        self.threshold = float(threshold)
        self.sharpness = float(sharpness)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        # (D, P): the prototypes as the kernel of a fully connected layer, unit columns
        self.prototypes = self.add_weight(name="prototypes", shape=(dim, self.n_prototypes),
                                          initializer="zeros", trainable=False)

    def pinned_ranges(self) -> dict[str, tuple[float, float]]:
        """Name scope -> (min, max) its int8 tensors must cover (see the module's constants). A
        cosine is in [-1, 1]; trainer.export.ranges starts "cosine" and "scaled" at 0 when the
        calibration saw no negative one (post-ReLU embeddings: twice the resolution)."""
        c, sh = self.sharpness * self.threshold, self.sharpness
        return {"unit": (-1.0, 1.0), "cosine": (-1.0, 1.0), "scaled": (-sh, sh), "raw": (c - sh, c + sh),
                "margin": (-BELOW, ABOVE)}

    def call(self, inputs):
        import tensorflow as tf

        embedding, logits = inputs
        with tf.name_scope("unit"):
            unit = tf.math.l2_normalize(embedding, axis=-1)
        with tf.name_scope("cosine"):  # the score: the largest cosine similarity to a prototype
            score = tf.reduce_max(tf.matmul(unit, self.prototypes), axis=-1, keepdims=True)
        with tf.name_scope("scaled"):
            scaled = score * self.sharpness
        with tf.name_scope("raw"):
            raw = self.sharpness * self.threshold - scaled
        with tf.name_scope("margin"):
            margin = tf.clip_by_value(raw, -BELOW, ABOVE)
        best = tf.reduce_max(logits, axis=-1, keepdims=True)
        with tf.name_scope("extra"):
            extra = best + margin
        return tf.nn.softmax(tf.concat([logits, extra], axis=-1), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], int(input_shape[1][-1]) + 1)

    def get_config(self):
        return {**super().get_config(), "n_prototypes": self.n_prototypes, "threshold": self.threshold,
                "sharpness": self.sharpness}


def attach(model, prototypes: np.ndarray, threshold: float, sharpness: float, temperature: float = 1.0):
    """The classifier ``model`` (image -> base -> pooled embedding -> [dropout] -> Dense softmax
    "probabilities") with the none-of-these class: the Dense layer's weights divided by
    ``temperature`` (calibration folded in: no new op), its logits and the embedding into
    :class:`NoneOfThese`. The base's layers are shared, not copied."""
    dense = model.get_layer("probabilities")
    kernel, bias = dense.get_weights()
    embedding = dense.input
    if "head_dropout" in [layer.name for layer in model.layers]:
        embedding = model.get_layer("head_dropout").input
    logits_layer = keras.layers.Dense(kernel.shape[1], name="logits")
    logits = logits_layer(embedding)
    logits_layer.set_weights([kernel / np.float32(temperature), bias / np.float32(temperature)])
    layer = NoneOfThese(len(prototypes), threshold, sharpness, name=LAYER_NAME)
    outputs = layer([embedding, logits])
    layer.set_weights([np.ascontiguousarray(np.asarray(prototypes, np.float32).T)])
    return keras.Model(model.input, outputs, name=model.name)


def has_open_set(model) -> bool:
    return any(isinstance(layer, NoneOfThese) for layer in model.layers)


def open_set_pins(model) -> dict[str, tuple[float, float]]:
    """The int8 ranges of ``model``'s none-of-these layer by name scope ({} without one)."""
    layers = [layer for layer in model.layers if isinstance(layer, NoneOfThese)]
    return layers[0].pinned_ranges() if layers else {}
