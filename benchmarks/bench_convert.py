"""`convert --mode all`'s export, with the uncalibrated conversions in a second process beside
calibration (the default) against one after another in this process, side by side in one run.

    python benchmarks/bench_convert.py RUN_DIR [--calibration-images 300] [--repeats 2]
                                       [--out bench_convert.json]

Each repeat exports every mode from a fresh copy of RUN_DIR both ways, alternating which goes
first, so load on a shared machine hits both alike; reports each wall time, the median ratio
and the peak RSS of this process (the child's is its own).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer.export.convert import export  # noqa: E402
from trainer.export.variants import MODES  # noqa: E402
from trainer.model.model_io import load_keras  # noqa: E402
from trainer.run_dir import MODEL  # noqa: E402


def timed(run: Path, work: Path, overlap: bool, calibration_images: int, model) -> float:
    copy = work / f"run_{'overlap' if overlap else 'sequential'}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    t0 = time.perf_counter()
    export(copy, list(MODES), calibration_images, keras_model=model, log=lambda line: None, overlap=overlap)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_convert.json")
    args = ap.parse_args()
    model = load_keras(args.run / MODEL)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_convert-") as work:
        for r in range(args.repeats):
            for overlap in ((False, True) if r % 2 == 0 else (True, False)):
                seconds = timed(args.run, Path(work), overlap, args.calibration_images, model)
                rows.append({"repeat": r, "overlap": overlap, "wall_s": round(seconds, 1)})
                print(f"repeat {r}: {'beside calibration' if overlap else 'one after another':<20} {seconds:6.1f} s",
                      flush=True)
    ratios = [next(x["wall_s"] for x in rows if x["repeat"] == r and x["overlap"])
              / next(x["wall_s"] for x in rows if x["repeat"] == r and not x["overlap"]) for r in range(args.repeats)]
    result = {"cpus": os.cpu_count(), "run": str(args.run), "modes": list(MODES),
              "calibration_images": args.calibration_images, "rows": rows,
              "overlap_over_sequential": round(statistics.median(ratios), 3),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps({k: result[k] for k in ("overlap_over_sequential", "peak_rss_mb")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
