"""int8 agreement vs which layers stay float, side by side in one run.

    python benchmarks/bench_int8.py RUN_DIR [--calibration-images 300] [--float-layers 10] [--int16]
                                    [--out bench_int8.json]

One calibration of RUN_DIR/model.keras, then every choice below quantized from it and run through
the edge runtime on the run's held-out split: size (MB = 10^6 bytes), top-1 agreement with
model.keras, accuracy change, logit error (trainer.export.sensitivity.logit_error), invoke p50 (2 threads;
three interleaved rounds, median, so load on a shared machine hits every row alike) and its ratio
to the int8 default and to float32. Choices: float32 and float16 (references); the all-integer
file (full_int8); the head (FULLY_CONNECTED, SOFTMAX) in float; plus the 3 layers the
QuantizationDebugger ranks worst by their own error; plus the first 1, 3, 6 and K layers int8
chooses greedily by their effect on the logits on the val split (here without int8's size bound,
MAX_GROWTH, so the longer choices show what it would cost); plus every depthwise convolution and
the 24 worst others; with --int16, 16x8 (int16 activations, float I/O). The row `convert` would
ship for RUN_DIR is marked default: the head alone for a model trained on the int8 grid
(trainer.model.int8_grid), else the head + 6 chosen. Run it on a run trained with and one trained
without --int8-grid to compare the two.
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
from trainer.export.calibration import calibration_images, representative_dataset, selection_images  # noqa: E402
from trainer.export.convert import OFF_GRID_FLOAT_LAYERS, default_float_layers  # noqa: E402
from trainer.export.float_convert import convert_model  # noqa: E402
from trainer.export.sensitivity import choose_float_layers, logit_error, rank_layers  # noqa: E402
from trainer.export.tflite import calibrate, converter_for, exported, quantize, run_converter  # noqa: E402
from trainer.export.variants import MODES  # noqa: E402
from trainer.model.model_io import keras_probabilities, load_keras  # noqa: E402
from trainer.report.parity import held_out, tflite_probabilities  # noqa: E402
from trainer.run_dir import MODEL, RunDir  # noqa: E402

HEAD = ("FULLY_CONNECTED", "SOFTMAX")
HEAD_ONLY = "head float"
OLD = "head + 3 debugger-worst (old default)"


def int16_model(source, images: np.ndarray) -> bytes:
    """16x8: int16 activations, int8 weights, float I/O (TFLite has no uint8-input form of it)."""
    import tensorflow as tf

    converter = converter_for(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    return run_converter(converter)


def chosen_name(n: int) -> str:
    return HEAD_ONLY if n == 0 else f"head + {n} chosen by logit effect"


def choices(source, calibrated: bytes, images_cal: np.ndarray, chooser: np.ndarray, k: int,
            int16: bool) -> dict[str, bytes]:
    debugger = rank_layers(calibrated, images_cal[:100], HEAD)
    ranked_dw = [layer.tensor for layer in rank_layers(calibrated, images_cal[:100], HEAD + ("DEPTHWISE_CONV_2D",))
                 if "Conv_1" not in layer.tensor]  # the 1280-channel 1x1 conv: 1.2 MB more in float
    chosen = choose_float_layers(calibrated, chooser, HEAD, k, print, max_growth=None).layers  # no size bound
    out = {mode: convert_model(source, MODES[mode]) for mode in ("float32", "float16")}
    out["full_int8 (uint8 out)"] = quantize(calibrated, "uint8", "uint8")
    out[HEAD_ONLY] = quantize(calibrated, "uint8", "float32", HEAD)
    out[OLD] = quantize(calibrated, "uint8", "float32", HEAD, tuple(r.tensor for r in debugger[:3]))
    for n in sorted({1, 3, OFF_GRID_FLOAT_LAYERS, len(chosen)} - {0}):
        out[chosen_name(n)] = quantize(calibrated, "uint8", "float32", HEAD, chosen[:n])
    out["head + every depthwise + 24 debugger-worst"] = quantize(calibrated, "uint8", "float32",
                                                                 HEAD + ("DEPTHWISE_CONV_2D",), tuple(ranked_dw[:24]))
    if int16:
        out["16x8 (int16 activations, float I/O)"] = int16_model(source, images_cal)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--float-layers", type=int, default=10, help="longest greedy choice to measure")
    parser.add_argument("--int16", action="store_true", help="also 16x8 (slow: reference kernels)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    run = RunDir.open(args.run_dir)
    model = load_keras(run / MODEL)
    images_cal = calibration_images(run, args.calibration_images)
    split, photos = held_out(run)
    images, y = photos.decode()  # the test split: a bounded set
    keras_probs = keras_probabilities(model, images)
    keras_top, keras_acc = keras_probs.argmax(1), float((keras_probs.argmax(1) == y).mean())
    with exported(model) as source:
        calibrated = calibrate(source, representative_dataset(images_cal))
        chooser = selection_images(run)
        files = choices(source, calibrated, images_cal, images_cal if chooser is None else chooser,
                        args.float_layers, args.int16)
    print(f"{split} split, {len(y)} photos, Keras accuracy {keras_acc:.4f}")
    rows, p50s = [], {name: [] for name in files}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (name, data) in enumerate(files.items()):
            paths[name] = Path(tmp) / f"m{i}.tflite"
            paths[name].write_bytes(data)
            probs = tflite_probabilities(paths[name], images, threads=2)
            rows.append({"choice": name, "size_mb": size_mb(len(data)),
                         "agreement": round(float((probs.argmax(1) == keras_top).mean()) * 100, 2),
                         "delta_acc": round((float((probs.argmax(1) == y).mean()) - keras_acc) * 100, 2),
                         "logit_error": round(logit_error(probs, keras_probs), 4),
                         "max_abs_dp": round(float(np.abs(probs - keras_probs).max()), 3)})
        for _ in range(3):
            for name, path in paths.items():
                p50s[name].append(time_invoke(make_interpreter(path, num_threads=2), runs=20, warmup=3).p50_ms)
    p50 = {name: float(np.median(v)) for name, v in p50s.items()}
    default = chosen_name(default_float_layers(run))
    for row in rows:
        name = row["choice"]
        row.update(default=name == default, p50_ms=round(p50[name], 2), x_default=round(p50[name] / p50[default], 2),
                   x_float32=round(p50[name] / p50["float32"], 2))
        print(f"{row['choice'] + (' (default)' if row['default'] else ''):46s} {row['size_mb']:5.2f} MB  agree {row['agreement']:6.2f} %  "
              f"dacc {row['delta_acc']:+.2f}  logit err {row['logit_error']:.4f}  p50 {row['p50_ms']:6.2f} ms "
              f"({row['x_default']:.2f}x default, {row['x_float32']:.2f}x float32)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run_dir": str(run.path), "split": split, "n": len(y),
                                        "keras_accuracy": keras_acc, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
