"""Every converted variant, alone (no labels file beside it), classifies a real flower photo
correctly in the engines Android apps use: MediaPipe Tasks and the TFLite Task Library."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.client_venvs import client_python
from tests.helpers_run import converted  # noqa: F401  (session fixture)

pytestmark = [pytest.mark.clients, pytest.mark.slow]

CLIENTS = Path(__file__).resolve().parent / "clients"
MODES = ["float32", "float16", "dynamic", "int8"]


@pytest.fixture(scope="module")
def confident_photo(converted) -> tuple[Path, str, int]:
    """The test photo Keras gets right with the highest probability (photo, label, index)."""
    import keras

    from edge.preprocess import PreprocessSpec
    from trainer.data import load_images, read_splits

    splits = read_splits(converted)
    images, ok, _ = load_images(splits.paths("test"), PreprocessSpec())
    y = splits.targets("test")
    probs = keras.models.load_model(converted / "model.keras").predict(images.astype(np.float32), verbose=0)
    right = np.where(ok & (probs.argmax(1) == y))[0]
    best = int(right[np.argmax(probs[right, y[right]])])
    assert probs[best, y[best]] >= 0.8, "no test photo is classified with confidence"
    return splits.paths("test")[best], splits.labels[y[best]], int(y[best])


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
