"""`make test-pi`: the edge runtime inside an emulated Raspberry Pi (arm64 Debian bookworm, Python 3.11).

For each Pi install (`edge-transfer[edge]` -> ai-edge-litert; `edge-transfer[edge-legacy]` ->
tflite-runtime 2.14 + numpy<2), in its own venv in the cached rootfs: the edge tests that need no
TensorFlow (Google's upstream cases among them), and `python -m edge classify --json` on real photos
with the shipped int8 model, compared with the same command on this x86 host. Exit 0 all good, 1 a
check failed, 2 this machine cannot run the emulated Pi (one line saying why).

Usage: python scripts/pi/run.py [--photos N] [--fresh]   (as root; `make test-pi`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from preflight import PiUnavailable, ensure_host
from rootfs import CACHE, QEMU_CPU, ROOTFS, ensure_rootfs, locked, run_in_pi
from wheelhouse import build_wheel, download

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.paths import SHARED_DATA as SHARED  # noqa: E402
from tests.paths import SHARED_DATA_ENV

WHEELHOUSE = CACHE / "pi-wheelhouse"
MODEL = Path("android_assets/model.tflite")
PHOTOS = Path("data/sample_flowers")
# The edge tests that import no trainer/TensorFlow and need no trained session model. Each
# `python -m edge` subprocess costs 5-10 s under emulation, so the slowest repeats are left to the x86 suite.
TESTS = [
    "tests/test_edge_support.py",
    "tests/test_edge_postprocess.py",
    "tests/test_edge_runtime.py",
    "tests/test_edge_classifier.py",
    "tests/test_edge_upstream.py",  # Google's own cases: libcoral cat.bmp, Task Library burger, AutoML flowers
    "tests/test_edge_cli.py",
]
DESELECT = [  # platform-independent logic, or repeats of what the Google cases and the classify check cover
    "tests/test_edge_classifier.py::test_draft_decoding_barely_changes_scores",  # 45-70 s alone
    "tests/test_edge_classifier.py::test_automl_is_mostly_right_on_real_flowers",
    "tests/test_edge_classifier.py::test_pipelined_folder_equals_one_by_one",
    "tests/test_edge_cli.py::test_corrupt_image_is_reported_and_the_rest_go_on",
    "tests/test_edge_cli.py::test_json_mode_reports_errors_as_objects",
    "tests/test_edge_cli.py::test_globs_and_label_filters",
    "tests/test_edge_cli.py::test_missing_labels_file_is_exit_2",
    "tests/test_edge_cli.py::test_cli_import_is_light_so_help_is_instant",
    "tests/test_edge_cli.py::test_bench_command_prints_percentiles",
    *(f"tests/test_edge_cli.py::test_bad_model_is_one_line_exit_2[{k}]"
      for k in ("text", "empty", "missing", "directory")),  # [truncated] stays: old runtimes crash on it
]
# what must never reach a Pi through the edge extras (picamera2 stays the user's optional choice)
FORBIDDEN_PREFIXES = ("tensorflow", "tf-keras", "keras", "opencv", "picamera2", "jax", "torch")
# inside the Pi
IN_WHEELS, IN_SCRIPTS, IN_CHECKOUT = "/mnt/wheelhouse", "/mnt/pi-scripts", "/mnt/checkout"
IN_TESTS_ROOT = "/home/pi/edge-transfer"
INSIDE_TIMEOUT_S = 1800  # one install's whole inside run; a cached one takes 3 min on a busy 2-core host
LAST_RUN = CACHE / "pi-last-run.json"  # every fact gathered, for a look after a failure


@dataclass(frozen=True)
class Install:
    """One way a Pi user installs the edge runtime, and the x86 python holding the same runtime."""

    name: str
    extra: str
    backend: str
    other_backend: str
    x86_python: str  # "venv": this .venv; else a client venv of tests/client_venvs.py
    tolerance: float  # max |score diff| against x86 with the same runtime; top-1 must agree too


# ai-edge-litert 2.3 gives bit-identical scores on aarch64 and x86. tflite-runtime 2.14 does not: from
# the same uint8 input tensor its aarch64 int8 kernels land 1-2 output steps (1/256) away on most
# photos and 13 on a near-tie (measured: 0.051), whatever QEMU_CPU says, so it gets 16 steps.
INSTALLS = (Install("edge", "edge", "ai_edge_litert", "tflite-runtime", "venv", 1e-5),
            Install("legacy", "edge-legacy", "tflite_runtime", "ai-edge-litert", "tflite_runtime", 16 / 256))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def pick_photos(n: int) -> list[Path]:
    """n real photos, spread over the classes (round-robin over the sorted class folders)."""
    classes = [sorted((REPO / PHOTOS / c.name).glob("*.jpg")) for c in sorted((REPO / PHOTOS).iterdir())
               if c.is_dir()]
    picked = [photos[i] for i in range(n) for photos in classes if i < len(photos)][:n]
    return [p.relative_to(REPO) for p in picked]


def classify_x86(inst: Install, photos: list[Path]) -> tuple[str, list[dict]]:
    """The same classify command on this host with the same runtime: ('backend version', rows)."""
    python = sys.executable
    if inst.x86_python != "venv":
        sys.path.insert(0, str(REPO / "tests"))
        from client_venvs import client_python  # builds the client venv on first use

        python = str(client_python(inst.x86_python))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    backend = subprocess.run([python, "-c", "from importlib.metadata import version; from edge.runtime import "
                              "load_backend; b = load_backend().name; print(b, version(b.replace('_', '-')))"],
                             cwd=REPO, env=env, capture_output=True, text=True).stdout.strip()
    proc = subprocess.run([python, "-m", "edge", "classify", "--json", "--top-k", "0", str(MODEL),
                           *map(str, photos)], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not backend.startswith(inst.backend):
        raise RuntimeError(f"x86 reference classify with {inst.backend} failed ({backend or 'no backend'}): "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return backend, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def compare(pi_rows: list[dict], x86_rows: list[dict]) -> tuple[int, float]:
    """(photos whose top-1 agrees, max |score difference| over every class of every photo)."""
    if len(pi_rows) != len(x86_rows):
        return 0, float("inf")
    same, worst = 0, 0.0
    for pi, x86 in zip(pi_rows, x86_rows):
        if not pi["path"].endswith(x86["path"]):
            return 0, float("inf")
        same += pi["indices"][0] == x86["indices"][0]
        a, b = dict(zip(pi["indices"], pi["scores"])), dict(zip(x86["indices"], x86["scores"]))
        worst = max([worst, *(abs(a[k] - b[k]) for k in a)] if a.keys() == b.keys() else [float("inf")])
    return same, worst


def run_install(inst: Install, photos: list[Path], fresh: bool) -> dict:
    """inside.py for one install in the emulated Pi, as user pi: its JSON facts."""
    binds = {IN_WHEELS: WHEELHOUSE, IN_SCRIPTS: Path(__file__).parent, IN_CHECKOUT: REPO,
             f"{IN_TESTS_ROOT}/tests": REPO / "tests", "/home/pi/shared/data": SHARED}
    pytest_args = [*TESTS, *(a for d in DESELECT for a in ("--deselect", d))]
    argv = ["python3", f"{IN_SCRIPTS}/inside.py", "--name", inst.name, "--extra", inst.extra,
            "--backend", inst.backend, "--wheelhouse", IN_WHEELS, "--tests-root", IN_TESTS_ROOT,
            "--pytest-args", json.dumps(pytest_args), "--model", f"{IN_CHECKOUT}/{MODEL}",
            *(["--fresh"] if fresh else []), *(f"{IN_CHECKOUT}/{p}" for p in photos)]
    try:
        proc = run_in_pi(argv, binds=binds, capture=True, timeout=INSIDE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"name": inst.name, "error": f"inside run took over {INSIDE_TIMEOUT_S} s"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"name": inst.name, "error": f"inside run failed (rc {proc.returncode}): "
                                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}"}


def judge(inst: Install, res: dict, x86: tuple[str, list[dict]]) -> tuple[str, list[str]]:
    """One summary line and the list of problems for one install."""
    if "error" in res:
        return f"[{inst.name}] {res['error']}", [f"{inst.name}: {res['error']}"]
    probe, tests, pkgs = res["probe"], res["tests"], res["packages"]
    problems = []
    if "error" in probe:
        problems.append(f"probe failed: {probe['error'].strip().splitlines()[-1]}")
        probe = {}
    expect = {"machine": "aarch64", "backend_auto": inst.backend, "backend_model": inst.backend,
              "tensorflow_loaded": False, "sve": False}
    problems += [f"{k} is {probe.get(k)!r}, expected {v!r}" for k, v in expect.items() if probe.get(k) != v]
    if not probe.get("python", "").startswith("3.11") or "/venvs/" not in probe.get("edge_file", "/venvs/"):
        problems.append(f"python {probe.get('python')} / edge from {probe.get('edge_file')} (want 3.11, the venv)")
    bad = sorted(p for p in pkgs if p.startswith(FORBIDDEN_PREFIXES) or p == inst.other_backend)
    problems += [f"installed {p} {pkgs[p]} (must not be)" for p in bad]
    if inst.backend == "tflite_runtime" and not pkgs.get("numpy", "").startswith("1."):
        problems.append(f"numpy {pkgs.get('numpy')} with tflite-runtime 2.14 (want <2)")
    if tests["failed"] or not tests["passed"] or tests["rc"] != 0:
        problems.append(f"tests failed: {', '.join(tests['failed_names']) or tests['tail'][-300:]}")
    x86_backend, x86_rows = x86
    rows = res["classify"]
    same, worst = compare(rows, x86_rows)
    if res["classify_rc"] != 0 or same != len(x86_rows) or worst > inst.tolerance:
        problems.append(f"classify vs x86: rc {res['classify_rc']}, top-1 {same}/{len(x86_rows)}, "
                        f"max |diff| {worst:.3g} {res['classify_stderr'].strip()[-200:]}")
    dist = inst.backend.replace("_", "-")
    t = res["timings"]
    line = (f"[{inst.name}] {probe.get('machine')} ({probe.get('cpu_model')}, QEMU_CPU={QEMU_CPU}, "
            f"SVE {'yes' if probe.get('sve') else 'no'}), Python {probe.get('python')}, backend "
            f"{probe.get('backend_model')} {pkgs.get(dist)}, numpy {pkgs.get('numpy')}: tests {tests['passed']} "
            f"passed, {tests['failed']} failed, {tests['skipped']} skipped; classify {len(rows)} photos vs x86 "
            f"{x86_backend}: top-1 {same}/{len(x86_rows)} equal, max |score diff| {worst:.2g} (<= {inst.tolerance:.2g}) "
            f"({res['install']} {t['install_s']:.0f} s, tests {t['tests_s']:.0f} s, classify {t['classify_s']:.0f} s)")
    line += f"\ntest-pi: [{inst.name}] installed: " + ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items()))
    return line, [f"{inst.name}: {p}" for p in problems]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=20, help="real photos classified on both machines")
    ap.add_argument("--fresh", action="store_true", help="new Pi venvs even when the cached ones fit")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        ensure_host()
        for path, what in ((SHARED, f"shared data ({SHARED_DATA_ENV})"), (REPO / MODEL, "shipped model")):
            if not path.exists():
                raise PiUnavailable(f"{what} not found at {path}")
        with locked():
            marker = ensure_rootfs()
            WHEELHOUSE.mkdir(parents=True, exist_ok=True)
            wheel = build_wheel(REPO, WHEELHOUSE)
            download(wheel, WHEELHOUSE, [i.extra for i in INSTALLS], ["pytest"])
            photos = pick_photos(args.photos)
            x86 = {inst.name: classify_x86(inst, photos) for inst in INSTALLS}
            print(f"test-pi: rootfs {ROOTFS} (Debian bookworm arm64, Python {marker['python']}); "
                  f"{len(photos)} photos; the two Pi venvs run side by side", flush=True)
            with ThreadPoolExecutor(len(INSTALLS)) as pool:
                results = list(pool.map(lambda inst: run_install(inst, photos, args.fresh), INSTALLS))
    except (PiUnavailable, RuntimeError) as e:
        print(f"test-pi: {e}", file=sys.stderr)
        return 2
    atomic_write(LAST_RUN, json.dumps({"x86": x86, "pi": results}))
    problems = []
    for inst, res in zip(INSTALLS, results):
        line, bad = judge(inst, res, x86[inst.name])
        print(f"test-pi: {line}", flush=True)
        problems += bad
    for p in problems:
        print(f"test-pi: FAIL {p}", file=sys.stderr)
    print(f"test-pi: {'FAILED' if problems else 'OK'} in {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
