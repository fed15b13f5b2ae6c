"""Shared helpers for the edge tests (kept here, not in the lead's conftest.py).

Real data: tests/paths.py. The CLI runs as a subprocess of the current interpreter, so the same
tests exercise whichever venv runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.paths import CORAL, REPO, SUPPORT
from tests.paths import SMALL_FLOWERS as FLOWERS

CORAL_V2 = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
AUTOML = SUPPORT / "automl_labeler_model.tflite"
FLOWER_NAMES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def run_edge(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m edge ARGS` with the repo importable; text output captured."""
    env = env or {}
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))}
    return subprocess.run(
        [sys.executable, "-m", "edge", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the runtime's own INFO banner (XNNPACK delegate creation)."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]


def test_reference_data_is_present():
    for path in (CORAL_V2, AUTOML, CORAL / "cat.bmp", SUPPORT / "burger.jpg"):
        assert path.is_file(), f"missing staged data {path}"
    assert len(list(FLOWERS.glob("*/*.jpg"))) >= 100
