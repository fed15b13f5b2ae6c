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
    assert_top_category(categories, (converted / "labels.txt").read_text().splitlines(), label, index)
