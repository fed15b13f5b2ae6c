"""TFLite metadata: our writer (trainer.export.metadata) against our reader (edge.metadata), Google's
published models, and hostile bytes."""

from __future__ import annotations

import io
import os
import random
import zipfile
from functools import lru_cache

import numpy as np
import pytest

from edge.flatbuffer import InvalidModelError
from edge.metadata import ModelMetadata, read_metadata
from edge.model_file import op_names, read_model_bytes, tensor_types
from tests.paths import CORAL, SUPPORT

LABELS = ["daisy", "rose petal", "Große Blume"]  # a space and non-ASCII: labels.txt is UTF-8


@lru_cache(maxsize=None)
def tiny_models() -> dict[str, bytes]:
    """A tiny classifier converted to float32 and to full int8 with uint8 I/O (no metadata)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.integers(0, 256, (1, 32, 32, 3)).astype(np.float32)] for _ in range(8)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return {"float32": float32, "int8": converter.convert()}


def info(**overrides):
    from trainer.export.metadata import MetadataInfo

    fields = dict(
        name="Flower classifier",
        description="Classifies flowers.",
        version="v3",
        author="edge-transfer tests",
        license="Apache-2.0",
        labels=LABELS,
    )
    return MetadataInfo(**{**fields, **overrides})


def run_tflite(model: bytes, image: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


# --------------------------------------------------------------------------- writer -> reader
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_round_trip_every_field(kind):
    from trainer.export.metadata import add_metadata

    original = tiny_models()[kind]
    before = read_metadata(original)
    assert not before.has_metadata and before.labels is None and before.associated_files == {}

    out = add_metadata(original, info())
    meta = read_metadata(out)
    assert meta.has_metadata
    assert (meta.name, meta.description, meta.version, meta.author, meta.license) == (
        "Flower classifier",
        "Classifies flowers.",
        "v3",
        "edge-transfer tests",
        "Apache-2.0",
    )
    assert meta.labels == LABELS
    assert meta.mean == (0.0, 0.0, 0.0) and meta.std == (1.0, 1.0, 1.0)
    assert meta.color_space == "RGB"
    assert meta.min_parser_version == "1.0.0"
    if kind == "int8":  # uint8 input: the raw pixel range
        assert (meta.input_min, meta.input_max) == ((0.0,), (255.0,))
    else:  # float input: (0 - mean) / std .. (255 - mean) / std
        assert (meta.input_min, meta.input_max) == ((0.0,) * 3, (255.0,) * 3)
    # the converter's own metadata entry survives the rewrite
    assert meta.min_runtime_version == before.min_runtime_version is not None

    with zipfile.ZipFile(io.BytesIO(out)) as z:
        assert z.testzip() is None
        assert [(i.filename, i.compress_type) for i in z.infolist()] == [("labels.txt", zipfile.ZIP_STORED)]
        assert z.read("labels.txt").decode("utf-8").splitlines() == LABELS
    assert meta.associated_files == {"labels.txt": "\n".join(LABELS).encode() + b"\n"}
    assert tensor_types(out) == tensor_types(original)
    assert op_names(out) == op_names(original)


def test_float_stats_follow_normalization():
    from trainer.export.metadata import add_metadata

    meta = read_metadata(add_metadata(tiny_models()["float32"], info(mean=(127.5,), std=(127.5,))))
    assert (meta.mean, meta.std) == ((127.5,), (127.5,))
    assert (meta.input_min, meta.input_max) == ((-1.0,), (1.0,))

    explicit = info(input_min=(-2.0,), input_max=(2.0,))
    meta = read_metadata(add_metadata(tiny_models()["float32"], explicit))
    assert (meta.input_min, meta.input_max) == ((-2.0,), (2.0,))


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_model_runs_identically_with_metadata(kind):
    from trainer.export.metadata import add_metadata

    original = tiny_models()[kind]
    out = add_metadata(original, info())
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1, 32, 32, 3))
    image = pixels.astype(np.uint8 if kind == "int8" else np.float32)
    expected = run_tflite(original, image)
    assert np.array_equal(run_tflite(out, image), expected)
    assert expected.shape == (1, len(LABELS))


def test_add_metadata_is_deterministic_and_replaces_old_metadata():
    from trainer.export.metadata import add_metadata

    model = tiny_models()["int8"]
    first = add_metadata(model, info(labels=["a", "b", "c"], name="first"))
    again = add_metadata(first, info())
    assert again == add_metadata(model, info())  # no stale buffer, no second zip
    meta = read_metadata(again)
    assert meta.name == "Flower classifier" and meta.labels == LABELS


def test_weight_buffers_keep_16_byte_alignment():
    from edge.model_file import model_root  # the reader's own view of Model.buffers
    from trainer.export.metadata import add_metadata

    out = add_metadata(tiny_models()["float32"], info())
    starts = [b.vector(0, 1) for b in model_root(out).tables(4)]
    starts = [vec[0] for vec in starts if vec is not None and vec[1] > 0]
    assert len(starts) >= 3
    assert all(start % 16 == 0 for start in starts), starts


def test_writer_rejects_mismatched_labels_and_garbage():
    from trainer.export.metadata import add_metadata

    with pytest.raises(ValueError, match="3 outputs but 2 labels"):
        add_metadata(tiny_models()["float32"], info(labels=["a", "b"]))
    with pytest.raises(ValueError, match="non-blank"):
        info(labels=["a", "b\nc", "d"])
    with pytest.raises(InvalidModelError):
        add_metadata(b"not a model at all", info())


def test_buffers_stored_outside_the_flatbuffer():
    """Newer converters may keep buffers after the flatbuffer (Buffer.offset/size)."""
    import flatbuffers
    import keras
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as tfl

    from trainer.export.metadata import add_metadata

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    converter._experimental_use_buffer_offset = True
    model = converter.convert()
    model_t = tfl.ModelT.InitFromPackedBuf(bytearray(model), 0)
    assert any(b.offset > 1 for b in model_t.buffers)  # the writer must pull these inline

    out = add_metadata(model, info())
    x = np.random.default_rng(2).random((1, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(run_tflite(out, x), run_tflite(model, x))
    assert read_metadata(out).labels == LABELS

    # Reader: move the min_runtime_version string out of the flatbuffer as well.
    (entry,) = [m for m in model_t.metadata if m.name == b"min_runtime_version"]
    version = bytes(model_t.buffers[entry.buffer].data)
    inline = tfl.ModelT.InitFromPackedBuf(bytearray(tiny_models()["float32"]), 0)
    (entry,) = [m for m in inline.metadata if m.name == b"min_runtime_version"]
    inline.buffers[entry.buffer] = tfl.BufferT(offset=1 << 40, size=len(version))  # size placeholder

    def pack() -> bytes:
        builder = flatbuffers.Builder(0)
        builder.Finish(inline.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    inline.buffers[entry.buffer].offset = len(pack())
    external = pack() + version
    assert read_metadata(external).min_runtime_version == version.rstrip(b"\0").decode()


# --------------------------------------------------------------------------- Google's files
def test_reads_googles_quantized_mobilenet():
    meta = read_metadata(SUPPORT / "mobilenet_v1_0.25_224_quant.tflite")
    assert meta.has_metadata
    assert meta.name == "MobileNetV1 image classifier (quantized)"
    assert meta.version == "v1" and meta.author == "TensorFlow"
    assert len(meta.labels) == 1001
    assert meta.labels[0] == "background" and meta.labels[934] == "cheeseburger"
    assert meta.labels == (SUPPORT / "imagenet_labels_1001.txt").read_text().splitlines()
    assert (meta.mean, meta.std) == ((127.5,), (127.5,))
    assert (meta.input_min, meta.input_max) == ((0.0,), (255.0,))
    assert meta.color_space == "RGB"
    assert list(meta.associated_files) == ["labels.txt"]
    assert tensor_types(SUPPORT / "mobilenet_v1_0.25_224_quant.tflite") == {"inputs": ["uint8"], "outputs": ["uint8"]}


def test_reads_googles_float_mobilenet():
    meta = read_metadata(SUPPORT / "mobilenet_v1_0.25_224_1_metadata_1.tflite")
    assert meta.has_metadata and len(meta.labels) == 1001 and meta.labels[934] == "cheeseburger"
    assert (meta.mean, meta.std) == ((127.5,), (127.5,))
    assert (meta.input_min, meta.input_max) == ((-1.0,), (1.0,))
    assert tensor_types(SUPPORT / "mobilenet_v1_0.25_224_1_metadata_1.tflite")["inputs"] == ["float32"]


def test_reads_googles_automl_flower_model():
    meta = read_metadata((SUPPORT / "automl_labeler_model.tflite").read_bytes())
    assert meta.labels == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (meta.mean, meta.std) == ((0.0,), (1.0,))
    assert meta.min_parser_version == "1.0.0"
    assert meta.license.startswith("Apache License")


@pytest.mark.parametrize(
    "name,runtime",
    [("mobilenet_v1_0.25_128_quant.tflite", "1.5.0"), ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "1.14.0")],
)
def test_reads_coral_models(name, runtime):
    # Coral's test models carry TFLite metadata too (name "ImageClassifier", imagenet_labels.txt).
    meta = read_metadata(CORAL / name)
    assert meta.has_metadata and meta.name == "ImageClassifier"
    assert meta.min_runtime_version == runtime
    assert len(meta.labels) == 1001 and meta.labels[934] == "cheeseburger"
    assert list(meta.associated_files) == ["imagenet_labels.txt"]


@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_224_1_default_1.tflite", "mobilenet_v2_1.0_224_quant_nometadata.tflite"])
def test_model_without_metadata_is_not_an_error(name):
    meta = read_metadata(SUPPORT / name)
    assert meta == ModelMetadata(min_runtime_version=None)
    assert not meta.has_metadata and meta.labels is None


def test_op_names():
    ptq = op_names(CORAL / "tf2_mobilenet_v2_1.0_224_ptq.tflite")
    assert ptq[0] == "QUANTIZE" and ptq.count("CONV_2D") >= 30 and "DEPTHWISE_CONV_2D" in ptq
    assert op_names(tiny_models()["float32"]) == ["CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    int8 = op_names(tiny_models()["int8"])
    assert int8[0] == "QUANTIZE" and int8[-1] == "QUANTIZE" and "DEQUANTIZE" not in int8


# --------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize(
    "data",
    [b"", b"TFL3", b"\x00" * 8, b"1234TFL3", b"\xff\xff\xff\x7fTFL3" + b"\x00" * 32, b"PK\x03\x04 a zip, not a model"],
)
def test_garbage_bytes_raise_invalid_model_error(data):
    with pytest.raises(InvalidModelError) as err:
        read_metadata(data)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidModelError):
        op_names(data)


def test_random_truncations_and_corruptions_never_escape():
    """Every damaged model either reads or raises InvalidModelError: no struct.error/IndexError."""
    rng = random.Random(0)
    for model in [(SUPPORT / "mobilenet_v1_0.25_224_quant.tflite").read_bytes(), tiny_models()["int8"]]:
        cuts = {8, 12, 16, 64, len(model) // 2, len(model) - 1} | {rng.randrange(8, len(model)) for _ in range(60)}
        damaged = [model[:cut] for cut in cuts]
        for _ in range(120):  # flip a few bytes in the first kilobytes: offsets, vtables
            b = bytearray(model)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8, min(len(b), 4096))] = rng.randrange(256)
            damaged.append(bytes(b))
        outcomes = {"read": 0, "invalid": 0}
        for data in damaged:
            for reader in (read_metadata, op_names, tensor_types):
                try:
                    reader(data)
                    outcomes["read"] += 1
                except InvalidModelError as exc:
                    assert "\n" not in str(exc)
                    outcomes["invalid"] += 1
        assert outcomes["invalid"] > 0


def test_read_model_bytes_one_line_errors(tmp_path):
    with pytest.raises(InvalidModelError, match="cannot read model"):
        read_model_bytes(tmp_path / "missing.tflite")
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        read_model_bytes(tmp_path / "empty.tflite")
    (tmp_path / "labels.tflite").write_text("daisy\nrose\n")
    with pytest.raises(InvalidModelError, match="not a TFLite model") as err:
        read_metadata(tmp_path / "labels.tflite")
    assert "\n" not in str(err.value)
    good = tmp_path / "good.tflite"
    good.write_bytes(tiny_models()["int8"])
    assert read_model_bytes(good) == tiny_models()["int8"]
    assert read_metadata(str(good)).min_runtime_version is not None


def test_label_file_missing_from_the_zip_falls_back_to_indices():
    from trainer.export.metadata import add_metadata

    data = add_metadata(tiny_models()["int8"], info())
    meta = read_metadata(data[: data.index(b"PK\x03\x04")])
    assert meta.has_metadata and meta.labels is None and meta.mean == (0.0, 0.0, 0.0)
    (warning,) = meta.warnings
    assert "labels.txt" in warning and "category indices" in warning and "\n" not in warning

