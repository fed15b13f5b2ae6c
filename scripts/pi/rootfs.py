"""A cached arm64 Debian bookworm root filesystem (the base of Raspberry Pi OS 64-bit, Python 3.11).

Built once with debootstrap into a `.partial` directory, then renamed into place with a marker that
records its recipe: a half-built or outdated rootfs is never reused. One lock serialises builds and runs.
Commands run in it through chroot inside a private mount namespace (`unshare -m`), so the mounts vanish
with the process and never leak onto the host or into the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-transfer"
ROOTFS = CACHE / "pi-rootfs"
MARKER = ".edge-transfer-complete"
MIRROR = os.environ.get("EDGE_TRANSFER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RECIPE = {"suite": "bookworm", "arch": "arm64", "variant": "minbase",
          "include": ["python3", "python3-venv"], "user": "pi", "version": 1}
# A Pi 4 (Cortex-A72): qemu 7.2 passes the host's x86 /proc/cpuinfo through, which crashes
# ai-edge-litert's CPU detection, and its default CPU has SVE/i8mm paths no Pi has.
CPUINFO = Path(__file__).with_name("cpuinfo-pi4.txt")
QEMU_CPU = "cortex-a72"
PI_PATH = "/usr/local/bin:/usr/bin:/bin"


_held: list[int] = []  # the lock's fd while held; debootstrap inherits it, so if we are killed
# mid-build the orphaned debootstrap still holds the lock and nobody deletes the tree under it


@contextmanager
def locked():
    """Hold the one test-pi lock (builds and runs share the rootfs)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "pi.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("test-pi: waiting for another test-pi run to finish (lock)", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        _held.append(fh.fileno())
        try:
            yield
        finally:
            _held.remove(fh.fileno())


def _remove(path: Path) -> None:
    """rm -rf a cache directory, first lazily unmounting anything a killed debootstrap left mounted."""
    assert CACHE in path.parents, path
    mounts = [ln.split()[4].encode().decode("unicode_escape")
              for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    for m in sorted((m for m in mounts if Path(m) == path or path in Path(m).parents), reverse=True):
        subprocess.run(["umount", "-l", m], check=True)
    if path.exists():
        shutil.rmtree(path)


def _complete(root: Path) -> dict | None:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("recipe") == RECIPE else None


def _build(dest: Path) -> dict:
    part = dest.with_name(dest.name + ".partial")
    _remove(part)
    log = CACHE / "pi-rootfs.build.log"
    print(f"test-pi: building the arm64 bookworm rootfs once (5-12 min, log {log})", flush=True)
    t0 = time.monotonic()
    cmd = ["debootstrap", f"--arch={RECIPE['arch']}", f"--variant={RECIPE['variant']}",
           "--include=" + ",".join(RECIPE["include"]), RECIPE["suite"], str(part), MIRROR]
    with open(log, "w") as fh:
        if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, pass_fds=tuple(_held)).returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"debootstrap failed ({tail[0]}); see {log}")
        for step in (["useradd", "--create-home", "--shell", "/bin/bash", RECIPE["user"]],
                     ["apt-get", "clean"]):
            subprocess.run(["chroot", str(part), *step], stdout=fh, stderr=subprocess.STDOUT, check=True)
    shutil.rmtree(part / "var/lib/apt/lists", ignore_errors=True)
    python = subprocess.run(["chroot", str(part), "python3", "-c",
                             "import platform; print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    marker = {"recipe": RECIPE, "python": python, "build_s": round(time.monotonic() - t0, 1)}
    (part / MARKER).write_text(json.dumps(marker))
    _remove(dest)
    part.rename(dest)
    print(f"test-pi: rootfs built in {marker['build_s']:.0f} s (Python {python})", flush=True)
    return marker


def ensure_rootfs(root: Path = ROOTFS) -> dict:
    """The marker of a complete rootfs for RECIPE, building it first if needed (call under `locked`)."""
    return _complete(root) or _build(root)


def run_in_pi(argv: list[str], *, binds: dict[str, Path] | None = None, env: dict | None = None,
              cwd: str = "/home/pi", user: str = "pi", root: Path = ROOTFS,
              timeout: float = 1800, capture: bool = False) -> subprocess.CompletedProcess:
    """Run argv in the emulated Pi as `user`; binds maps a path inside to a host path (read-only)."""
    r = shlex.quote(str(root))
    lines = ["set -e", f"mount -t proc proc {r}/proc",
             f"mount --bind {shlex.quote(str(CPUINFO))} {r}/proc/cpuinfo",
             f"mount -t sysfs sysfs {r}/sys", f"mount --rbind /dev {r}/dev",
             f"mount -t tmpfs tmpfs {r}/tmp"]
    for inside, host in (binds or {}).items():
        t = shlex.quote(f"{root}{inside}")
        lines += [f"mkdir -p {t}", f"mount --bind {shlex.quote(str(host))} {t}",
                  f"mount -o remount,bind,ro {t}"]
    pi_env = {"HOME": f"/home/{user}" if user != "root" else "/root", "USER": user, "PATH": PI_PATH,
              "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU, **(env or {})}
    inner = " ".join(shlex.quote(a) for a in
                     ["env", "-i", *(f"{k}={v}" for k, v in pi_env.items()), "sh", "-c",
                      'cd "$0" && exec "$@"', cwd, *argv])
    lines.append(f"exec chroot --userspec={user}:{user} {r} {inner}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                          env={**os.environ, "QEMU_CPU": QEMU_CPU}, timeout=timeout,
                          capture_output=capture, text=True)


if __name__ == "__main__":  # build (or check) the cached rootfs alone
    from preflight import PiUnavailable, ensure_host

    try:
        ensure_host()
        with locked():
            print(json.dumps(ensure_rootfs()))
    except (PiUnavailable, RuntimeError) as e:
        sys.exit(f"test-pi: {e}")
