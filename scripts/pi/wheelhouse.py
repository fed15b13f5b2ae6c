"""An aarch64 / CPython 3.11 wheelhouse: our wheel built from the checkout plus its dependencies.

Downloading host-side (`pip download --platform ...`) is much faster than pip under emulation. The
third-party wheels stay cached between runs (offline first, the index only when something is new);
our own wheel is rebuilt from the working tree (uncommitted changes included) every run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Debian bookworm has glibc 2.36; tflite-runtime 2.14 ships only manylinux_2_34, Pillow manylinux_2_28,
# and pip does not widen a manylinux_2_X tag to the older ones by itself.
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64",
                                                                             "linux_aarch64"]
PYTHON = "3.11"
PROJECT = "edge_transfer"


def build_wheel(repo: Path, out: Path) -> Path:
    """Our wheel from the files git would see (tracked + untracked, not ignored), as they are now."""
    for old in out.glob(f"{PROJECT}-*.whl"):
        old.unlink()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=repo, capture_output=True, check=True).stdout.decode().split("\0")
    with tempfile.TemporaryDirectory(prefix="et-src-") as tmp:
        for rel in filter(None, files):
            src = repo / rel
            if src.is_file():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, Path(tmp) / rel)
        _pip("wheel", "--no-deps", "-w", str(out), tmp)
    (wheel,) = out.glob(f"{PROJECT}-*.whl")
    return wheel


def download(wheel: Path, out: Path, extras: list[str], more: list[str]) -> None:
    """Every dependency of wheel[extra] (and `more`) for aarch64, into out; offline when all are there."""
    flags = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
             *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(out)]
    for extra in extras:
        reqs = [f"{wheel}[{extra}]", *more]
        try:
            _pip("download", "--no-index", "--find-links", str(out), *flags, *reqs)
        except RuntimeError:
            _pip("download", *flags, *reqs)


def _pip(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"pip {args[0]} failed: {last}")
