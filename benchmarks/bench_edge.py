"""Edge runtime benchmark: bare invoke vs the whole photo -> label path, side by side.

    python benchmarks/bench_edge.py [--model M]... [--threads 2] [--out bench_edge.json]

Per model, in one run (alternating rounds, medians): invoke p50/p90 (seeded random input, fixed counts); end-to-end ms per
photo (decode -> resize -> invoke -> top-k) one by one and pipelined (decode-ahead thread
pool, JPEG draft decoding), and the pipelined / bare-invoke ratio (target <= 1.3); folder
throughput in images/s; wall time of a whole `python -m edge classify MODEL one.jpg` process
(median). The machine is shared and noisy: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.benchmark import size_mb, time_folder, time_invoke, time_photos  # noqa: E402
from edge.classifier import Classifier, ClassifierOptions  # noqa: E402
from edge.preprocess import list_images  # noqa: E402
from edge.runtime import make_interpreter  # noqa: E402
from tests.paths import SHARED_DATA as DATA  # noqa: E402

LAST = REPO / "runs" / "LAST"  # written by `make train`
RUN_DIR = Path(LAST.read_text().strip()) if LAST.is_file() else REPO / "runs" / "latest"
RUN_DIR = RUN_DIR if RUN_DIR.is_absolute() else REPO / RUN_DIR
DEFAULT_MODELS = [
    RUN_DIR / "model_int8.tflite",
    RUN_DIR / "model_float32.tflite",
    DATA / "coral" / "mobilenet_v2_1.0_224_quant.tflite",
]
RATIO_TARGET = 1.3
STARTUP_TARGET_S = 0.35


@dataclass
class Row:
    model: str
    backend: str
    size_mb: float
    invoke_p50_ms: float
    invoke_p90_ms: float
    e2e_sequential_ms: float
    e2e_pipelined_ms: float
    e2e_ratio: float
    folder_images_per_s: float
    process_wall_s: float


def process_wall_s(model: Path, photo: Path, threads: int, repeats: int) -> float:
    """Median wall time of a fresh `python -m edge classify MODEL photo` process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edge", "classify", "--threads", str(threads), str(model), str(photo)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(model: Path, photos: list[Path], args) -> Row:
    """Invoke and end-to-end timings taken in alternating rounds, so both see the same load;
    each figure is the median over rounds."""
    loaded = make_interpreter(model, num_threads=args.threads)
    classifier = Classifier(ClassifierOptions(model, num_threads=args.threads, top_k=3))
    timings, seqs, pipes = [], [], []
    for _ in range(args.rounds):
        timings.append(time_invoke(loaded, runs=args.runs, warmup=args.warmup))
        seqs.append(time_photos(classifier, photos, warmup=args.warmup).mean_ms)
        pipes.append(time_folder(classifier, photos))
    timing = sorted(timings, key=lambda t: t.p50_ms)[len(timings) // 2]
    seq, pipe = statistics.median(seqs), statistics.median(pipes)
    return Row(
        model=model.name,
        backend=loaded.backend,
        size_mb=size_mb(model.stat().st_size),
        invoke_p50_ms=round(timing.p50_ms, 3),
        invoke_p90_ms=round(timing.p90_ms, 3),
        e2e_sequential_ms=round(seq, 3),
        e2e_pipelined_ms=round(pipe, 3),
        e2e_ratio=round(statistics.median(p / t.p50_ms for p, t in zip(pipes, timings)), 3),
        folder_images_per_s=round(1000 / pipe, 1),
        process_wall_s=round(process_wall_s(model, photos[0], args.threads, args.process_runs), 3),
    )


def print_table(rows: list[Row]) -> None:
    headers = ["model", "backend", "MB", "invoke p50", "p90", "e2e seq", "e2e pipe", "ratio", "img/s", "process s"]
    cells = [[r.model, r.backend, f"{r.size_mb:.2f}", f"{r.invoke_p50_ms:.2f}", f"{r.invoke_p90_ms:.2f}",
              f"{r.e2e_sequential_ms:.2f}", f"{r.e2e_pipelined_ms:.2f}", f"{r.e2e_ratio:.2f}",
              f"{r.folder_images_per_s:.0f}", f"{r.process_wall_s:.3f}"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *cells]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    print(f"(ms per image; ratio = pipelined e2e / bare invoke p50, target <= {RATIO_TARGET}; "
          f"process = whole CLI run on one photo, target <= {STARTUP_TARGET_S} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", type=Path, help="model to time (repeatable)")
    parser.add_argument("--photos", type=Path, default=DATA / "flower_photos_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating invoke / end-to-end rounds")
    parser.add_argument("--process-runs", type=int, default=7)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    models = args.model or [m for m in DEFAULT_MODELS if m.is_file()]
    photos = list_images(args.photos)
    if not models or not photos:
        raise SystemExit(f"nothing to benchmark: models {models}, {len(photos)} photos in {args.photos}")
    rows = [bench_model(m, photos, args) for m in models]
    print_table(rows)
    if args.out:
        report = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "settings": {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds,
                         "photos": len(photos),
                         "photo_dir": str(args.photos), "process_runs": args.process_runs},
            "rows": [asdict(r) for r in rows],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
