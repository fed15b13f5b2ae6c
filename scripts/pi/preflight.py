"""Make this machine able to run arm64 binaries (qemu-user-static + binfmt_misc), or say in one line why not.

Every failure is a `PiUnavailable` with one line for the user; `make test-pi` never skips silently.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

PACKAGES = ("qemu-user-static", "debootstrap", "binfmt-support")
APT_LINE = "sudo apt-get update && sudo apt-get install -y " + " ".join(PACKAGES)
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENTRY = BINFMT / "qemu-aarch64"


class PiUnavailable(RuntimeError):
    """This machine cannot run the emulated Pi; the message is the one line to show."""


def _missing_packages() -> list[str]:
    if shutil.which("dpkg") is None:
        raise PiUnavailable("needs a Debian/Ubuntu host (dpkg, apt-get) for qemu-user-static and debootstrap")
    return [p for p in PACKAGES
            if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]


def _install(packages: list[str]) -> None:
    print(f"test-pi: installing {' '.join(packages)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            raise PiUnavailable(f"`{' '.join(cmd)}` failed: {last[0]}")


def _register_binfmt() -> None:
    """Mount binfmt_misc and enable qemu-aarch64 with the F flag (interpreter opened at registration)."""
    if not (BINFMT / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise PiUnavailable("binfmt_misc cannot be mounted here (kernel or container without it): "
                                + (r.stderr.strip() or "mount failed"))
    if not ENTRY.exists() or "enabled" not in ENTRY.read_text():
        r = subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
        if r.returncode != 0 or not ENTRY.exists():
            raise PiUnavailable("cannot register qemu-aarch64 with binfmt_misc: "
                                + (r.stderr.strip() or "update-binfmts failed"))
    flags = next((ln.split(":", 1)[1].strip() for ln in ENTRY.read_text().splitlines()
                  if ln.startswith("flags:")), "")
    if "F" not in flags:
        raise PiUnavailable(f"qemu-aarch64 is registered without the F flag ({flags!r}); "
                            "reinstall qemu-user-static so chroots can run arm64 binaries")


def ensure_host() -> None:
    """Root, Debian packages and binfmt_misc; installs what is missing when it may."""
    if platform.system() != "Linux":
        raise PiUnavailable(f"needs Linux (chroot, binfmt_misc), not {platform.system()}")
    missing = _missing_packages()
    if os.geteuid() != 0:
        hint = f"; first: {APT_LINE}" if missing else ""
        raise PiUnavailable(f"needs root (debootstrap, chroot, binfmt_misc): run `make test-pi` as root{hint}")
    if missing:
        _install(missing)
    if platform.machine() != "aarch64":
        _register_binfmt()
