"""Keep the TFLite runtime's C++ INFO chatter off the console, and nothing else.

The interpreter writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
file descriptor 2 from C++ (ai-edge-litert prints it in allocate_tensors), where neither
``logging`` nor ``TF_CPP_MIN_LOG_LEVEL`` reaches. So for the few calls that print it, fd 2 is
pointed at a temporary file and everything but ``INFO:`` lines is written back afterwards:
warnings and errors still reach stderr, once, in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

DROPPED_PREFIX = b"INFO: "


def without_info_lines(data: bytes) -> bytes:
    """``data`` minus every line that starts with the runtime's ``INFO:`` prefix."""
    return b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(DROPPED_PREFIX))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):  # no sys.stderr, or a closed one
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:  # stderr went away (a closed pipe): nothing left to tell
        pass


@contextlib.contextmanager
def runtime_info_filtered() -> Iterator[None]:
    """Run the block with C++ ``INFO:`` lines on fd 2 dropped; other output is passed on.

    Process-wide while it lasts (fd 2 is shared): another thread's stderr in that window is
    delayed to the end of the block, not lost. With no usable fd 2 or temp dir it filters nothing.
    """
    _flush_stderr()
    try:
        sink = tempfile.TemporaryFile()
    except OSError:
        sink = None
    try:
        saved = os.dup(2) if sink is not None else None
    except OSError:
        saved = None
    if saved is None:
        if sink is not None:
            sink.close()
        yield
        return
    try:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            sink.seek(0)
            _write_all(2, without_info_lines(sink.read()))
    finally:
        os.close(saved)
        sink.close()
