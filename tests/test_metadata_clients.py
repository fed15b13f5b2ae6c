"""Our metadata as the engines of Android apps read it: MediaPipe Tasks and the TFLite Task Library.

Each client runs in its own venv (tests/client_venvs.py) on the script in tests/clients/, which
sees only the .tflite file. A 32x32 image needs no resize, so the client's scores must equal
our interpreter's: that proves the clients applied our normalization (mean 0, std 1) and
mapped our labels.txt onto the right output indices.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.client_venvs import client_python
from tests.test_metadata import LABELS, SUPPORT, info, run_tflite, tiny_models

pytestmark = pytest.mark.clients

CLIENTS = Path(__file__).resolve().parent / "clients"
NAMES = ["mediapipe", "tflite_support"]


def classify(client: str, model: Path, image: Path, max_results: int = -1) -> subprocess.CompletedProcess:
    """Run tests/clients/<client>_classify.py in the client's venv (no PYTHONPATH: model only)."""
    script = CLIENTS / f"{client}_classify.py"
    return subprocess.run(
        [str(client_python(client)), str(script), str(model), str(image), "--max-results", str(max_results)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=model.parent,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models with and without metadata, and a 32x32 RGB image (model size: no resize)."""
    from trainer.export.metadata import add_metadata

    root = tmp_path_factory.mktemp("clients")
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "image.png")
    out = {"image": root / "image.png", "pixels": pixels}
    for kind, model in tiny_models().items():
        (root / f"{kind}_bare.tflite").write_bytes(model)
        (root / f"{kind}.tflite").write_bytes(add_metadata(model, info()))
        out[kind] = root / f"{kind}.tflite"
        out[f"{kind}_bare"] = root / f"{kind}_bare.tflite"
    return out


def expected_scores(model: Path, pixels: np.ndarray) -> np.ndarray:
    """Our own interpreter's probabilities for the raw pixels (dequantized for uint8 output)."""
    data = model.read_bytes()
    if model.name.startswith("int8"):
        return run_tflite(data, pixels[None]).astype(np.float64)[0] / 256.0  # softmax scale 1/256
    return run_tflite(data, pixels[None].astype(np.float32))[0]


@pytest.mark.parametrize("client", NAMES)
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_client_reads_our_labels_and_normalization(client, kind, files):
    result = classify(client, files[kind], files["image"])
    assert result.returncode == 0, result.stderr[-2000:]
    categories = json.loads(result.stdout)["categories"]
    assert sorted(c["label"] for c in categories) == sorted(LABELS)
    assert all(c["label"] == LABELS[c["index"]] for c in categories)
    scores = np.array([c["score"] for c in sorted(categories, key=lambda c: c["index"])])
    tolerance = 1e-5 if kind == "float32" else 1 / 256 + 1e-6
    np.testing.assert_allclose(scores, expected_scores(files[kind], files["pixels"]), atol=tolerance)


@pytest.mark.parametrize("client", NAMES)
def test_max_results_and_order(client, files):
    result = classify(client, files["int8"], files["image"], max_results=2)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = [c["score"] for c in json.loads(result.stdout)["categories"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("client", NAMES)
def test_float_model_without_metadata_is_rejected(client, files):
    result = classify(client, files["float32_bare"], files["image"])
    assert result.returncode != 0
    assert "NormalizationOptions" in result.stderr
    assert result.stdout == ""


def test_int8_model_without_metadata_has_no_labels(files):
    # uint8 input needs no normalization, so the Task Library runs it, but without our labels.
    result = classify("tflite_support", files["int8_bare"], files["image"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert {c["label"] for c in json.loads(result.stdout)["categories"]} == {""}


@pytest.mark.parametrize("client", NAMES)
def test_metadata_without_its_label_file_is_rejected(client, files, tmp_path):
    # The metadata names labels.txt; cut the appended zip off and the clients must refuse.
    data = files["int8"].read_bytes()
    broken = tmp_path / "int8_nozip.tflite"
    broken.write_bytes(data[: data.index(b"PK\x03\x04")])
    result = classify(client, broken, files["image"])
    assert result.returncode != 0
    assert "labels.txt" in result.stderr


@pytest.mark.parametrize("client", NAMES)
def test_our_metadata_on_googles_bare_model_matches_googles_own(client, tmp_path):
    """Google ships the same float MobileNet with and without metadata: ours must act like theirs."""
    from trainer.export.metadata import MetadataInfo, add_metadata

    labels = (SUPPORT / "imagenet_labels_1001.txt").read_text().splitlines()
    ours = tmp_path / "mobilenet_ours.tflite"
    ours.write_bytes(
        add_metadata(
            (SUPPORT / "mobilenet_v1_0.25_224_1_default_1.tflite").read_bytes(),
            MetadataInfo("MobileNet", "ImageNet", "v1", "tests", "Apache-2.0", labels, mean=(127.5,), std=(127.5,)),
        )
    )
    theirs = SUPPORT / "mobilenet_v1_0.25_224_1_metadata_1.tflite"
    results = [classify(client, model, SUPPORT / "burger.jpg", max_results=3) for model in (ours, theirs)]
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    ours_cats, theirs_cats = (json.loads(r.stdout)["categories"] for r in results)
    assert ours_cats[0]["label"] == "cheeseburger" and ours_cats[0]["index"] == 934
    assert [c["index"] for c in ours_cats] == [c["index"] for c in theirs_cats]
    np.testing.assert_allclose([c["score"] for c in ours_cats], [c["score"] for c in theirs_cats], atol=1e-6)
