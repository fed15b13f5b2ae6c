"""Does int8 agree with Keras on every seed, and does the gate decide on evidence? One run, as a user.

For each preset and seed: `python -m trainer train --data DIR --out RUN --seed S [--preset P]`
(a different split and calibration draw per seed), then `python -m trainer convert RUN --mode
int8 --seed S`. One row per run: test photos, int8 agreement with its 90 % interval (the two
one-sided 95 % bounds the gate uses), accuracy change, the gate's decision, convert's exit code
and the activation-range quantile it chose; then median / min / max per preset.

`--repo DIR` runs another checkout's `python -m trainer` (e.g. a worktree of an older commit, for
the "before" table); the evidence columns are then computed here from its parity.json counts.

Usage: python benchmarks/bench_int8_seeds.py [--data DIR] [--presets fast,best] [--seeds 1,2,3,4,5]
           [--best-seeds 1,2,3] [--repo DIR] [--runs DIR] [--out benchmarks/results/bench_int8_seeds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
from trainer.report import evidence  # noqa: E402


def run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=repo, capture_output=True, text=True)


def one(repo: Path, data: Path, runs: Path, preset: str, seed: int) -> dict:
    out = runs / f"{preset}_seed{seed}"
    t0 = time.perf_counter()
    trained = run(repo, "train", "--data", str(data), "--out", str(out), "--seed", str(seed), "--preset", preset)
    if trained.returncode != 0:
        raise SystemExit(f"train failed ({preset}, seed {seed}): {trained.stderr[-1500:]}")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    converted = run(repo, "convert", str(out), "--mode", "int8", "--seed", str(seed))
    convert_s = time.perf_counter() - t0
    parity = json.loads((out / "parity.json").read_text())
    v = parity["variants"]["int8"]
    n = parity["n"]
    chosen = re.search(r"activation ranges: (\S+)", converted.stdout)
    disagree = v.get("counts", {}).get("disagreements", round((100 - v["agreement"]) / 100 * n))
    found = v.get("evidence", {}).get("agreement") or evidence.agreement(n, disagree, 99.0).to_dict()
    decision = v.get("decision") or ("pass" if v.get("passed") else "fail")
    keras_acc = json.loads((out / "report.json").read_text())["splits"]["test"]["accuracy"]
    return {"preset": preset, "seed": seed, "n": n, "keras_accuracy": keras_acc, "agreement": v["agreement"],
            "disagreements": disagree, "low": found["low"], "high": found["high"], "delta_acc": v["delta_acc"],
            "decision": decision, "convert_exit": converted.returncode,
            "quantile": chosen.group(1) if chosen else None, "train_s": round(train_s, 1),
            "none_agreement": (v.get("none_of_these") or {}).get("agreement"),  # the unknown output's decision
            "convert_s": round(convert_s, 1)}


def summary(rows: list[dict]) -> dict:
    ag = [r["agreement"] for r in rows]
    da = [r["delta_acc"] for r in rows]
    return {"agreement_median": statistics.median(ag), "agreement_min": min(ag), "agreement_max": max(ag),
            "delta_acc_median": statistics.median(da), "delta_acc_min": min(da),
            "convert_exit_0": sum(r["convert_exit"] == 0 for r in rows), "runs": len(rows)}


def markdown(rows: list[dict], summaries: dict) -> str:
    lines = ["| preset | seed | test photos | Keras acc | int8 agreement | 90 % interval | Δacc pt | none % | gate | "
             "convert exit | ranges |", "|---|---:|---:|---:|---:|---|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['seed']} | {r['n']} | {r['keras_accuracy']:.4f} | {r['agreement']:.2f} % "
                     f"({r['disagreements']} off) | {r['low']:.2f}-{r['high']:.2f} | {r['delta_acc']:+.2f} | "
                     f"{'-' if r.get('none_agreement') is None else format(r['none_agreement'], '.2f')} | "
                     f"{r['decision']} | {r['convert_exit']} | {r['quantile']} |")
    for preset, s in summaries.items():
        lines.append(f"| **{preset}** | median (min-max) | | | **{s['agreement_median']:.2f} %** "
                     f"({s['agreement_min']:.2f}-{s['agreement_max']:.2f}) | | {s['delta_acc_median']:+.2f} "
                     f"(min {s['delta_acc_min']:+.2f}) | | | {s['convert_exit_0']}/{s['runs']} exit 0 | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "tf_flowers" / "train")
    ap.add_argument("--presets", default="fast")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--best-seeds", default="1,2,3")
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--runs", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_int8_seeds.json")
    args = ap.parse_args()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-int8-seeds-"))
    rows = []
    for preset in args.presets.split(","):
        seeds = args.best_seeds if preset == "best" else args.seeds
        for seed in (int(s) for s in seeds.split(",")):
            rows.append(one(args.repo.resolve(), args.data, runs, preset, seed))
            print(json.dumps(rows[-1]), flush=True)
    summaries = {p: summary([r for r in rows if r["preset"] == p]) for p in dict.fromkeys(r["preset"] for r in rows)}
    table = markdown(rows, summaries)
    print(table)
    atomic.write_json(args.out, {"data": str(args.data), "repo": str(args.repo), "rows": rows,
                                 "summary": summaries, "table": table})


if __name__ == "__main__":
    main()
