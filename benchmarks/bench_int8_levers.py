"""What brings int8 closer to Keras on every seed? Levers side by side on trained runs, one run.

For each RUN_DIR (e.g. the runs bench_int8_seeds.py leaves, one per seed): one calibration per
calibration size, the activation ranges chosen on val as `convert` does, then int8 files made
with each lever, each run through the edge runtime on the test split against model.keras:
agreement (and disagreeing photos), accuracy change, logit error, size.

Levers: `base` (what convert ships), `mean` (the global average pool also in float: the pooled
1280-vector is then not rounded to 256 levels before the float head), `cal1000` (1,000
calibration photos instead of 300), `cal1000+mean`.

Usage: python benchmarks/bench_int8_levers.py RUN_DIR [RUN_DIR ...] [--levers base,mean,cal1000,cal1000+mean]
           [--out benchmarks/results/bench_int8_levers.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from trainer import atomic  # noqa: E402
from trainer.export.calibration import calibration_images, selection_images  # noqa: E402
from trainer.export.convert import Calibrated  # noqa: E402
from trainer.export.sensitivity import logit_error  # noqa: E402
from trainer.export.tflite import exported, quantize  # noqa: E402
from trainer.export.variants import MODES  # noqa: E402
from trainer.model.model_io import keras_probabilities, load_keras  # noqa: E402
from trainer.report.parity import held_out, tflite_probabilities  # noqa: E402
from trainer.run_dir import MODEL, RunDir  # noqa: E402

LEVERS = {  # name -> (calibration photos, extra ops kept in float)
    "base": (300, ()),
    "mean": (300, ("MEAN",)),
    "cal1000": (1000, ()),
    "cal1000+mean": (1000, ("MEAN",)),
}


def measure(run_dir: Path, levers: list[str]) -> list[dict]:
    run = RunDir.open(run_dir)
    model = load_keras(run / MODEL)
    split, photos = held_out(run)
    images, y = photos.decode()
    keras = keras_probabilities(model, images)
    q = MODES["int8"]
    rows, calibrations = [], {}
    with exported(model) as source, tempfile.TemporaryDirectory() as tmp:
        for lever in levers:
            count, extra = LEVERS[lever]
            if count not in calibrations:
                calibrations[count] = Calibrated.of(source, calibration_images(run, count, 0), 0,
                                                    selection_images(run))
            data = quantize(calibrations[count].model, q.io_dtype, q.output_dtype, q.float_ops + extra)
            path = Path(tmp) / f"{lever}.tflite"
            path.write_bytes(data)
            probs = tflite_probabilities(path, images)
            top = probs.argmax(1)
            rows.append({"run": run_dir.name, "lever": lever, "n": len(y),
                         "disagreements": int(np.sum(top != keras.argmax(1))),
                         "agreement": round(100 * float(np.mean(top == keras.argmax(1))), 3),
                         "delta_acc": round(100 * (float(np.mean(top == y)) - float(np.mean(keras.argmax(1) == y))), 3),
                         "logit_error": round(logit_error(probs, keras), 5), "size_mb": round(len(data) / 1e6, 3)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--levers", default="base,mean,cal1000,cal1000+mean")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_int8_levers.json")
    args = ap.parse_args()
    levers = args.levers.split(",")
    rows = [row for run in args.runs for row in measure(run, levers)]
    summary = {}
    for lever in levers:
        mine = [r for r in rows if r["lever"] == lever]
        ag = [r["agreement"] for r in mine]
        summary[lever] = {"agreement_median": statistics.median(ag), "agreement_min": min(ag),
                          "agreement_max": max(ag), "delta_acc_median": statistics.median(r["delta_acc"] for r in mine),
                          "logit_error_median": statistics.median(r["logit_error"] for r in mine)}
        print(f"{lever:>14}: agreement median {summary[lever]['agreement_median']:.2f} % "
              f"(min {min(ag):.2f}, max {max(ag):.2f}), delta median {summary[lever]['delta_acc_median']:+.2f}, "
              f"logit error median {summary[lever]['logit_error_median']:.4f}")
    atomic.write_json(args.out, {"rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
