"""Atomic writes: a file goes to a temp file in the target's folder, then os.replace; a folder is
built beside its target and swapped in with renames (:func:`swap_in`).

A crash or Ctrl-C leaves either the old file (folder) or the complete new one, never half of one.
Files and folders get the modes the umask gives any new file (0644 / 0755 under 022): mkstemp
and mkdtemp make them 0600 / 0700, and a rename keeps that.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"
NEW_MARK, OLD_MARK = ".new-", ".old-"  # ".<folder>.new-XXXXXXXX": a replacement being built; .old-: the one it replaces
# ".<final name>.tmp-<8 random chars><suffix>" (and the older ".<final name>.<8 random chars><suffix>")
_TEMP_NAME = re.compile(r"^\..+\.(tmp-)?[a-z0-9_]{8}(\.\w+)?$")
_UMASK_LOCK = threading.Lock()
_STATUS = "/proc/self/status"  # Linux: "Umask:\t0022"


def is_temp_name(name: str) -> bool:
    """Is this the name of a temp file :func:`atomic_path` makes?"""
    return bool(_TEMP_NAME.match(name))


def umask() -> int:
    """The process umask. Linux shows it in /proc (nothing changes); elsewhere it is set and put
    back, briefly to 0o077 so a file another thread creates meanwhile is private, not open."""
    try:
        with open(_STATUS, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file now (0o644 under umask 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode mkdir() gives a new folder now (0o755 under umask 022)."""
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None):
    """Yield a temp path next to ``final``; on success rename it into place, else delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{TEMP_MARK}", suffix=suffix or final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, file_mode())  # mkstemp's 0600 would survive the rename
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(final)


def write_text(final: str | Path, text: str) -> Path:
    return write_bytes(final, text.encode("utf-8"))


def write_json(final: str | Path, obj) -> Path:
    return write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


# --------------------------------------------------------------------------- folders
def final_name(path: str | Path) -> str:
    """The name of the folder a staging folder will become (".runs.new-ab12cd34" -> "runs"), so
    what is written while building (a page title) already names the final folder."""
    name = Path(path).name
    match = re.match(rf"^\.(.+){re.escape(NEW_MARK)}[a-z0-9_]{{8}}$", name)
    return match.group(1) if match else name


def staging_dir(dest: str | Path) -> Path:
    """A fresh hidden sibling of ``dest`` to build its replacement in (same filesystem, so the
    swap is renames only), with a new folder's mode rather than mkdtemp's 0700."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{dest.name}{NEW_MARK}", dir=dest.parent))
    os.chmod(path, dir_mode())
    return path


def _free_sibling(dest: Path, mark: str) -> Path:
    """An unused hidden name beside ``dest`` (made by mkdtemp, then freed for a rename)."""
    path = Path(tempfile.mkdtemp(prefix=f".{dest.name}{mark}", dir=dest.parent))
    path.rmdir()
    return path


def _sync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a power cut, not only a kill); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_steps(build: str | Path, dest: str | Path) -> Iterator[str]:
    """Replace ``dest`` by the complete folder ``build`` (same parent) with renames only, yielding
    after each step so a test can stop there as a kill would: dest -> .dest.old-X ("moved aside"),
    build -> dest ("swapped"), the old one deleted ("done"). A kill between the first two leaves
    dest missing and the old run whole beside it: :func:`recover` puts it back. If the second
    rename fails the old folder is put back at once."""
    build, dest = Path(build), Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = _free_sibling(dest, OLD_MARK)
        os.rename(dest, old)
        yield "moved aside"
    try:
        os.rename(build, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    _sync_dir(dest.parent)
    yield "swapped"
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    yield "done"


def swap_in(build: str | Path, dest: str | Path) -> None:
    """:func:`swap_steps`, all of them."""
    for _ in swap_steps(build, dest):
        pass


def leftovers(dest: str | Path) -> tuple[list[Path], list[Path]]:
    """(.dest.new-*, .dest.old-*) beside ``dest``: what killed builds and swaps left."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return [], []
    found = {mark: [] for mark in (NEW_MARK, OLD_MARK)}
    for p in dest.parent.iterdir():
        for mark in found:
            if p.name.startswith(f".{dest.name}{mark}") and len(p.name) == len(dest.name) + len(mark) + 9:
                found[mark].append(p)
    return sorted(found[NEW_MARK]), sorted(found[OLD_MARK], key=lambda p: p.stat().st_mtime, reverse=True)


def recover(dest: str | Path) -> list[str]:
    """Undo what a killed build or swap of ``dest`` left: when dest is missing the old folder is
    put back; every other leftover is deleted. Returns what it did, one phrase each. Only one
    process may build ``dest`` at a time (this deletes a live build too)."""
    dest = Path(dest)
    news, olds = leftovers(dest)
    done = []
    if olds and not (dest.exists() or dest.is_symlink()):
        os.rename(olds[0], dest)
        done.append(f"restored {dest} from {olds[0].name} (a swap was killed)")
        olds = olds[1:]
    for p in news + olds:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        done.append(f"removed {p.name} (left by a killed run)")
    if done:
        _sync_dir(dest.parent)
    return done
