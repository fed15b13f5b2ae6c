"""The none-of-these class: its numpy pieces on synthetic data, then the real session model (the
200 sample photos): leave-one-class-out inside train, photos of no flower rejected by model.keras
and by every converted variant through the edge runtime, flowers keeping their labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.fit import open_set


def test_spherical_kmeans_gives_unit_centres_near_the_clusters():
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    x = np.concatenate([a + 0.05 * rng.normal(size=(50, 8)), b + 0.05 * rng.normal(size=(50, 8))])
    centres = open_set.spherical_kmeans(x, 2, rng)
    assert np.allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-5)
    assert sorted(np.round(np.max(centres @ np.stack([a, b]).T, axis=0), 1).tolist()) == [1.0, 1.0]


def test_prototypes_per_class_and_a_threshold_that_keeps_the_share_asked():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)) + 3 * np.eye(16)[np.repeat(np.arange(3), 100)]
    y = np.repeat(np.arange(3), 100)
    protos, owners = open_set.fit_prototypes(x, y, 3, 4, seed=0)
    assert protos.shape == (12, 16) and np.bincount(owners).tolist() == [4, 4, 4]
    scores = open_set.similarity(x, protos)
    t = open_set.threshold(scores, 0.9)
    assert abs(np.mean(scores >= t) - 0.9) < 0.01
    far = -3 * np.eye(16)[:3] + 0.1  # away from every class
    assert (open_set.similarity(far, protos) < t).all()


def test_auroc_counts_pairs_and_ties():
    assert open_set.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert open_set.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert open_set.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert open_set.auroc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


def test_temperature_recovers_the_one_that_made_the_labels_and_lowers_ece():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=4.0, size=(4000, 5))
    y = np.array([rng.choice(5, p=p) for p in open_set.softmax(logits / 2.0)])  # true temperature 2
    t = open_set.fit_temperature(logits, y)
    assert 1.8 < t < 2.2
    assert open_set.ece(open_set.softmax(logits / t), y) < open_set.ece(open_set.softmax(logits), y) / 2


@pytest.fixture(scope="session")
def report(trained_run) -> dict:
    return json.loads((trained_run / "report.json").read_text())


def test_leaving_a_class_out_its_photos_are_rejected_far_more_often_than_the_known_ones(report):
    """Inside train, on the sample photos: each class in turn is the unknown one."""
    loco = report["open_set"]["leave_one_class_out"]
    assert [r["left_out"] for r in loco["classes"]] == report["labels"]
    mean = loco["mean"]
    assert mean["rejected"] >= 2 * (1 - mean["known_kept"]), mean
    assert mean["auroc"] > 0.65, mean
    assert 0.8 <= mean["known_kept"] <= 1.0
    assert mean["known_accuracy_with_rejections"] <= mean["known_accuracy"]


def test_the_report_has_threshold_calibration_and_the_rejections_of_the_held_out_split(report):
    o = report["open_set"]
    assert o["label"] == "unknown" and 0 < o["threshold"] < 1 and o["keep"] == 0.95
    assert o["prototypes"] == 5 * o["prototypes_per_class"]
    c = o["calibration"]
    assert 0.2 < c["temperature"] < 5 and c["ece_after"] <= c["ece_before"] + 0.02
    assert 0 < o["test"]["rejected"] < 0.3
    assert o["test"]["accuracy_with_rejections"] <= o["test"]["accuracy"] == report["splits"]["test"]["accuracy"]


NO_FLOWERS = ("cat.bmp", "grace_hopper.bmp", "bird.bmp", "burger.jpg")


def _photos(shared_data, names):
    from edge.preprocess import PreprocessSpec, prepare

    roots = [shared_data / "coral", shared_data / "tflite_support"]
    paths = [next(r / n for r in roots if (r / n).is_file()) for n in names]
    return np.stack([prepare(p, PreprocessSpec()) for p in paths])


def test_model_keras_says_none_of_these_for_photos_of_no_flower_and_keeps_flowers(trained_run, keras_test,
                                                                                   shared_data):
    from trainer.model.model_io import keras_probabilities, load_keras

    model = load_keras(trained_run / "model.keras")
    assert model.output_shape[-1] == 6
    probs = keras_probabilities(model, _photos(shared_data, NO_FLOWERS))
    assert (probs.argmax(axis=1) == 5).all(), probs.round(3)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    kept = keras_test.probs.argmax(axis=1) != 5
    assert kept.mean() >= 0.75  # the threshold keeps 95 % of val; 40 test photos vary


def test_the_graph_rejects_exactly_below_the_threshold(trained_run, keras_test):
    """model.keras's argmax is the reject class exactly when the numpy score is below the threshold."""
    from trainer.model.model_io import load_keras, with_embedding
    from trainer.model.open_set_layer import settings

    model = load_keras(trained_run / "model.keras")
    s = settings(model)
    assert s["threshold"] == pytest.approx(json.loads((trained_run / "report.json").read_text())["open_set"]["threshold"],
                                           abs=1e-5)
    embedding, probs = (np.asarray(a) for a in with_embedding(model).predict(keras_test.images.astype(np.float32),
                                                                              verbose=0))
    scores = open_set.similarity(embedding, s["prototypes"])
    clear = np.abs(scores - s["threshold"]) > 1e-4
    assert ((probs.argmax(axis=1) == 5) == (scores < s["threshold"]))[clear].all()


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic", "int8", "full_int8"])
def test_every_variant_rejects_photos_of_no_flower_through_the_edge_runtime(converted, shared_data, mode):
    from edge.classifier import Classifier, ClassifierOptions

    classifier = Classifier(ClassifierOptions(model=converted / f"model_{mode}.tflite"))
    assert classifier.reject_label == "unknown"
    scores = classifier.probabilities(_photos(shared_data, NO_FLOWERS))
    assert (scores.argmax(axis=1) == 5).all(), scores.round(3)
    flower = classifier.probabilities(_photos(shared_data, ("sunflower.bmp",)))[0]
    assert classifier.labels[int(flower.argmax())] == "sunflowers"


def test_without_open_set_the_model_has_only_the_classes(tmp_path):
    from tests.paths import SAMPLE_FLOWERS
    from trainer.config import DataConfig, RunConfig, train_config
    from trainer.fit.stages import run

    out = tmp_path / "run"
    report = run(RunConfig(DataConfig(str(SAMPLE_FLOWERS)), train=train_config(open_set=False), seed=7), out)
    assert "open_set" not in report
    from trainer.model.model_io import load_keras
    from trainer.run_dir import RunDir

    assert load_keras(out / "model.keras").output_shape[-1] == 5
    assert RunDir.open(out).output_labels == RunDir.open(out).labels
