"""Run directories for tests: a trained run converted to every TFLite variant, once per session.

Plain functions (memoized per process); conftest.py wraps them in the session fixtures
`converted` and `confident_photo`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import run_cli

# 40 test photos: one photo is 2.5 points, so the production gate (>= 97% agreement, >= -1 point)
# would turn on one borderline photo. The suite gates at a photo-count scale instead.
TEST_GATE = ("--min-agreement", "90", "--min-delta-acc", "-5")
CALIBRATION_IMAGES = "40"

_converted: dict[Path, tuple[Path, subprocess.CompletedProcess]] = {}


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run directory (tests that rewrite files must not touch shared ones)."""
    shutil.copytree(run, dest)
    return dest


def converted_run(trained: Path, root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of ``trained`` under ``root`` after `python -m trainer convert --mode all`."""
    key = Path(trained).resolve()
    if key not in _converted:
        out = copy_run(trained, Path(root) / "converted")
        result = run_cli("trainer", "convert", str(out), "--mode", "all",
                         "--calibration-images", CALIBRATION_IMAGES, *TEST_GATE)
        _converted[key] = (out, result)
    return _converted[key]
