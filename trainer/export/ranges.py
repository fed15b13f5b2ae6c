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

import re
import warnings
from dataclasses import dataclass

import numpy as np

from trainer.export.sensitivity import logit_errors, outputs
from trainer.export.tflite import quantize

# quantiles of the per-photo extremes tried, simplest first; 1.0 is the calibration's own global min / max
QUANTILES = (1.0, 0.99, 0.95, 0.9, 0.8)
NOISE_SE = 2.0
CONCATENATION, RESHAPE, REDUCE_MAX = 2, 22, 82  # tflite BuiltinOperator codes
NONNEGATIVE_WHEN_SEEN = ("cosine", "cosines", "score")  # pinned from 0 when calibration saw nothing negative  # a quantile must beat the incumbent by this many standard errors of the paired differences


@dataclass(frozen=True)
class PhotoExtremes:
    """Per ranged tensor (by index), every calibration photo's min and max."""

    mins: dict[int, np.ndarray]
    maxs: dict[int, np.ndarray]


def _model_object(model: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model))


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")


def _pinned_scope(name: str) -> str | None:
    """The part of the none-of-these layers a tensor belongs to ("raw", "margin", ...; its range is
    pinned, not measured), from its name: .../none_of_these_raw_1/... -> "raw"."""
    from trainer.model.open_set_layer import LAYER_NAME

    for part in name.split(";")[0].split("/"):
        found = re.fullmatch(rf"{LAYER_NAME}_([a-z]+)(?:_\d+)?", part)
        if found:
            return found.group(1)
    return None


def _set(tensor, lo: float, hi: float) -> None:
    tensor.quantization.min, tensor.quantization.max = [float(lo)], [float(hi)]


def pin_open_set(calibrated: bytes, pins: dict[str, tuple[float, float]], below: float, above: float) -> bytes:
    """The calibrated model with the none-of-these layers' ranges set by construction: the
    calibration photos are all of known classes, so the margin that rejects a photo is never
    measured, and a measured range would clip it to zero (every photo kept). Parts in ``pins``
    get their (min, max). The class logits, their best, the extra logit and the concatenation
    share one scale in int8 (TFLite's concatenation, reshape and max keep it): all get the union
    of their calibrated ranges, its top raised by ``above``; "lowered" (best - ``below``) follows."""
    from tensorflow.lite.tools import flatbuffer_utils

    if not pins:
        return calibrated
    model = _model_object(calibrated)
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    ranged = lambda i: graph.tensors[i].quantization is not None and graph.tensors[i].quantization.min is not None  # noqa: E731
    scope = lambda i: _pinned_scope(_name(graph.tensors[i]))  # noqa: E731
    for i, t in enumerate(graph.tensors):
        part = scope(i)
        if part in pins and ranged(i) and len(t.quantization.min) == 1:
            lo, hi = pins[part]
            if part in NONNEGATIVE_WHEN_SEEN and float(t.quantization.min[0]) >= 0:
                lo = 0.0
            _set(t, lo, hi)
    for op in graph.operators:
        if codes[op.opcodeIndex] != CONCATENATION or scope(op.outputs[0]) != "concat":
            continue
        group = [i for i in list(op.inputs) + list(op.outputs) if ranged(i)]
        grew = True
        while grew:  # the reshapes and the max of the logits share their scale
            more = [o.outputs[0] for o in graph.operators if codes[o.opcodeIndex] in (RESHAPE, REDUCE_MAX)
                    and o.inputs[0] in group and o.outputs[0] not in group and ranged(o.outputs[0])]
            group += more
            grew = bool(more)
        lo = min(float(graph.tensors[i].quantization.min[0]) for i in group)
        hi = max(float(graph.tensors[i].quantization.max[0]) for i in group) + above
        for i in group:
            _set(graph.tensors[i], lo, hi)
        for i, t in enumerate(graph.tensors):
            if scope(i) == "lowered" and ranged(i):
                _set(t, lo - below, hi - below)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def ranged_tensors(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Index -> (min, max) of the calibrated model's activation tensors, graph inputs and outputs
    excluded (the uint8 input must keep 0..255: raw pixels; the output is the float head's), and
    the none-of-these layer's (:func:`pin_open_set`)."""
    graph = _model_object(calibrated).subgraphs[0]
    fixed = set(graph.inputs) | set(graph.outputs)
    out = {}
    for i, t in enumerate(graph.tensors):
        q = t.quantization
        if (i not in fixed and q is not None and q.min is not None and len(q.min) == 1
                and _pinned_scope(_name(t)) is None):
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


def open_set_margins(probs: np.ndarray) -> np.ndarray:
    """The none-of-these margin of each photo, log p(last) - log max p(others): by construction
    sharpness * (threshold - score) while it is inside the layer's clip."""
    p = np.clip(np.asarray(probs, np.float64), 1e-30, 1.0)
    return np.log(p[:, -1]) - np.log(p[:, :-1].max(axis=1))


def correct_open_set_bias(calibrated: bytes, chooser: np.ndarray, float_ops: tuple[str, ...],
                          clip: tuple[float, float]) -> tuple[bytes, float]:
    """The calibrated model with its none-of-these threshold moved by int8's mean score bias.

    Noise added to the embedding by int8 lowers every cosine a little (the measured shift on
    tf_flowers: -0.005, as large as the typical error): uncorrected, int8 rejects photos the float
    model keeps. The shift is measured on the ``chooser`` photos, from the margins of the float and
    the quantized outputs (photos inside the clip only), and subtracted from the threshold
    constant (the bias of the "raw" layer, ``sharpness * threshold + BELOW``). Returns the model and the
    shift in logit units (0.0 without a none-of-these layer)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model_object(calibrated)
    graph = model.subgraphs[0]
    constant = None
    for op in graph.operators:
        if _pinned_scope(_name(graph.tensors[op.outputs[0]])) == "raw":
            held = [i for i in op.inputs if i >= 0 and model.buffers[graph.tensors[i].buffer].data is not None
                    and graph.tensors[i].shape is not None and list(graph.tensors[i].shape) == [1]]
            constant = graph.tensors[held[-1]] if held else None  # the bias: shape [1] (the kernel is [1, 1])
    if constant is None:
        return calibrated, 0.0
    reference = open_set_margins(outputs(calibrated, chooser))
    quantized = open_set_margins(outputs(quantize(calibrated, "float32", "float32", float_ops), chooser))
    lo, hi = clip
    inside = (reference > lo + 0.5) & (reference < hi - 0.5) & (quantized > lo + 0.5) & (quantized < hi - 0.5)
    if inside.sum() < 10:
        return calibrated, 0.0
    shift = float(np.mean(reference[inside] - quantized[inside]))
    buffer = model.buffers[constant.buffer]
    value = np.frombuffer(bytes(bytearray(buffer.data)), np.float32).copy()
    buffer.data = np.frombuffer((value + np.float32(shift)).astype(np.float32).tobytes(), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), shift
