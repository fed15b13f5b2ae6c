"""Run tf.lite.TFLiteConverter quietly: the MLIR converter prints pages from C++ and Python.

Used by the exporter (every variant) and the feature cache (the frozen base as float32 TFLite).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile


class ConversionError(RuntimeError):
    """The converter failed or a converted file broke a promise of its mode (one line)."""


def run_converter(converter) -> bytes:
    """converter.convert() with stdout/stderr swallowed; a failure becomes one ConversionError line
    carrying the tail of what the converter said."""
    with _silenced(), contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


@contextlib.contextmanager
def _silenced():
    """Swallow everything written to stdout/stderr, Python and C++ alike (the MLIR converter
    prints from C++); on error the captured tail goes into the exception message."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            sink.seek(0)
            tail = sink.read().decode("utf-8", errors="replace").strip().splitlines()[-3:]
            first = (str(exc).strip().splitlines() or [""])[0]
            said = f" | converter said: {' / '.join(tail)}" if tail else ""
            raise ConversionError(f"{type(exc).__name__}: {first}{said}") from exc
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
