"""Shared fixtures: real data from ../shared/data and one real model trained once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_TRANSFER_SHARED", REPO.parent / "shared" / "data"))
SMALL_FLOWERS = SHARED / "flower_photos_small"

# the TFLite copy of the backbone is cached across test runs (it is keyed by a weights hash)
os.environ.setdefault("EDGE_TRANSFER_CACHE", str(REPO / ".cache" / "edge-transfer"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ...` from the repo and capture text output."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set EDGE_TRANSFER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_data) -> Path:
    """A real head-only model (shipped ImageNet backbone) trained on the 200 small flower photos."""
    out = tmp_path_factory.mktemp("run") / "flowers_small"
    result = run_cli("trainer", "train", "--data", str(SMALL_FLOWERS), "--out", str(out), "--seed", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def converted(trained_run, tmp_path_factory) -> Path:
    """The session's trained run, converted to all four variants (gate passed)."""
    from tests.helpers_run import converted_run

    run, result = converted_run(trained_run, tmp_path_factory.getbasetemp())
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return run


@pytest.fixture(scope="session")
def confident_photo(converted) -> tuple[Path, str, int]:
    """The test photo Keras gets right with the highest probability (photo, label, index)."""
    import keras
    import numpy as np

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
