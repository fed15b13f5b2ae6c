"""Activation ranges for int8 from per-photo statistics, not the calibration's global min/max.

TFLite's calibration keeps, for each activation tensor, the smallest and largest value any
calibration photo produced: one unusual photo widens a tensor's range for every photo, and
8 bits then spread over values almost no photo reaches. Here each calibration photo's own
min / max are recorded per tensor and the range becomes a quantile of them across photos (a few
photos clip, every photo gets finer steps). The quantile is chosen on the val photos by the logit
error against the float model (as int8's float layers are, :mod:`trainer.export.sensitivity`). On the
tf_flowers default run it halved the logit error (`convert` logs the error of every quantile).

The choice must not flip on noise: an AVX2 machine once took q0.9 over q0.95 on val errors 5 %
apart (0.0109 vs 0.0115), and the test agreement moved by 5 photos. So a quantile replaces the
simpler one before it (the order of QUANTILES) only when it lowers the per-photo logit error by
more than NOISE_SE standard errors of the paired differences (:func:`pick`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from trainer.export.sensitivity import logit_errors, outputs
from trainer.export.tflite import quantize

# quantiles of the per-photo extremes tried, simplest first; 1.0 is the calibration's own global min / max
QUANTILES = (1.0, 0.99, 0.95, 0.9, 0.8)
NOISE_SE = 2.0  # a quantile must beat the incumbent by this many standard errors of the paired differences


@dataclass(frozen=True)
class PhotoExtremes:
    """Per ranged tensor (by index), every calibration photo's min and max."""

    mins: dict[int, np.ndarray]
    maxs: dict[int, np.ndarray]


def _model_object(model: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model))


def ranged_tensors(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Index -> (min, max) of the calibrated model's activation tensors, graph inputs and outputs
    excluded (the uint8 input must keep 0..255: raw pixels; the output is the float head's)."""
    graph = _model_object(calibrated).subgraphs[0]
    fixed = set(graph.inputs) | set(graph.outputs)
    out = {}
    for i, t in enumerate(graph.tensors):
        q = t.quantization
        if i not in fixed and q is not None and q.min is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out


def photo_extremes(calibrated: bytes, images: np.ndarray) -> PhotoExtremes:
    """Run the calibrated (float) model on each photo, keeping every intermediate tensor."""
    from ai_edge_litert.interpreter import Interpreter

    tensors = ranged_tensors(calibrated)
    with warnings.catch_warnings():  # "intended for debugging": reading every tensor is the point
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]
    mins = {i: np.empty(len(images), np.float32) for i in tensors}
    maxs = {i: np.empty(len(images), np.float32) for i in tensors}
    readable = set(tensors)
    for n, image in enumerate(images):
        it.set_tensor(index, image[None].astype(np.float32))
        it.invoke()
        for i in list(readable):
            try:
                a = it.get_tensor(i)
            except ValueError:  # folded away or shared: keeps its calibrated range
                readable.discard(i)
                continue
            mins[i][n], maxs[i][n] = a.min(), a.max()
    return PhotoExtremes({i: mins[i] for i in readable}, {i: maxs[i] for i in readable})


def with_ranges(calibrated: bytes, extremes: PhotoExtremes, quantile: float) -> bytes:
    """The calibrated model with each ranged tensor's min / max set to ``quantile`` of the photos'
    (never wider than the calibrated range; a range starting at 0, a ReLU's, keeps 0)."""
    from tensorflow.lite.tools import flatbuffer_utils

    if quantile >= 1.0:
        return calibrated
    model = _model_object(calibrated)
    tensors = model.subgraphs[0].tensors
    for i, maxs in extremes.maxs.items():
        q = tensors[i].quantization
        lo, hi = float(q.min[0]), float(q.max[0])
        new_lo = 0.0 if lo == 0.0 else max(lo, min(0.0, float(np.quantile(extremes.mins[i], 1 - quantile))))
        new_hi = min(hi, max(0.0, float(np.quantile(maxs, quantile))))
        if new_hi > new_lo:
            q.min, q.max = [new_lo], [new_hi]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@dataclass(frozen=True)
class RangeChoice:
    quantile: float
    errors: dict[float, float]  # mean logit error on the chooser photos for each quantile tried

    def line(self) -> str:
        name = lambda q: "min/max" if q >= 1 else f"q{q:g}"  # noqa: E731
        tried = ", ".join(f"{name(q)} {e:.4f}" for q, e in self.errors.items())
        return (f"{name(self.quantile)} of the per-photo extremes (logit error: {tried}; a later quantile "
                f"must win by > {NOISE_SE:g} standard errors)")


def pick(per_photo: dict[float, np.ndarray]) -> float:
    """The first quantile (in the dict's order, simplest first), replaced by a later one only when
    that one lowers the mean per-photo error by more than NOISE_SE standard errors of the paired
    per-photo differences: last-bit differences between machines cannot move the choice."""
    order = list(per_photo)
    best = order[0]
    for q in order[1:]:
        gain = np.asarray(per_photo[best], np.float64) - np.asarray(per_photo[q], np.float64)
        se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
        if gain.mean() > NOISE_SE * se:
            best = q
    return best


def choose_from_extremes(calibrated: bytes, extremes: PhotoExtremes, chooser: np.ndarray,
                         float_ops: tuple[str, ...], quantiles: tuple[float, ...] = QUANTILES
                         ) -> tuple[bytes, RangeChoice]:
    """The calibrated model with the ranges :func:`pick` chooses on the ``chooser`` photos
    (the int8 copy, ``float_ops`` in float, against the float model), and every quantile's error."""
    reference = outputs(calibrated, chooser)
    per_photo, models = {}, {}
    for quantile in quantiles:
        models[quantile] = with_ranges(calibrated, extremes, quantile)
        quantized = quantize(models[quantile], "float32", "float32", float_ops)
        per_photo[quantile] = logit_errors(outputs(quantized, chooser), reference)
    best = pick(per_photo)
    return models[best], RangeChoice(best, {q: float(np.mean(e)) for q, e in per_photo.items()})


def choose_ranges(calibrated: bytes, calibration: np.ndarray, chooser: np.ndarray, float_ops: tuple[str, ...],
                  quantiles: tuple[float, ...] = QUANTILES) -> tuple[bytes, RangeChoice]:
    """Per-photo extremes of the ``calibration`` photos, then :func:`choose_from_extremes`."""
    return choose_from_extremes(calibrated, photo_extremes(calibrated, calibration), chooser, float_ops, quantiles)
