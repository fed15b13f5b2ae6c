"""Seeded fuzzing of model loading on both backends (engine: tests/model_fuzz.py).

A few hundred damaged copies of real models (ours and Google's: truncations, bit flips,
overwritten offsets, zeroed spans, junk, damaged labels zip) each classify or fail with one
``error:`` line and exit 2. A segfault, a hang or a traceback fails the test and names the
mutant (rebuild it with model_fuzz.make_mutant; scripts/fuzz_models.py runs thousands).
"""

from __future__ import annotations

import model_fuzz
import pytest
from model_fuzz import FAILURES, judge, run_fuzz, summary

COUNT = 300
SEED = 20261202


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return model_fuzz.prepare_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def assert_clean(results: list) -> None:
    counts = summary(results)
    failures = [f"mutant {r.i} ({r.seed_model}: {r.mutation}): {r.outcome}: {r.detail}"
                for r in results if r.outcome in FAILURES]
    assert not failures, f"{counts}\n" + "\n".join(failures)
    # both outcomes are exercised: the mutations are neither all harmless nor all rejected early
    assert counts["ok"] >= COUNT // 10 and counts["error"] >= COUNT // 10, counts


def test_fuzz_ai_edge_litert(seeds):
    assert_clean(run_fuzz("ai_edge_litert", COUNT, SEED, seeds))


@pytest.mark.clients
def test_fuzz_tflite_runtime_2_14(seeds):
    """tflite-runtime 2.14 does not verify model files: only edge's verifier stands between a
    damaged file and a segfault."""
    assert_clean(run_fuzz("tflite_runtime", COUNT, SEED, seeds))


def test_mutants_are_reproducible(seeds):
    a = model_fuzz.make_mutant(seeds, SEED, 7, {})
    assert a == model_fuzz.make_mutant(seeds, SEED, 7, {})
    assert a != model_fuzz.make_mutant(seeds, SEED, 8, {})


def test_harness_reports_crashes_and_hangs_and_goes_on(seeds, monkeypatch):
    """A worker killed by a signal or stalled is reported at the right mutant; the rest still run."""
    monkeypatch.setenv("EDGE_FUZZ_SELFTEST", "crash:1,hang:3")
    results = run_fuzz("ai_edge_litert", 5, SEED, seeds, jobs=1, timeout=3)
    outcomes = [r.outcome for r in results]
    assert [r.i for r in results] == [0, 1, 2, 3, 4]
    assert outcomes[1] == "crash" and "SIGSEGV" in results[1].detail
    assert outcomes[3] == "hang"
    assert all(o in ("ok", "error") for o in outcomes[:1] + outcomes[2:3] + outcomes[4:]), outcomes


@pytest.mark.parametrize("rc,escaped,text,outcome", [
    (None, None, 'INFO: Created\n{"path": "p", "labels": ["a"]}\n', "ok"),
    (2, None, "INFO: x\nwarning: labels\nerror: bad model\n", "error"),
    (2, None, "error: bad model\nERROR: the runtime's own line\n", "bad"),
    (1, None, "error: one\n", "bad"),
    (None, "UnicodeDecodeError: x", "", "traceback"),
    (2, None, "Traceback (most recent call last):\nerror: x\n", "traceback"),
])
def test_judge(rc, escaped, text, outcome):
    assert judge(rc, escaped, text)[0] == outcome
