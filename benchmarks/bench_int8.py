"""int8 agreement vs how much of the network stays float, side by side in one run.

    python benchmarks/bench_int8.py RUN_DIR [--calibration-images 300] [--out bench_int8.json]

One calibration of RUN_DIR/model.keras, then every choice below quantized from it and run through
the edge runtime on the run's held-out split: size (MB = 10^6 bytes), top-1 agreement with
model.keras, accuracy change, max |dp|, invoke p50 (2 threads). Choices: the all-integer file
(full_int8); the head (FULLY_CONNECTED, SOFTMAX) in float; plus the K layers the
QuantizationDebugger ranks worst; plus every depthwise convolution and the K worst others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from edge.benchmark import size_mb, time_invoke  # noqa: E402
from edge.runtime import make_interpreter  # noqa: E402
from trainer.calibration import calibration_images, representative_dataset  # noqa: E402
from trainer.model_io import load_keras  # noqa: E402
from trainer.parity import held_out, tflite_probabilities  # noqa: E402
from trainer.run_dir import MODEL, RunDir  # noqa: E402
from trainer.sensitivity import rank_layers  # noqa: E402
from trainer.tflite import calibrate, quantize  # noqa: E402

HEAD = ("FULLY_CONNECTED", "SOFTMAX")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    run = RunDir.open(args.run_dir)
    model = load_keras(run / MODEL)
    images_cal = calibration_images(run, args.calibration_images)
    calibrated = calibrate(model, representative_dataset(images_cal))
    split, photos = held_out(run)
    images, y = photos.decode()  # the test split: a bounded set
    keras_probs = model.predict(images.astype(np.float32), verbose=0, batch_size=32)
    keras_top, keras_acc = keras_probs.argmax(1), float((keras_probs.argmax(1) == y).mean())

    ranked = rank_layers(calibrated, images_cal[:100], HEAD)
    ranked_dw = [layer.tensor for layer in rank_layers(calibrated, images_cal[:100], HEAD + ("DEPTHWISE_CONV_2D",))
                 if "Conv_1" not in layer.tensor]  # the 1280-channel 1x1 conv: 1.2 MB more in float
    choices = {"full_int8 (uint8 out)": ("uint8", (), ())}
    choices.update({f"head float, {k} worst float": ("float32", HEAD, tuple(r.tensor for r in ranked[:k]))
                    for k in (0, 3, 5, 8)})
    choices.update({f"head + depthwise float, {k} worst float": ("float32", HEAD + ("DEPTHWISE_CONV_2D",),
                                                                 tuple(ranked_dw[:k])) for k in (0, 10, 24)})
    rows = []
    print(f"{split} split, {len(y)} photos, Keras accuracy {keras_acc:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (out_type, ops, nodes) in choices.items():
            data = quantize(calibrated, "uint8", out_type, ops, nodes)
            path = Path(tmp) / "m.tflite"
            path.write_bytes(data)
            probs = tflite_probabilities(path, images)
            timing = time_invoke(make_interpreter(path, num_threads=2), runs=50, warmup=5)
            row = {"choice": name, "size_mb": size_mb(len(data)),
                   "agreement": round(float((probs.argmax(1) == keras_top).mean()) * 100, 2),
                   "delta_acc": round((float((probs.argmax(1) == y).mean()) - keras_acc) * 100, 2),
                   "max_abs_dp": round(float(np.abs(probs - keras_probs).max()), 3),
                   "p50_ms": round(timing.p50_ms, 2)}
            rows.append(row)
            print(f"{name:40s} {row['size_mb']:6.2f} MB  agree {row['agreement']:6.2f} %  "
                  f"dacc {row['delta_acc']:+.2f}  max|dp| {row['max_abs_dp']:.3f}  p50 {row['p50_ms']:.2f} ms",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run_dir": str(run.path), "split": split, "n": len(y),
                                        "keras_accuracy": keras_acc, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
