"""Every .tflite we ship takes one photo: input [1, H, W, 3], output [1, C], and no -1 anywhere
in any tensor's shape_signature (LiteRT.js refuses a dynamic batch; GPU / NNAPI delegates handle
one poorly). The batch is fixed at conversion (trainer.export.tflite.input_signature), for every
converter run: the SavedModel every mode reads, a Keras model traced directly, calibration."""

from __future__ import annotations

import numpy as np

from edge.metadata import read_metadata
from tests.paths import REPO
from trainer.export.variants import MODES, verify

try:
    from ai_edge_litert import schema_py_generated as tfl
except ImportError:  # pragma: no cover
    from tensorflow.lite.python import schema_py_generated as tfl


def shapes(data: bytes) -> dict:
    """Through the flatbuffer object API: dynamic dimensions in every tensor of every subgraph,
    subgraph 0's input and output signatures, and the SignatureDefs' tensors."""
    model = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)

    def signature(t) -> list[int]:
        return [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else t.shape)]

    sg = model.subgraphs[0]
    return {
        "dynamic": sum(int((np.asarray(signature(t)) < 0).sum()) for s in model.subgraphs for t in s.tensors),
        "inputs": [signature(sg.tensors[i]) for i in sg.inputs],
        "outputs": [signature(sg.tensors[i]) for i in sg.outputs],
        "signature_defs": len(model.signatureDefs or []),
    }


def assert_batch_one(data: bytes, what: str) -> None:
    s = shapes(data)
    assert s["dynamic"] == 0, f"{what}: {s['dynamic']} dynamic dimensions, input {s['inputs']}"
    [inp], [out] = s["inputs"], s["outputs"]
    assert inp[0] == 1 and inp[3] == 3 and len(inp) == 4, f"{what}: input {inp}"
    assert out[0] == 1 and len(out) == 2, f"{what}: output {out}"


def test_every_variant_of_a_converted_run_is_batch_one(converted):
    from trainer.run_dir import RunDir

    run = RunDir.open(converted)
    for mode in MODES:
        data = run.variant(mode).read_bytes()
        assert_batch_one(data, mode)
        assert shapes(data)["inputs"] == [[1, *run.spec.size, 3]]
        v = verify(data, MODES[mode])
        assert v.ok and v.input_signature == (1, *run.spec.size, 3) and v.dynamic_dims == 0, (mode, v.problems)
        meta = read_metadata(data)  # metadata as before: labels, raw pixels in
        assert meta.labels == run.output_labels and meta.mean == (0.0, 0.0, 0.0) and meta.std == (1.0, 1.0, 1.0)


def test_android_assets_model_is_batch_one():
    """The shipped android_assets/model.tflite (rebuilt with `make android` after a convert)."""
    assert_batch_one((REPO / "android_assets" / "model.tflite").read_bytes(), "android_assets/model.tflite")


def test_verify_refuses_a_dynamic_batch_and_a_keras_model_converts_at_batch_one():
    """The check can fail: TensorFlow's own Keras conversion declares [-1, H, W, 3]; ours does not."""
    import tensorflow as tf

    from trainer.export.float_convert import convert_model
    from trainer.export.metadata import MetadataInfo, add_metadata

    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(inputs))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(x))
    info = MetadataInfo("tiny", "tiny", "1", "test", "MIT", ["a", "b"])
    theirs = add_metadata(tf.lite.TFLiteConverter.from_keras_model(model).convert(), info)
    ours = add_metadata(convert_model(model, MODES["float32"]), info)
    assert shapes(theirs)["dynamic"] > 0 and shapes(theirs)["inputs"] == [[-1, 8, 8, 3]]
    v = verify(theirs, MODES["float32"])
    assert v.dynamic_dims > 0 and any("fixed batch of 1" in p for p in v.problems), v.problems
    assert_batch_one(ours, "a Keras model through trainer.export")
    assert verify(ours, MODES["float32"]).ok


def test_the_edge_runtime_runs_a_batch_one_model_one_photo_an_invoke(converted, keras_test):
    """edge.classifier feeds one photo an invoke (it never resizes the input): a batch of photos
    gives the scores of each photo alone."""
    from edge.classifier import Classifier, ClassifierOptions

    clf = Classifier(ClassifierOptions(converted / "model_int8.tflite", num_threads=1))
    images = keras_test.images[:5]
    together = clf.probabilities(images)
    alone = np.stack([clf.probabilities(image) for image in images])
    assert together.shape == (5, len(keras_test.probs[0])) and np.array_equal(together, alone)
