"""Which layers int8 keeps in float: those whose float copy brings the model's output closest to
the float model's, chosen greedily on photos the calibration did not see (the val split).

A layer's own quantization error (the QuantizationDebugger's MSE / scale^2, :func:`rank_layers`)
says little about what reaches the classifier: on tf_flowers its top three moved int8/Keras
agreement on the test split from 96.4 % (head float only) to 97.1 %; six layers chosen by their
effect on the logits cut the logit error 5x and reached 98.8 % (README, benchmarks/bench_int8.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge.runtime import invoke, make_interpreter
from trainer.export.calibration import representative_dataset
from trainer.export.tflite import quantize, silenced

# layers with weights: where int8 rounds; adds and the input scaling only requantize
CANDIDATE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
# the greedy search tries this many of the best single layers at each step (bounds convert time)
GREEDY_POOL = 10
# int8 stays small: float layers may grow the file by at most this factor over the all-int8 body
# (MobileNetV2: 2.76 -> at most 3.45 MB; float16 is 4.53). On 20 val photos the greedy otherwise
# took the 1280-channel Conv_1 and made a 4.2 MB file.
MAX_GROWTH = 1.25


@dataclass(frozen=True)
class LayerError:
    tensor: str  # the layer's output tensor name: what mlir_quantize's denylisted_nodes matches
    op: str
    mse: float
    scale: float

    @property
    def layer(self) -> str:
        """The Keras layer the tensor comes out of, e.g. "block_2_depthwise_relu" (for logs)."""
        return short_name(self.tensor)

    @property
    def score(self) -> float:
        return self.mse / self.scale ** 2 if self.scale > 0 else 0.0


def short_name(tensor: str) -> str:
    """A converter tensor name ("model/base/block_2_depthwise_relu_1/Relu6;...") -> its layer
    ("block_2_depthwise_relu")."""
    parts = tensor.split(";")[0].split("/")
    name = parts[2] if len(parts) >= 4 else parts[-2] if len(parts) > 1 else parts[0]
    return name[:-2] if name.endswith("_1") else name


def rank_layers(calibrated: bytes, images: np.ndarray, float_ops: tuple[str, ...] = ()) -> list[LayerError]:
    """Every quantized layer by its own error (QuantizationDebugger), worst first: the isolated
    ranking int8 used before, kept for benchmarks/bench_int8.py's comparison."""
    import tensorflow as tf

    debug_model = quantize(calibrated, "float32", "float32", float_ops, debug=True)
    with silenced():
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=representative_dataset(images))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    layers = [LayerError(row["tensor_name"], row["op_name"], float(row["mean_squared_error"]), float(row["scale"]))
              for row in csv.DictReader(dump)]
    return sorted(layers, key=lambda layer: layer.score, reverse=True)


def outputs(model: bytes, images: np.ndarray) -> np.ndarray:
    """(N, C) float outputs of a float-I/O model for uint8 images fed as float32 0..255."""
    loaded = make_interpreter(model)
    it, out = loaded.interpreter, np.empty((len(images), loaded.output.shape[-1]), np.float32)
    for i, image in enumerate(images):
        it.set_tensor(loaded.input.index, image[None].astype(np.float32))
        invoke(it)
        out[i] = it.get_tensor(loaded.output.index)[0]
    return out


def logit_errors(probs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per photo: mean squared difference of the logits (log-probabilities, centered per photo):
    what moves a decision, whichever class is affected, unlike max |dp| or a count of flips."""
    d = np.log(np.clip(probs, 1e-12, 1)) - np.log(np.clip(reference, 1e-12, 1))
    return np.mean((d - d.mean(axis=1, keepdims=True)) ** 2, axis=1)


def logit_error(probs: np.ndarray, reference: np.ndarray) -> float:
    """:func:`logit_errors` averaged over the photos."""
    return float(np.mean(logit_errors(probs, reference)))


def candidate_layers(calibrated: bytes) -> list[str]:
    """Output tensor names of the convolutions int8 may keep in float, in graph order."""
    loaded = make_interpreter(calibrated)
    names = {t["index"]: t["name"] for t in loaded.interpreter.get_tensor_details()}
    return [names[op["outputs"][0]] for op in loaded.interpreter._get_ops_details() if op["op_name"] in CANDIDATE_OPS]


@dataclass(frozen=True)
class Selection:
    """The layers int8 keeps in float and the logit error after each was added."""

    layers: tuple[str, ...]
    errors: tuple[float, ...]  # errors[0]: nothing kept float; errors[k]: the first k kept
    evaluated: int  # quantized models tried


def choose_float_layers(calibrated: bytes, images: np.ndarray, float_ops: tuple[str, ...], count: int,
                        log: Callable[[str], None] = lambda line: None,
                        max_growth: float | None = MAX_GROWTH) -> Selection:
    """Greedy: rank every convolution by the logit error on ``images`` when it alone stays float,
    then add, up to ``count`` times, the one of the :data:`GREEDY_POOL` best that lowers the error
    of the set most, among sets within ``max_growth`` of the all-int8 size (None: no bound). The
    reference is the calibrated model itself run in float (Keras within 1e-5)."""
    reference = outputs(calibrated, images)
    cache: dict[tuple[str, ...], tuple[float, int]] = {}

    def measured(nodes: tuple[str, ...]) -> tuple[float, int]:
        key = tuple(sorted(nodes))
        if key not in cache:
            model = quantize(calibrated, "float32", "float32", float_ops, nodes)
            cache[key] = logit_error(outputs(model, images), reference), len(model)
        return cache[key]

    budget = measured(())[1] * max_growth if max_growth else float("inf")

    def error(nodes: tuple[str, ...]) -> float:
        err, size = measured(nodes)
        return err if size <= budget else float("inf")

    errors = [error(())]
    if count == 0:
        return Selection((), tuple(errors), len(cache))
    single = sorted(candidate_layers(calibrated), key=lambda layer: error((layer,)))
    chosen: list[str] = []
    for _ in range(min(count, len(single))):
        pool = [layer for layer in single[:GREEDY_POOL + len(chosen)] if layer not in chosen]
        best = min(pool, key=lambda layer: error((*chosen, layer)))
        if error((*chosen, best)) >= errors[-1]:
            break  # no float copy helps any more: stop, the file stays smaller
        chosen.append(best)
        errors.append(error(tuple(chosen)))
        log(f"  int8 keeps {short_name(best)} float: logit error {errors[-1]:.4f} (from {errors[0]:.4f})")
    return Selection(tuple(chosen), tuple(errors), len(cache))
