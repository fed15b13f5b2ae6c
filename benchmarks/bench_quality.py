"""Model quality of the training presets, side by side in one run, through the CLI a user runs.

For each preset: `python -m trainer train --data DIR --out RUN --preset P`, each with a fresh
feature cache of its own (cold, as a first run is), then `python -m trainer convert RUN --mode
int8` and `--mode full_int8`. Reports test accuracy with its 95 % Wilson interval
(report.json), train wall time and its ratio to the first row's, and each quantized file's
agreement with model.keras, accuracy change and size (parity.json; a failed gate is recorded,
not fatal). `--lever NAME="FLAGS"` (repeatable) adds a train-only row with those flags, to
measure one change of a recipe at a time beside the presets.

Usage: python benchmarks/bench_quality.py [--data DIR] [--presets fast,best] [--runs DIR]
           [--lever 'cosine=--preset best --fine-tune-schedule cosine' ...]
           [--no-convert] [--calibration-images N] [--out benchmarks/results/bench_quality.json]
(--presets best takes about 8 minutes on 2 cores for tf_flowers; `--data data/sample_flowers
--presets fast --calibration-images 40` is a one-minute smoke run.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.paths import SHARED_DATA  # noqa: E402
from trainer import atomic  # noqa: E402
from trainer.report.metrics import ci95  # noqa: E402

QUANTIZED = ("int8", "full_int8")


def cli(*args: str, cache: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds and result of one `python -m trainer` process (``cache``: its feature cache)."""
    env = {**os.environ, **({"EDGE_TRANSFER_CACHE": str(cache)} if cache else {})}
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, result


def one_row(data: Path, name: str, flags: list[str], run: Path, calibration_images: int, convert: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-quality-cache-") as cache:
        seconds, result = cli("train", "--data", str(data), "--out", str(run), *flags, cache=Path(cache))
    if result.returncode != 0:
        raise SystemExit(f"train {' '.join(flags)} failed:\n{result.stderr[-2000:]}")
    test = json.loads((run / "report.json").read_text())["splits"]["test"]
    row = {"preset": name, "flags": " ".join(flags), "train_s": round(seconds, 1), "accuracy": test["accuracy"],
           "n": test["n"], "accuracy_ci95": test.get("accuracy_ci95") or ci95(test["accuracy"], test["n"])}
    if not convert:
        return row
    for mode in QUANTIZED:
        seconds, result = cli("convert", str(run), "--mode", mode, "--calibration-images", str(calibration_images))
        if result.returncode not in (0, 1):  # 1: the parity gate failed, parity.json still written
            raise SystemExit(f"convert --mode {mode} failed:\n{result.stderr[-2000:]}")
        v = json.loads((run / "parity.json").read_text())["variants"][mode]
        row[mode] = {"agreement": v["agreement"], "delta_acc": v["delta_acc"], "passed": v["passed"],
                     "size_mb": round((run / v["file"]).stat().st_size / 1e6, 2), "convert_s": round(seconds, 1)}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "tf_flowers" / "train")
    parser.add_argument("--presets", default="fast,best")
    parser.add_argument("--runs", type=Path, help="keep the run directories here (default: a temp folder)")
    parser.add_argument("--lever", action="append", default=[], metavar='NAME="FLAGS"',
                        help="a train-only row with these train flags")
    parser.add_argument("--no-convert", action="store_true", help="train only, every row")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_quality.json")
    args = parser.parse_args(argv)
    plan = [(p, ["--preset", p], not args.no_convert) for p in args.presets.split(",")]
    for lever in args.lever:
        name, _, flags = lever.partition("=")
        plan.append((name, shlex.split(flags), False))
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        rows = []
        for name, flags, convert in plan:
            rows.append(one_row(args.data, name, flags, runs / name, args.calibration_images, convert))
            print(f"{name}: test accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['train_s']:.1f} s", flush=True)
    for r in rows:
        r["x_first"] = round(r["train_s"] / rows[0]["train_s"], 2)
    print(f"{args.data}, {os.cpu_count()} cores")
    print(f"{'row':10s} {'test acc (95% interval)':>24s} {'train s':>8s} {'x':>6s}  "
          + "  ".join(f"{m + ' agree / dacc / MB':>30s}" for m in QUANTIZED))
    for r in rows:
        lo, hi = r["accuracy_ci95"]
        cells = [f"{r[m]['agreement']:6.2f} % / {r[m]['delta_acc']:+5.2f} / {r[m]['size_mb']:4.2f}"
                 f"{'' if r[m]['passed'] else ' FAIL'}" if m in r else "-" for m in QUANTIZED]
        print(f"{r['preset']:10s} {r['accuracy']:.4f} ({lo:.3f}-{hi:.3f}){'':5s} {r['train_s']:8.1f} {r['x_first']:5.1f}x  "
              + "  ".join(f"{c:>30s}" for c in cells))
    atomic.write_json(args.out, {"data": str(args.data), "cpus": os.cpu_count(),
                                 "calibration_images": args.calibration_images, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
