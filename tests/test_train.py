"""Training on real photos with the real backbone: artifacts, report, reload parity, evaluate,
fine-tuning keeps BatchNorm frozen, repeatability."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.paths import REPO, SAMPLE_FLOWERS
from tests.test_data import make_dataset
from trainer.model.int8_grid import snap_kernel


def test_run_directory_is_complete_and_self_describing(trained_run):
    for name in ("model.keras", "labels.txt", "config.json", "splits.json", "report.json",
                 "training_curves.png", "confusion_matrix.png", "predictions.png"):
        assert (trained_run / name).stat().st_size > 0, name
    assert (trained_run / "labels.txt").read_text().split() == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["preprocess"] == {"size": [224, 224], "resize": "bilinear_half_pixel",
                                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert config["seed"] == 7 and config["backbone"]["name"] == "mobilenet_v2"
    report = json.loads((trained_run / "report.json").read_text())
    assert report["counts"] == {"train": 140, "val": 20, "test": 40}
    test = report["splits"]["test"]
    assert test["n"] == 40 and np.array(test["confusion_matrix"]).sum() == 40
    assert set(test["per_class"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    assert test["accuracy"] >= 0.7  # 40 held-out photos, 5 classes: chance is 0.2
    assert {"features_s", "head_s", "total_s"} <= set(report["timings"])
    assert report["workers"] == 1 and report["feature_cache"]["photos"] == 200
    assert report["skipped"] == []
    mistakes = report["mistakes"]  # the eval split's wrong photos, most confident first
    assert len(mistakes) == round(40 * (1 - test["accuracy"]))
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    assert all(m["label"] != m["predicted"] and (SAMPLE_FLOWERS / m["path"]).is_file() for m in mistakes)


RELOAD = """
import json, sys, numpy as np, keras
from trainer.data.dataset import read_splits, load_images
from edge.preprocess import PreprocessSpec
run = sys.argv[1]
splits = read_splits(run)
images, ok, _ = load_images(splits.paths("test"), PreprocessSpec())
probs = keras.models.load_model(run + "/model.keras").predict(images.astype("float32"), verbose=0)
np.save(sys.argv[2], probs)
"""


@pytest.mark.slow
def test_reload_in_a_fresh_process_gives_the_same_probabilities(trained_run, keras_test, tmp_path):
    here = keras_test.probs
    subprocess.run([sys.executable, "-c", RELOAD, str(trained_run), str(tmp_path / "p.npy")], check=True, cwd=REPO,
                   capture_output=True)
    there = np.load(tmp_path / "p.npy")
    assert np.abs(here - there).max() <= 1e-6
    # the report (scored on cached TFLite features) agrees with the saved Keras model
    report = json.loads((trained_run / "report.json").read_text())
    keras_accuracy = float((here[:, :5].argmax(1) == keras_test.y).mean())  # the classes; "unknown" is last
    assert keras_accuracy == pytest.approx(report["splits"]["test"]["accuracy"], abs=1e-4)


@pytest.mark.slow
def test_evaluate_prints_json_for_any_folder(trained_run):
    result = run_cli("trainer", "evaluate", str(trained_run), "--data", str(SAMPLE_FLOWERS))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["n"] == 200 and out["accuracy"] >= 0.8  # includes the 140 training photos
    assert set(out["per_class"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}


@pytest.mark.slow
def test_evaluate_rejects_an_unknown_class_folder(trained_run, tmp_path):
    root = make_dataset(tmp_path / "ds", n_per_class=2, classes=("daisy", "roses"))
    (root / "roses").rename(root / "orchids")
    result = run_cli("trainer", "evaluate", str(trained_run), "--data", str(root))
    assert result.returncode == 2 and "orchids" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_config_json_repeats_the_run_exactly(trained_run, tmp_path):
    """--config RUN_DIR/config.json gives the same split, the same head and the same probabilities."""
    out = tmp_path / "again"
    result = run_cli("trainer", "train", "--config", str(trained_run / "config.json"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "splits.json").read_text() == (trained_run / "splits.json").read_text()
    first, second = (json.loads((d / "report.json").read_text()) for d in (trained_run, out))
    assert first["splits"] == second["splits"]  # every metric and confusion matrix
    assert first["history"]["head"] == second["history"]["head"]


@pytest.mark.slow
def test_fine_tuning_trains_top_layers_and_keeps_batchnorm_statistics(tmp_path):
    import keras

    ds = make_dataset(tmp_path / "ds", n_per_class=12, classes=("daisy", "roses", "tulips"))
    (ds / "roses" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "run"
    result = run_cli("trainer", "train", "--data", str(ds), "--out", str(out), "--epochs", "5",
                     "--fine-tune-from", "block_16_expand", "--fine-tune-epochs", "1", "--image-size", "96",
                     "--tensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.load_model(out / "model.keras")
    base = next(layer for layer in model.layers if layer.name.startswith("mobilenetv2"))
    shipped = np.load(REPO / "trainer" / "assets" / "mobilenet_v2_1.0_224_no_top.npz")

    def on_grid(conv: str) -> np.ndarray:  # the shipped kernel as the int8 grid puts it (the default)
        gamma, _, _, var = (shipped[f"{conv}_BN/{i}"] for i in range(4))
        return snap_kernel(shipped[f"{conv}/0"], gamma / np.sqrt(var.astype(np.float64) + 1e-3), depthwise=False)

    # unfrozen convolution moved, frozen ones and every BatchNorm statistic did not
    assert not np.allclose(base.get_layer("block_16_project").get_weights()[0], on_grid("block_16_project"))
    np.testing.assert_allclose(base.get_layer("block_15_project").get_weights()[0], on_grid("block_15_project"),
                               rtol=1e-6)
    for name in ("block_16_expand_BN", "block_16_project_BN", "Conv_1_bn"):
        for i in (2, 3):  # moving mean and variance
            np.testing.assert_array_equal(base.get_layer(name).get_weights()[i], shipped[f"{name}/{i}"])
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["fine_tune"]["epochs"] == 1
    assert [s["path"] for s in report["skipped"]] == ["roses/broken.jpg"] and report["skipped"][0]["reason"]
    assert sum(report["counts"].values()) == 36  # the run went on without it
    for stage in ("head", "fine_tune"):  # --tensorboard logs both stages
        assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard" / stage).rglob("*")), stage


def test_presets_set_their_recipe_and_explicit_flags_win():
    from trainer.config import PRESETS, TrainConfig, train_config

    assert train_config("fast") == TrainConfig()  # today's head-only default
    best = train_config("best")
    assert (best.fine_tune_from, best.fine_tune_epochs, best.fine_tune_learning_rate, best.label_smoothing,
            best.fine_tune_schedule, best.dropout) == ("block_10_expand", 6, 1e-4, 0.1, "cosine", 0.2)
    assert best.preset == "best"
    mine = train_config("best", fine_tune_learning_rate=3e-5, fine_tune_epochs=None)
    assert mine.fine_tune_learning_rate == 3e-5 and mine.fine_tune_epochs == 6
    with pytest.raises(ValueError, match="--preset must be one of fast, best"):
        train_config("slowest")
    assert set(PRESETS) == {"fast", "best"}
