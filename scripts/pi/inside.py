"""Runs inside the emulated Pi (system Python 3.11, stdlib only): one venv, installed as a Pi user would.

Installs `edge-transfer[EXTRA]` + pytest into ~/venvs/NAME from the read-only wheelhouse with
--no-index (see `install`), then gathers facts for the host to judge: installed packages, platform and backend, the
pytest outcome (junit XML) and `python -m edge classify --json` rows. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

PROBE = """
import ctypes, json, platform, sys
import numpy
import edge
from edge.runtime import load_backend, make_interpreter
model = make_interpreter(sys.argv[1], num_threads=1)
hwcap = ctypes.CDLL(None).getauxval
hwcap.restype = ctypes.c_ulong
cpuinfo = open("/proc/cpuinfo").read()
print(json.dumps({
    "machine": platform.machine(), "python": platform.python_version(), "edge_file": edge.__file__,
    "backend_auto": load_backend().name, "backend_model": model.backend, "numpy": numpy.__version__,
    "sve": bool(hwcap(16) & (1 << 22)),
    "cpu_model": next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("Model")), ""),
    "tensorflow_loaded": any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules),
}))
"""


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def install_key(wheelhouse: str, extra: str) -> str:
    """What the venv's resolution depends on: every third-party wheel on offer, our requirements, Python."""
    ours = sorted(Path(wheelhouse).glob("edge_transfer-*.whl"))[-1]
    with zipfile.ZipFile(ours) as whl:
        meta = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = sorted(line for line in meta.splitlines() if line.startswith("Requires-Dist:"))
    others = sorted(p.name for p in Path(wheelhouse).glob("*.whl") if p != ours)
    return hashlib.sha256(json.dumps([extra, sys.version, requires, others]).encode()).hexdigest()


def install(venv: Path, wheelhouse: str, extra: str, fresh: bool) -> tuple[str, subprocess.CompletedProcess]:
    """`pip install "edge-transfer[EXTRA]" pytest` offline. A venv built for the same key is reused
    (install time dominates under emulation): only our wheel is reinstalled, then the same install
    command runs again, so pip still resolves every requirement from the wheelhouse on the Pi."""
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
           "--find-links", wheelhouse]
    key, key_file = install_key(wheelhouse, extra), venv / ".edge-transfer-key"
    cached = not fresh and key_file.exists() and key_file.read_text() == key
    if cached:
        ours = sorted(Path(wheelhouse).glob("edge_transfer-*.whl"))[-1]
        step = run([*pip, "--force-reinstall", "--no-deps", ours])
    else:
        shutil.rmtree(venv, ignore_errors=True)
        step = run([sys.executable, "-m", "venv", venv])
    step = step if step.returncode else run([*pip, f"edge-transfer[{extra}]", "pytest"])
    if step.returncode == 0 and not cached:
        key_file.write_text(key)
    return ("cached venv, our wheel reinstalled" if cached else "fresh venv"), step


def junit_counts(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed_names = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            failed_names.append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failed_names": failed_names}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--extra", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--wheelhouse", required=True)
    ap.add_argument("--tests-root", required=True, help="folder holding tests/ (the repo layout)")
    ap.add_argument("--pytest-args", required=True, help="JSON list: test files, --deselect ...")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fresh", action="store_true", help="a new venv even when the cached one fits")
    ap.add_argument("photos", nargs="+")
    a = ap.parse_args()

    venv = Path.home() / "venvs" / a.name
    py, out, timings = venv / "bin" / "python", {"name": a.name}, {}
    t = time.monotonic()
    out["install"], step = install(venv, a.wheelhouse, a.extra, fresh=a.fresh)
    timings["install_s"] = round(time.monotonic() - t, 1)
    if step.returncode:
        print(json.dumps({**out, "error": "install failed: " + (step.stderr.strip().splitlines() or ["?"])[-1]}))
        return
    listed = run([py, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    out["packages"] = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}

    probe = run([py, "-c", PROBE, a.model], cwd=Path.home())
    out["probe"] = json.loads(probe.stdout) if probe.returncode == 0 else {"error": probe.stderr[-2000:]}

    t = time.monotonic()
    junit = venv / "junit.xml"
    junit.unlink(missing_ok=True)  # a cached venv keeps the last run's
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "EDGE_TRANSFER_BACKEND": a.backend}
    tests = run([py, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", f"--junitxml={junit}",
                 *json.loads(a.pytest_args)], cwd=a.tests_root, env=env, timeout=1500)
    timings["tests_s"] = round(time.monotonic() - t, 1)
    out["tests"] = junit_counts(junit) if junit.exists() else {"passed": 0, "failed": 1, "skipped": 0,
                                                               "failed_names": ["pytest did not run"]}
    out["tests"].update(rc=tests.returncode, tail=(tests.stdout + tests.stderr)[-1500:])

    t = time.monotonic()
    cls = run([py, "-m", "edge", "classify", "--json", "--top-k", "0", a.model, *a.photos],
              cwd=Path.home())
    timings["classify_s"] = round(time.monotonic() - t, 1)
    out["classify"] = [json.loads(line) for line in cls.stdout.splitlines() if line.strip()]
    out["classify_rc"], out["classify_stderr"] = cls.returncode, cls.stderr[-1500:]
    out["timings"] = timings
    print(json.dumps(out))


if __name__ == "__main__":
    main()
