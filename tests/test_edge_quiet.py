"""A quiet console: edge.quiet drops the runtime's C++ INFO banner, never its warnings or errors."""

import os
import statistics
import struct
import subprocess
import sys
import time

import pytest
from test_edge_support import REPO, run_edge

from edge.flatbuffer import FlatBuffer
from edge.quiet import runtime_info_filtered, without_info_lines

MODEL = REPO / "android_assets" / "model.tflite"  # the shipped int8 flower model
ROSE = sorted((REPO / "data" / "sample_flowers" / "roses").glob("*.jpg"))[0]
BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_without_info_lines_keeps_everything_else_byte_for_byte():
    data = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: w\n INFO: indented\nERROR: e"
    assert without_info_lines(data) == b"WARNING: w\n INFO: indented\nERROR: e"
    assert without_info_lines(b"") == b""


def test_fd_level_output_passes_except_info_lines(capfd):
    with runtime_info_filtered():
        os.write(2, f"{BANNER}\nWARNING: kept 1\n".encode())
        with runtime_info_filtered():  # nested: bench wraps make_interpreter, which filters too
            os.write(2, b"INFO: inner\nERROR: kept 2\n")
        os.write(2, b"ERROR: kept 3 (no newline)")
        os.write(1, b"stdout untouched\n")
    out, err = capfd.readouterr()
    assert err == "WARNING: kept 1\nERROR: kept 2\nERROR: kept 3 (no newline)"
    assert out == "stdout untouched\n"


def test_output_survives_an_exception_in_the_block(capfd):
    with pytest.raises(RuntimeError):
        with runtime_info_filtered():
            os.write(2, b"INFO: x\nERROR: before the raise\n")
            raise RuntimeError("boom")
    assert capfd.readouterr().err == "ERROR: before the raise\n"
    os.write(2, b"after\n")  # fd 2 is restored
    assert capfd.readouterr().err == "after\n"


def test_filter_cost_is_negligible():
    """Measured ~0.1 ms per block (a temp file + two dup2), against ~7 ms for make_interpreter."""
    times = []
    for _ in range(200):
        start = time.perf_counter()
        with runtime_info_filtered():
            pass
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.002


def _raw_interpreter_stderr(model_path) -> str:
    """stderr of the installed runtime building the model with no filter (is there a banner?)."""
    code = ("import sys; from edge.runtime import load_backend; b = load_backend(); "
            "i = b.interpreter_class(model_content=open(sys.argv[1], 'rb').read(), num_threads=1)\n"
            "try: i.allocate_tensors()\nexcept Exception: pass")
    return subprocess.run([sys.executable, "-c", code, str(model_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60).stderr


def _with_input_channels(data: bytes, channels: int) -> bytes:
    """The model with its input tensor's last dimension changed in place: it still parses and
    validates, but the runtime rejects it in allocate_tensors, after printing its banner."""
    subgraph = FlatBuffer(data, "model").root().tables(2)[0]
    tensor = subgraph.tables(0)[subgraph.scalars(1, "i")[0]]
    shape = tensor._deref(tensor.field(0))
    n = struct.unpack_from("<I", data, shape)[0]
    out = bytearray(data)
    struct.pack_into("<i", out, shape + 4 * n, channels)
    return bytes(out)


def test_cli_drops_the_banner_that_the_bare_runtime_prints():
    """ai-edge-litert prints the banner (tflite-runtime 2.14 does not): either way, nothing on stderr."""
    proc = run_edge("classify", MODEL, ROSE, "--top-k", "1", "--threads", "1")
    assert proc.returncode == 0 and proc.stdout.split(": ")[1].startswith("roses")
    assert proc.stderr == ""


def test_a_runtime_error_still_reaches_stderr_without_the_banner(tmp_path):
    bad = tmp_path / "four_channels.tflite"
    bad.write_bytes(_with_input_channels(MODEL.read_bytes(), 4))
    raw = _raw_interpreter_stderr(bad)
    proc = run_edge("classify", bad, ROSE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: the ") and "rejected the model" in lines[0]
    assert "failed to prepare" in lines[0]  # the runtime's own words
    assert "INFO" not in proc.stderr
    if BANNER in raw:  # the runtime did print its banner for this very model
        assert BANNER not in proc.stderr
