"""`python -m trainer bench`: one table for every variant (status, size, accuracy, latency),
saved as bench.md / bench.json; a missing or broken file is a row, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_run, run_cli

MODES = ["float32", "float16", "dynamic", "int8", "full_int8"]
EXPECTED = {"float32": "parity passed", "float16": "missing", "dynamic": "invalid", "int8": "parity FAILED",
            "full_int8": "parity passed"}


@pytest.fixture(scope="module")
def benched(converted, tmp_path_factory) -> tuple[Path, dict, str]:
    """A copy of the run with float16 deleted, dynamic truncated and int8's gate marked failed."""
    run = copy_run(converted, tmp_path_factory.mktemp("bench") / "run")
    parity = json.loads((run / "parity.json").read_text())
    (run / "model_float16.tflite").unlink()
    dynamic = run / "model_dynamic.tflite"
    dynamic.write_bytes(dynamic.read_bytes()[: 100_000])
    failed = json.loads((run / "parity.json").read_text())
    failed["variants"]["int8"].update(passed=False, failures=["agreement 80% < 97%"])
    (run / "parity.json").write_text(json.dumps(failed))
    result = run_cli("trainer", "bench", str(run), "--threads", "1,2", "--runs", "3", "--warmup", "1", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return run, parity, result.stdout


def test_bench_json_has_a_row_per_variant_with_its_numbers(benched):
    run, parity, _ = benched
    report = json.loads((run / "bench.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert [r["variant"] for r in report["variants"]] == MODES
    assert {m: rows[m]["status"] for m in MODES} == EXPECTED
    assert report["settings"]["threads"] == [1, 2] and report["settings"]["runs"] == 3
    assert report["keras"]["accuracy"] == parity["keras_accuracy"]
    for mode in ("float32", "int8"):
        row, entry = rows[mode], parity["variants"][mode]
        path = run / f"model_{mode}.tflite"
        assert row["size_bytes"] == path.stat().st_size and row["size_mb"] == round(path.stat().st_size / 1e6, 2)
        assert (row["accuracy"], row["delta_acc"], row["agreement"]) == \
            (entry["accuracy"], entry["delta_acc"], entry["agreement"])
        assert set(row["latency"]) == {"1", "2"}
        for t, lat in row["latency"].items():
            assert lat["threads"] == int(t) and lat["runs"] == 3
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] and lat["images_per_s"] > 0
        assert row["backend"]
    assert rows["int8"]["input_dtype"] == "uint8" and rows["float32"]["input_dtype"] == "float32"
    assert rows["int8"]["parity_passed"] is False and rows["float32"]["parity_passed"] is True
    for mode in ("float16", "dynamic"):  # no numbers for a file that is not there or does not load
        assert rows[mode]["latency"] == {} and rows[mode]["accuracy"] is None
    assert rows["float16"]["size_mb"] is None
    assert rows["dynamic"]["notes"]


def test_bench_md_is_one_table_and_is_what_was_printed(benched):
    run, _, stdout = benched
    md = (run / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + len(MODES)  # header, separator, keras reference, one row per variant
    header = [c.strip() for c in table[0].strip("|").split("|")]
    for column in ("status", "size MB", "accuracy", "Δ vs Keras (pt)", "p50 ms 1T", "p90 ms 1T", "img/s 1T",
                   "p50 ms 2T", "p90 ms 2T", "img/s 2T"):
        assert column in header
    rows = {line.strip("|").split("|")[0].strip(): line for line in table[3:]}
    assert list(rows) == MODES
    for mode, status in EXPECTED.items():
        assert f"| {status}" in rows[mode]
    assert all(len(line.strip("|").split("|")) == len(header) for line in table)
    assert "\n".join(table) in stdout


def test_bad_threads_is_a_one_line_user_error(tmp_path):
    result = run_cli("trainer", "bench", str(tmp_path), "--threads", "0,2", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --threads") and len(result.stderr.strip().splitlines()) == 1
