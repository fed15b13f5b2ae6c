"""Atomic file writes: content goes to a temp file in the target's folder, then os.replace.

A crash or Ctrl-C leaves either the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

TEMP_MARK = ".tmp-"
# ".<final name>.tmp-<8 random chars><suffix>" (and the older ".<final name>.<8 random chars><suffix>")
_TEMP_NAME = re.compile(r"^\..+\.(tmp-)?[a-z0-9_]{8}(\.\w+)?$")


def is_temp_name(name: str) -> bool:
    """Is this the name of a temp file :func:`atomic_path` makes?"""
    return bool(_TEMP_NAME.match(name))


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None):
    """Yield a temp path next to ``final``; on success rename it into place, else delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{TEMP_MARK}", suffix=suffix or final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
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
