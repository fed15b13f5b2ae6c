"""`python -m trainer convert` on a real trained model: every variant, its promises, metadata,
the legacy Pi runtime and one-line user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.metadata import read_metadata
from edge.model_file import op_names, tensor_types
from tests.conftest import CALIBRATION_IMAGES, TEST_GATE_FLAGS, copy_run, run_cli

MODES = ["float32", "float16", "dynamic", "int8", "full_int8"]
IN = {"float32": "float32", "float16": "float32", "dynamic": "float32", "int8": "uint8", "full_int8": "uint8"}
OUT = {**IN, "int8": "float32"}  # int8: uint8 pixels in, float probabilities out


def labels_of(run) -> list[str]:
    return (run / "labels.txt").read_text().splitlines()


@pytest.mark.parametrize("mode", MODES)
def test_each_variant_has_the_dtypes_its_mode_promises(converted, mode):
    from trainer.export.variants import inspect_model

    path = converted / f"model_{mode}.tflite"
    assert path.stat().st_size > 1_000_000
    assert tensor_types(path) == {"inputs": [IN[mode]], "outputs": [OUT[mode]]}
    types = inspect_model(path.read_bytes()).tensor_types
    weight_type = {"float32": "float32", "float16": "float16"}.get(mode, "int8")
    assert types.get(weight_type, 0) > 50, types  # the conv kernels are stored in the promised type
    if mode == "float32":
        assert set(types) <= {"float32", "int32"}


def test_sizes_shrink_with_quantization(converted):
    size = {m: (converted / f"model_{m}.tflite").stat().st_size for m in MODES}
    assert size["float16"] < 0.6 * size["float32"]
    assert all(size[m] < 0.35 * size["float32"] for m in ("dynamic", "int8", "full_int8")), size


def test_full_int8_has_uint8_io_with_identity_input_quantization_and_only_integer_ops(converted):
    from trainer.export.variants import inspect_model

    data = (converted / "model_full_int8.tflite").read_bytes()
    ops = op_names(data)
    assert "DEQUANTIZE" not in ops and "CONV_2D" in ops and "SOFTMAX" in ops
    v = inspect_model(data)
    assert set(v.tensor_types) <= {"int8", "uint8", "int32"}, v.tensor_types
    assert v.input_quantization == (1.0, 0)  # raw 0..255 pixels go in unchanged
    assert v.output_quantization == (1 / 256, 0)  # TFLite's uint8 softmax encoding


def test_int8_takes_raw_pixels_and_computes_the_softmax_in_float(converted):
    """No 1/256 probability grid: the int8 body ends in DEQUANTIZE -> float SOFTMAX, and the
    scores on real photos are not multiples of 1/256."""
    from trainer.export.variants import inspect_model
    from trainer.report.parity import held_out, tflite_probabilities
    from trainer.run_dir import RunDir

    path = converted / "model_int8.tflite"
    v = inspect_model(path.read_bytes())
    assert v.input_dtype == "uint8" and v.input_quantization == (1.0, 0) and v.output_dtype == "float32"
    assert v.tensor_types["int8"] > 5 * v.tensor_types["float32"], v.tensor_types  # int8 math, a few float layers
    assert "DEQUANTIZE" in v.ops and "SOFTMAX" in v.ops
    _, photos = held_out(RunDir.open(converted))
    images, _ = photos.take(range(10)).decode()
    probs = tflite_probabilities(path, images)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    off_grid = np.abs(probs * 256 - np.round(probs * 256)) > 1e-3
    assert off_grid.mean() > 0.5


def test_verify_reports_a_file_that_breaks_its_modes_promises(converted):
    from trainer.export.variants import MODES as TABLE
    from trainer.export.variants import verify

    float_model = (converted / "model_float32.tflite").read_bytes()
    problems = " ".join(verify(float_model, TABLE["full_int8"]).problems)
    assert "input is float32, expected uint8" in problems and "not integer-only" in problems
    assert verify((converted / "model_full_int8.tflite").read_bytes(), TABLE["full_int8"]).ok
    int8 = (converted / "model_int8.tflite").read_bytes()
    assert verify(int8, TABLE["int8"]).ok
    assert "not integer-only" in " ".join(verify(int8, TABLE["full_int8"]).problems)
    assert not verify((converted / "model_float16.tflite").read_bytes(), TABLE["float32"]).ok


@pytest.mark.parametrize("mode", MODES)
def test_metadata_carries_our_labels_in_order_and_identity_normalization(converted, mode):
    meta = read_metadata(converted / f"model_{mode}.tflite")
    assert meta.has_metadata
    assert labels_of(converted) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert meta.labels == [*labels_of(converted), "unknown"]  # the none-of-these class last
    assert meta.open_set is not None and meta.open_set.label == "unknown" and 0 < meta.open_set.threshold < 1
    assert meta.mean == (0.0, 0.0, 0.0) and meta.std == (1.0, 1.0, 1.0) and meta.color_space == "RGB"
    assert mode in meta.name and meta.author == "edge-transfer" and meta.license == "Apache-2.0"
    assert meta.version and meta.description
    assert meta.min_runtime_version  # the converter's entry survives the metadata rewrite


@pytest.mark.slow
def test_cli_logs_every_export_with_size_time_and_int8_input_quantization(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    result = run_cli("trainer", "convert", str(run), "--mode", "all",
                     "--calibration-images", str(CALIBRATION_IMAGES), *TEST_GATE_FLAGS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("wrote ") and ".tflite" in line]
    assert [line.split("model_")[1].split(".tflite")[0] for line in lines] == MODES
    assert all(" MB, " in line and " s;" in line and "min runtime" in line for line in lines)
    assert "input quantization (1.0, 0)" in lines[-1] and "calibrated on 40 photos" in lines[-1]
    assert "TensorSpec" not in result.stdout + result.stderr  # converter chatter is swallowed
    assert "fully_quantize" not in result.stdout + result.stderr


IN_TFLITE_RUNTIME = """
import json, os, sys
os.environ["EDGE_TRANSFER_BACKEND"] = "tflite_runtime"
import tflite_runtime
from edge.classifier import Classifier, ClassifierOptions
from edge.preprocess import PreprocessSpec, prepare
clf = Classifier(ClassifierOptions(model=sys.argv[1], num_threads=1))
probs = clf.probabilities(prepare(sys.argv[2], PreprocessSpec()))
print(json.dumps({"backend": clf.backend, "version": tflite_runtime.__version__, "probs": probs.tolist()}))
"""


@pytest.mark.clients
@pytest.mark.parametrize("mode", ["dynamic", "int8", "full_int8"])
def test_quantized_variant_loads_and_classifies_in_tflite_runtime_2_14(converted, confident_photo, mode):
    from edge.preprocess import PreprocessSpec, prepare
    from tests.client_venvs import run_client
    from trainer.report.parity import tflite_probabilities

    photo, _, index = confident_photo
    model = converted / f"model_{mode}.tflite"
    result = run_client("tflite_runtime", IN_TFLITE_RUNTIME, str(model), str(photo))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == "tflite_runtime" and out["version"].startswith("2.14")
    here = tflite_probabilities(model, prepare(photo, PreprocessSpec()))
    # hybrid (dynamic-range) kernels differ between runtime versions and thread counts in the
    # last digits of the activation quantization, so the same top-1 and close scores, not bit-equal
    assert int(np.argmax(out["probs"])) == int(np.argmax(here)) == index
    np.testing.assert_allclose(out["probs"], here, atol=0.01)


@pytest.mark.clients
def test_tf_default_dynamic_range_model_would_not_load_in_tflite_runtime_2_14(converted, tmp_path):
    """The control for the test above: without our converter option (per-channel dense layers,
    FULLY_CONNECTED v12) the Pi runtime refuses the file."""
    import keras
    import tensorflow as tf

    from tests.client_venvs import run_client
    from trainer.data.dataset import read_splits
    from trainer.export.float_convert import convert_model
    from trainer.export.variants import Quantization

    class TfDefault(Quantization):
        def configure(self, converter, representative=None):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

    model = keras.models.load_model(converted / "model.keras")
    path = tmp_path / "tf_default_dynamic.tflite"
    path.write_bytes(convert_model(model, TfDefault("dynamic", "tf default", weights="int8", optimize=True)))
    photo = read_splits(converted).paths("test")[0]
    result = run_client("tflite_runtime", IN_TFLITE_RUNTIME, str(path), str(photo))
    assert result.returncode != 0
    assert "FULLY_CONNECTED" in result.stderr and "12" in result.stderr


def test_calibration_choice_is_class_balanced_and_seeded(converted):
    from trainer.data.dataset import read_splits
    from trainer.export.calibration import calibration_paths

    splits = read_splits(converted)
    chosen = calibration_paths(splits, 20, seed=3)
    label = {str(p): s.label for p, s in zip(splits.paths("train"), splits.train)}
    assert np.bincount([label[str(p)] for p in chosen], minlength=5).tolist() == [4, 4, 4, 4, 4]
    assert chosen == calibration_paths(splits, 20, seed=3) != calibration_paths(splits, 20, seed=4)
    assert len(set(calibration_paths(splits, 10_000))) == len(splits.train)  # capped, no repeats


def test_bad_run_dir_and_bad_mode_are_one_line_errors(tmp_path):
    result = run_cli("trainer", "convert", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "error:" in result.stderr
    assert "training run directory" in result.stderr
    result = run_cli("trainer", "convert", str(tmp_path), "--mode", "int4")
    assert result.returncode == 2 and "--mode must be one of float32, float16, dynamic, int8, full_int8" in result.stderr
