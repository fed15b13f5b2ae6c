"""Every converted variant, alone (no labels file beside it), classifies a real flower photo
correctly in the engines Android apps use: MediaPipe Tasks and the TFLite Task Library."""

from __future__ import annotations

import shutil

import pytest

from tests.client_venvs import assert_top_category, client_classify

pytestmark = [pytest.mark.clients, pytest.mark.slow]

MODES = ["float32", "float16", "dynamic", "int8", "full_int8"]


@pytest.mark.parametrize("client", ["mediapipe", "tflite_support"])
@pytest.mark.parametrize("mode", MODES)
def test_variant_classifies_a_real_flower_in_the_android_engines(client, mode, converted, confident_photo, tmp_path):
    photo, label, index = confident_photo
    alone = tmp_path / f"model_{mode}.tflite"  # only the .tflite: labels and normalization from metadata
    shutil.copy(converted / f"model_{mode}.tflite", alone)
    categories = client_classify(client, alone, photo)
    assert_top_category(categories, output_labels(converted), label, index)


def output_labels(run) -> list[str]:
    """labels.txt and the none-of-these label the model outputs last."""
    return (run / "labels.txt").read_text().splitlines() + ["unknown"]


@pytest.mark.parametrize("client", ["mediapipe", "tflite_support"])
@pytest.mark.parametrize("mode", ["float32", "int8", "full_int8"])
@pytest.mark.parametrize("photo", ["cat.bmp", "grace_hopper.bmp"])
def test_a_photo_of_no_flower_is_none_of_these_with_the_default_options(client, mode, photo, converted, shared_data,
                                                                          tmp_path):
    """Google's sample photos of a cat and of Grace Hopper: the engines' own top category is the
    reject label, from the model file alone (default options, no threshold of ours)."""
    alone = tmp_path / f"model_{mode}.tflite"
    shutil.copy(converted / f"model_{mode}.tflite", alone)
    categories = client_classify(client, alone, shared_data / "coral" / photo)
    assert [c["label"] for c in sorted(categories, key=lambda c: c["index"])] == output_labels(converted)
    assert (categories[0]["label"], categories[0]["index"]) == ("unknown", 5), categories  # first, not sure
