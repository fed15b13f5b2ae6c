"""Every converted variant, alone (no labels file beside it), classifies a real flower photo
correctly in the engines Android apps use: MediaPipe Tasks and the TFLite Task Library."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.client_venvs import client_python

pytestmark = [pytest.mark.clients, pytest.mark.slow]

CLIENTS = Path(__file__).resolve().parent / "clients"
MODES = ["float32", "float16", "dynamic", "int8"]


def classify(client: str, model: Path, image: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(client_python(client)), str(CLIENTS / f"{client}_classify.py"), str(model), str(image),
         "--max-results", "-1"],
        capture_output=True, text=True, timeout=180, cwd=model.parent,
    )


@pytest.mark.parametrize("client", ["mediapipe", "tflite_support"])
@pytest.mark.parametrize("mode", MODES)
def test_variant_classifies_a_real_flower_in_the_android_engines(client, mode, converted, confident_photo, tmp_path):
    photo, label, index = confident_photo
    alone = tmp_path / f"model_{mode}.tflite"  # only the .tflite: labels and normalization from metadata
    shutil.copy(converted / f"model_{mode}.tflite", alone)
    result = classify(client, alone, photo)
    assert result.returncode == 0, result.stderr[-2000:]
    categories = json.loads(result.stdout)["categories"]
    assert [c["label"] for c in sorted(categories, key=lambda c: c["index"])] == \
        (converted / "labels.txt").read_text().splitlines()
    top = categories[0]
    assert (top["label"], top["index"]) == (label, index), categories
    assert top["score"] >= 0.5, categories
