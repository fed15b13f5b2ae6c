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
