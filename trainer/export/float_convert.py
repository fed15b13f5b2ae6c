"""The uncalibrated conversions (float32, float16, dynamic), here or in a second process.

Each converter run and the int8 calibration use about one core. When an export does both, the
uncalibrated ones run in a child process (``python -m trainer.export.float_convert``) from the same
exported SavedModel while this process calibrates: measured in benchmarks/bench_convert.py. A
plain child process, not multiprocessing: spawn would re-run the caller's main script in the
child, and TensorFlow is not fork-safe.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainer import atomic
from trainer.export.tflite import ConversionError, converter_for, run_converter
from trainer.export.variants import MODES, Quantization

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding trainer/


def convert_model(source, quant: Quantization) -> bytes:
    """A Keras model or its exported SavedModel -> TFLite bytes for an uncalibrated mode (no
    metadata yet)."""
    converter = converter_for(source)
    quant.configure(converter)
    return run_converter(converter)


def claim(out: Path, mode: str) -> bool:
    """Take ``mode`` for this process; False when the other took it first (O_EXCL decides)."""
    try:
        os.close(os.open(out / f"{mode}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class Beside:
    """Uncalibrated modes converting in a child process, first to last. Once calibrated, this
    process takes the ones the child has not started, last first (:meth:`steal`); the two meet in
    the middle, whatever the calibration took."""

    def __init__(self, proc: subprocess.Popen, saved_model: Path, out: Path, log: Path):
        self.proc, self.saved_model, self.out, self.log = proc, saved_model, out, log
        self.stolen: dict[str, bytes] = {}

    def steal(self, modes: list[str]) -> None:
        for mode in reversed(modes):
            if not claim(self.out, mode):
                return
            self.stolen[mode] = convert_model(self.saved_model, MODES[mode])

    def get(self, mode: str) -> bytes:
        if mode in self.stolen:
            return self.stolen[mode]
        if self.proc.wait() != 0:
            lines = self.log.read_text(errors="replace").strip().splitlines()
            raise ConversionError(lines[-1] if lines else f"the float conversions exited {self.proc.returncode}")
        return (self.out / f"{mode}.tflite").read_bytes()


@contextlib.contextmanager
def beside(saved_model: Path, modes: list[str]) -> Iterator[Beside]:
    """Start converting ``modes`` from ``saved_model`` in a child process; killed on the way out
    if still running (an error or Ctrl-C here), its files deleted."""
    with tempfile.TemporaryDirectory(prefix="edge-transfer-floats-") as folder:
        out = Path(folder)
        log = out / "stderr.txt"
        # this checkout's trainer, installed or not; TensorFlow's C++ banners off unless asked for
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        with open(log, "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "trainer.export.float_convert", str(saved_model), str(out), *modes],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            yield Beside(proc, saved_model, out, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    """The child: convert each mode not taken by the parent into OUT/<mode>.tflite, in order."""
    saved_model, out, modes = argv[0], Path(argv[1]), argv[2:]
    try:
        for mode in modes:
            if not claim(out, mode):
                break  # the parent took this one and every one after it
            atomic.write_bytes(out / f"{mode}.tflite", convert_model(saved_model, MODES[mode]))
    except ConversionError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
