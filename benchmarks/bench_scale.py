"""Does training scale with the photos? `python -m trainer train` (the defaults) as a user runs it,
each in its own process, side by side in one run:

  1x        tf_flowers/train, fresh feature cache
  1x warm   the same command again, the cache now full (test accuracy must not change)
  4x        each photo copied 4 times with distinct bytes (a few appended after the JPEG end
            marker: the same pixels, but nothing deduplicates), fresh cache
  2 workers 1x on two loopback workers (TF_CONFIG, MultiWorkerMirroredStrategy), fresh shared cache
  fine-tune with --fine-tune-epochs N: `--preset best --fine-tune-epochs N` at 1x and at 4x (the
            feature caches are warm by then: the rows measure fine-tuning's streaming pipeline)

Reports wall time, wall time per photo and peak RSS (each process's own, from wait4), and the
ratios the issue asks about: 4x/1x RSS and time per photo, warm/cold wall time.

Usage: python benchmarks/bench_scale.py [--data DIR] [--copies 4] [--skip-workers] [--fine-tune-epochs N]
                                        [--out bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.paths import SHARED_DATA  # noqa: E402


def copies(src: Path, dst: Path, n: int) -> int:
    """Every photo of src n times under dst, copy k with k bytes appended (distinct content)."""
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        rel = path.relative_to(src)
        (dst / rel.parent).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (dst / rel.parent / f"{rel.stem}_{k}{rel.suffix}").write_bytes(raw + b"\0" * k)
            count += 1
    return count


def train(data: Path, out: Path, cache: Path, extra_env: dict | None = None,
          flags: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "EDGE_TRANSFER_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2", **(extra_env or {})}
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", "--data", str(data), "--out", str(out),
                             *flags], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(procs: list[subprocess.Popen], t0: float) -> tuple[float, float]:
    """(wall s, max peak RSS MB) of processes started at t0; fails loudly if one failed."""
    rss = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"train failed (exit {proc.returncode}): see {proc.args[-1]}.log")
        rss = max(rss, usage.ru_maxrss / 1024)
    return time.perf_counter() - t0, rss


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def row(name: str, photos: int, wall: float, rss: float, out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {"run": name, "photos": photos, "wall_s": round(wall, 1), "ms_per_photo": round(1000 * wall / photos, 2),
            "peak_rss_mb": round(rss), "test_accuracy": report["splits"]["test"]["accuracy"],
            "workers": report.get("workers", 1), "cache_hits": report.get("feature_cache", {}).get("hits"),
            "timings": report["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "tf_flowers" / "train")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--skip-workers", action="store_true", help="no 2-worker loopback run")
    ap.add_argument("--fine-tune-epochs", type=int, default=0, help="add 1x and 4x rows that fine-tune N epochs")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, deleted)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_scale.json")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    n1 = sum(1 for p in args.data.rglob("*") if p.is_file())
    big = work / f"data_{args.copies}x"
    n4 = copies(args.data, big, args.copies)
    rows = []

    t0 = time.perf_counter()
    wall, rss = wait([train(args.data, work / "run_1x", work / "cache_1x")], t0)
    rows.append(row("1x", n1, wall, rss, work / "run_1x"))
    t0 = time.perf_counter()
    wall, rss = wait([train(args.data, work / "run_1x_warm", work / "cache_1x")], t0)
    rows.append(row("1x warm", n1, wall, rss, work / "run_1x_warm"))
    t0 = time.perf_counter()
    wall, rss = wait([train(big, work / f"run_{args.copies}x", work / f"cache_{args.copies}x")], t0)
    rows.append(row(f"{args.copies}x", n4, wall, rss, work / f"run_{args.copies}x"))
    if not args.skip_workers:
        hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
        t0 = time.perf_counter()
        procs = [train(args.data, work / "run_2w", work / "cache_2w",
                       {"TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})})
                 for i in range(2)]
        wall, rss = wait(procs, t0)
        rows.append(row("1x, 2 workers", n1, wall, rss, work / "run_2w"))
    if args.fine_tune_epochs:
        flags = ("--preset", "best", "--fine-tune-epochs", str(args.fine_tune_epochs))
        for name, folder, n in (("1x", args.data, n1), (f"{args.copies}x", big, n4)):
            t0 = time.perf_counter()
            wall, rss = wait([train(folder, work / f"run_{name}_ft", work / f"cache_{name}", flags=flags)], t0)
            rows.append(row(f"{name} fine-tune", n, wall, rss, work / f"run_{name}_ft"))

    by = {r["run"]: r for r in rows}
    one, warm, many = by["1x"], by["1x warm"], by[f"{args.copies}x"]
    ratios = {
        f"rss_{args.copies}x_over_1x": round(many["peak_rss_mb"] / one["peak_rss_mb"], 3),
        f"time_per_photo_{args.copies}x_over_1x": round(many["ms_per_photo"] / one["ms_per_photo"], 3),
        "warm_over_cold_wall": round(warm["wall_s"] / one["wall_s"], 3),
        "warm_same_accuracy": warm["test_accuracy"] == one["test_accuracy"],
    }
    if "1x fine-tune" in by:
        one_ft, many_ft = by["1x fine-tune"], by[f"{args.copies}x fine-tune"]
        ratios[f"fine_tune_rss_{args.copies}x_over_1x"] = round(many_ft["peak_rss_mb"] / one_ft["peak_rss_mb"], 3)
        ratios[f"fine_tune_time_per_photo_{args.copies}x_over_1x"] = round(
            many_ft["ms_per_photo"] / one_ft["ms_per_photo"], 3)
    if "1x, 2 workers" in by:
        ratios["two_workers_over_one_wall"] = round(by["1x, 2 workers"]["wall_s"] / one["wall_s"], 3)
    print(f"{'run':<16} {'photos':>7} {'wall s':>8} {'ms/photo':>9} {'peak RSS MB':>12} {'test acc':>9}")
    for r in rows:
        print(f"{r['run']:<16} {r['photos']:>7} {r['wall_s']:>8.1f} {r['ms_per_photo']:>9.2f} {r['peak_rss_mb']:>12} "
              f"{r['test_accuracy']:>9.4f}")
    print(json.dumps(ratios, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows, "ratios": ratios}, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
