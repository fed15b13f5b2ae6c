"""The edge tests again, inside the tflite-runtime 2.14 + numpy<2 client venv (a Pi's setup).

EDGE_TRANSFER_BACKEND=tflite_runtime makes make_interpreter refuse any other backend; the venv
has no other one, and the backend that loads is checked here too. The inner run
skips this file (it is not passed, and the env var guard stops recursion) and the lead's
conftest (--noconftest), so only the edge files' own fixtures are used.
"""

import os
import subprocess

import pytest
from client_venvs import client_python
from test_edge_support import AUTOML, REPO

from edge.runtime import BACKEND_ENV

pytestmark = [
    pytest.mark.clients,
    pytest.mark.skipif(BACKEND_ENV in os.environ, reason="already inside a forced-backend run; do not recurse"),
]

EDGE_TEST_FILES = [
    "tests/test_edge_support.py",
    "tests/test_edge_postprocess.py",
    "tests/test_edge_runtime.py",
    "tests/test_edge_classifier.py",
    "tests/test_edge_upstream.py",
    "tests/test_edge_cli.py",
    "tests/test_edge_quiet.py",
]  # not the camera tests: OpenCV is no part of this venv (nor of a Pi's edge install)


def test_edge_suite_passes_on_tflite_runtime_2_14():
    python = client_python("tflite_runtime")
    env = {**os.environ, BACKEND_ENV: "tflite_runtime", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-rA", "--noconftest", "-p", "no:cacheprovider", *EDGE_TEST_FILES],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    assert "PASSED tests/test_edge_upstream.py::test_libcoral_cat_cases" in proc.stdout, tail
    assert " failed" not in tail and " error" not in tail and " skipped" not in tail, tail
    versions = subprocess.run(
        [str(python), "-c", "import numpy, tflite_runtime; from edge.runtime import make_interpreter; "
         f"print(numpy.__version__, tflite_runtime.__version__, make_interpreter({str(AUTOML)!r}).backend)"],
        capture_output=True, text=True, timeout=60, env=env,
    ).stdout.split()
    assert versions[0].startswith("1.") and versions[1].startswith("2.14") and versions[2] == "tflite_runtime"
