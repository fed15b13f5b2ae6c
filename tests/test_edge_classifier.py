"""edge.classifier in-process: probabilities for parity, labels resolution, the pipelined path."""

import shutil

import numpy as np
import pytest
from PIL import Image
from test_edge_support import AUTOML, CORAL, CORAL_V2, FLOWER_NAMES, FLOWERS, SUPPORT

from edge import preprocess
from edge.classifier import Classifier, ClassifierOptions, InputPlan, plan_input
from edge.metadata import ModelMetadata
from edge.runtime import TensorInfo


@pytest.fixture(scope="module")
def automl():
    return Classifier(ClassifierOptions(AUTOML, num_threads=2, top_k=5))


@pytest.fixture(scope="module")
def flower_paths():
    return sorted(FLOWERS.glob("*/*.jpg"))[::8]  # 25 photos, every class


def test_labels_and_normalization_come_from_the_model(automl):
    assert automl.labels == FLOWER_NAMES and automl.labels_source == "metadata"
    assert automl.plan == InputPlan()  # uint8 input: raw pixels, whatever the metadata's mean/std


def test_probabilities_batch_matches_single_images(automl, flower_paths):
    batch = np.stack([automl.prepare(p) for p in flower_paths[:4]])
    probs = automl.probabilities(batch)
    assert probs.shape == (4, 5) and probs.dtype == np.float32
    assert np.array_equal(probs[2], automl.probabilities(batch[2]))
    assert np.all(probs >= 0) and np.all(probs <= 1)


def test_automl_is_mostly_right_on_real_flowers(automl, flower_paths):
    right = sum(automl.classify_path(p)[0].label == p.parent.name for p in flower_paths)
    assert right >= 0.7 * len(flower_paths)


def test_pipelined_folder_equals_one_by_one(automl, flower_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(flower_paths[0].read_bytes()[:300])
    paths = [*flower_paths[:5], bad, tmp_path / "absent.jpg", *flower_paths[5:10]]
    results = list(automl.classify_paths(paths))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.error is not None for r in results] == [False] * 5 + [True, True] + [False] * 5
    assert "\n" not in results[5].error and results[6].error == "no such file"
    for r in results:
        if r.error is None:
            assert list(r.categories) == automl.classify_path(r.path)


def test_draft_decoding_barely_changes_scores(flower_paths, tmp_path):
    """JPEG draft decoding on phone-sized photos (real flowers upscaled 6x) vs a full decode."""
    fast = Classifier(ClassifierOptions(CORAL_V2, num_threads=2, fast_decode=True))
    full = Classifier(ClassifierOptions(CORAL_V2, num_threads=2, fast_decode=False))
    agree, diffs = 0, []
    for i, path in enumerate(flower_paths[:12]):
        photo = Image.open(path)
        big = tmp_path / f"{i}.jpg"
        photo.resize((photo.width * 6, photo.height * 6), Image.BICUBIC).save(big, quality=92)
        assert preprocess.load_rgb(big, fast.spec.size).shape[0] < photo.height * 6  # draft really applied
        a, b = fast.probabilities(fast.prepare(big)), full.probabilities(full.prepare(big))
        agree += int(a.argmax() == b.argmax())
        diffs.append(np.abs(a - b).max())
    assert agree >= 11
    assert np.median(diffs) < 0.06


def test_labels_txt_beside_the_model_then_explicit_file(tmp_path):
    model = tmp_path / "m.tflite"
    shutil.copy(SUPPORT / "mobilenet_v2_1.0_224_quant_nometadata.tflite", model)
    assert Classifier(ClassifierOptions(model)).labels is None
    shutil.copy(CORAL / "imagenet_labels.txt", tmp_path / "labels.txt")
    clf = Classifier(ClassifierOptions(model))
    assert clf.labels_source.endswith("labels.txt") and clf.labels[286] == "Egyptian cat"
    override = tmp_path / "other.txt"
    override.write_text("\n".join(f"class{i}" for i in range(1001)))
    assert Classifier(ClassifierOptions(model, labels=override)).labels[286] == "class286"


def test_nometadata_logits_model_still_finds_the_cat():
    clf = Classifier(ClassifierOptions(SUPPORT / "mobilenet_v2_1.0_224_quant_nometadata.tflite", top_k=3))
    scores = clf.probabilities(clf.prepare(CORAL / "cat.bmp"))
    assert scores.sum() == pytest.approx(1.0, abs=1e-4)  # logits output -> softmax
    assert 286 in [c.index for c in clf.categorize(scores)]


def test_float_input_plan_follows_metadata():
    tensor = TensorInfo(0, "input", (1, 224, 224, 3), np.dtype(np.float32), 0.0, 0)
    assert plan_input(ModelMetadata(mean=(127.5,), std=(127.5,), has_metadata=True), tensor) == InputPlan(
        (127.5,), (127.5,))
    assert plan_input(ModelMetadata(), tensor) == InputPlan()  # ours: raw 0..255
    int8 = TensorInfo(0, "input", (1, 224, 224, 3), np.dtype(np.int8), 1.0, -128)
    plan = plan_input(ModelMetadata(), int8)
    pixel = np.full((1, 1, 3), 200, np.uint8)
    shifted = preprocess.to_input_tensor(pixel, np.int8, plan.mean, plan.std, plan.quantization)
    assert shifted.ravel().tolist() == [72, 72, 72]  # raw pixels moved into int8 range
