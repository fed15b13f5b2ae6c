"""Session fixtures: one real model (shipped ImageNet backbone, head-only) trained in-process on
the shipped sample photos, its Keras probabilities on the test split, and the same run converted
to every TFLite variant. Both test tiers (`make test-fast`, `make test`) share them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.paths import REPO, SAMPLE_FLOWERS, SHARED_DATA, SHARED_DATA_ENV

# the TFLite copy of the backbone is cached across test runs (it is keyed by a weights hash)
os.environ.setdefault("EDGE_TRANSFER_CACHE", str(REPO / ".cache" / "edge-transfer"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAIN_SEED = 7
CALIBRATION_IMAGES = 40
# 40 test photos: one photo is 2.5 points, so the production gate would turn on one borderline
# photo. The suite gates at a photo-count scale instead (CLI flags and thresholds alike).
TEST_GATE_FLAGS = ("--min-agreement", "90", "--min-delta-acc", "-5")
TEST_GATE = {"min_agreement": 90.0, "min_delta_acc": -5.0}


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ...` from the repo and capture text output."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run directory (tests that rewrite files must not touch shared ones)."""
    shutil.copytree(run, dest)
    return dest


@dataclass(frozen=True)
class KerasOnTest:
    """model.keras on the run's test split, computed once per session."""

    paths: list[Path]
    images: np.ndarray  # uint8, the one preprocessing
    y: np.ndarray
    probs: np.ndarray


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set {SHARED_DATA_ENV})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real head-only model trained in this process on the 200 shipped sample photos."""
    from trainer.config import DataConfig, RunConfig
    from trainer.fit.stages import run

    out = tmp_path_factory.mktemp("run") / "flowers_small"
    run(RunConfig(DataConfig(str(SAMPLE_FLOWERS)), seed=TRAIN_SEED), out)
    return out


@pytest.fixture(scope="session")
def keras_test(trained_run) -> KerasOnTest:
    from trainer.data.dataset import load_images, read_splits
    from trainer.model.model_io import load_keras
    from trainer.run_dir import RunDir

    run = RunDir.open(trained_run)
    splits = read_splits(trained_run)
    paths = splits.paths("test")
    images, ok, _ = load_images(paths, run.spec)
    assert ok.all()
    probs = load_keras(trained_run / "model.keras").predict(images.astype(np.float32), verbose=0)
    return KerasOnTest(paths, images, splits.targets("test"), probs)


@pytest.fixture(scope="session")
def converted(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's run, converted in-process to every variant (test gate passed)."""
    from trainer.export.variants import MODES
    from trainer.report.parity import default_thresholds
    from trainer.workflow import convert_run

    out = copy_run(trained_run, tmp_path_factory.mktemp("converted") / "run")
    # the session model is on the int8 grid: int8 keeps no layer float (the greedy choice of float
    # layers, for models off the grid: tests/test_sensitivity.py)
    report = convert_run(out, list(MODES), CALIBRATION_IMAGES, default_thresholds(**TEST_GATE), log=lambda line: None)
    assert report.passed, report.table()
    return out


@pytest.fixture(scope="session")
def confident_photo(keras_test) -> tuple[Path, str, int]:
    """The test photo Keras gets right with the highest probability (photo, label, index)."""
    k = keras_test
    right = np.where(k.probs.argmax(1) == k.y)[0]
    best = int(right[np.argmax(k.probs[right, k.y[right]])])
    assert k.probs[best, k.y[best]] >= 0.8, "no test photo is classified with confidence"
    labels = (Path(k.paths[best]).parent.name)
    return k.paths[best], labels, int(k.y[best])
