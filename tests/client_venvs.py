"""Separate virtual environments for the independent clients the suite checks against.

tflite-support, mediapipe and tflite-runtime 2.14 cannot share a venv with TensorFlow 2.21
(protobuf pins, numpy<2), so each gets its own under ``.venvs/`` in the repo, built once
(``make client-venvs`` builds them up front; a test builds a missing one itself). The project's
own code is reached through PYTHONPATH, never installed there, so the client sees exactly
what a user's app would: our .tflite file and nothing else of ours.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / ".venvs"

CLIENTS: dict[str, list[str]] = {
    "tflite_runtime": ["tflite-runtime==2.14.0", "numpy<2", "pillow", "typer>=0.12", "pytest>=8"],
    "mediapipe": ["mediapipe", "pillow"],
    "tflite_support": ["tflite-support==0.4.4", "pillow"],
}


def client_python(name: str) -> Path:
    """Path to the python of client venv ``name``, creating the venv on first use."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if marker.exists():
        return python
    VENVS.mkdir(exist_ok=True)
    with open(VENVS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(  # through quiet_pip: the same noise filter as `make setup`, failures shown whole
                [str(python), str(REPO / "scripts" / "quiet_pip.py"), "install", "-q", "--disable-pip-version-check",
                 *CLIENTS[name]],
                check=True,
            )
            marker.touch()
    return python


def run_client(name: str, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` (Python source) in client venv ``name`` with the repo on PYTHONPATH."""
    python = client_python(name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(python), "-c", script, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )


CLIENT_SCRIPTS = Path(__file__).resolve().parent / "clients"


def client_classify(client: str, model: Path, image: Path) -> list[dict]:
    """Every category the client engine reports for image, best first; only the model file
    is handed over (labels and normalization must come from its metadata)."""
    result = subprocess.run(
        [str(client_python(client)), str(CLIENT_SCRIPTS / f"{client}_classify.py"), str(model), str(image),
         "--max-results", "-1"],
        capture_output=True, text=True, timeout=180, cwd=Path(model).parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    return json.loads(result.stdout)["categories"]


def assert_top_category(categories: list[dict], labels: list[str], label: str, index: int) -> None:
    """Labels arrive in output order from the metadata, and the top one is the expected class."""
    assert [c["label"] for c in sorted(categories, key=lambda c: c["index"])] == labels
    top = categories[0]
    assert (top["label"], top["index"]) == (label, index), categories
    assert top["score"] >= 0.5, categories


if __name__ == "__main__":  # `python tests/client_venvs.py NAME...` builds them ahead of the suite
    for n in sys.argv[1:] or list(CLIENTS):
        print(n, client_python(n))
