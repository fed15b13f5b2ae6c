"""scripts/quiet_pip.py (what make installs through): pip's known third-party noise is dropped,
real messages are kept, and a failing pip still prints its error and fails."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quiet_pip():
    spec = importlib.util.spec_from_file_location("quiet_pip", REPO / "scripts" / "quiet_pip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EDITABLE_NOTICE = """\
  /tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/setuptools/command/editable_wheel.py:354: \
BuildBackendWarning: Editable installation.
  !!

          ********************************************************************************
          Please be careful with folders in your working directory with the same
          name as your package as they may take precedence during imports.
          ********************************************************************************

  !!
    with strategy, WheelFile(wheel_path, "w") as wheel_obj:
"""


def test_pip_noise_is_dropped_and_real_messages_kept():
    quiet = _quiet_pip()
    real = ("ERROR: pip's dependency resolver does not currently take into account all the packages\n"
            "foo 1.0 requires bar<2, but you have bar 3.0 which is incompatible.\n")
    noisy = ("WARNING: Location 'file:///opt/pypi-more/simple/typer/' is ignored: it is neither a file nor a directory.\n"
             + EDITABLE_NOTICE + real + "WARNING: Location 'x' is ignored, but not the known message\n")
    assert quiet.without_noise(noisy) == real + "WARNING: Location 'x' is ignored, but not the known message\n"


def test_failing_pip_prints_its_error_and_fails():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "quiet_pip.py"), "install", "--no-index",
                           "-q", "edge-transfer-no-such-package"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "No matching distribution found for edge-transfer-no-such-package" in proc.stderr
    assert proc.stderr.rstrip().endswith(f"failed (exit {proc.returncode})")
