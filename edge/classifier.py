"""Image classification on a TFLite model: photo -> ranked categories, with no TensorFlow.

Everything the model needs is read from the file itself: input size, dtype and quantization
from the interpreter; normalization and labels from its metadata. Pixels come only from
:mod:`edge.preprocess`, the definition training uses, so device and trainer see the same input.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from edge import preprocess
from edge.flatbuffer import InvalidModelError
from edge.metadata import ModelMetadata
from edge.postprocess import (Category, Verdict, best_known, is_none_of_these, label_of, read_labels, to_scores,
                              top_categories)
from edge.runtime import InferenceError, LoadedModel, TensorInfo, invoke, make_interpreter


@dataclass(frozen=True)
class ClassifierOptions:
    """How to load and query a classifier.

    model: path to the .tflite file.
    num_threads: interpreter CPU threads (None: the runtime's default).
    top_k: how many categories to return (<= 0: all).
    threshold: drop categories scoring below this; > 0 also decides "none of these" (no known
        class reaches it), overriding the model's own open-set class.
    allow / deny: only report / never report these labels (exact match).
    edgetpu: run through the Edge TPU delegate (needs libedgetpu and an _edgetpu model).
    labels: a labels file that overrides the model's own labels.
    fast_decode: let the JPEG decoder downscale while decoding (see edge.preprocess.load_rgb).
    decode_workers: threads decoding ahead of the interpreter in :meth:`Classifier.classify_paths`.
    """

    model: str | Path
    num_threads: int | None = None
    top_k: int = 3
    threshold: float = 0.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    edgetpu: bool = False
    labels: str | Path | None = None
    fast_decode: bool = True
    decode_workers: int = 2


@dataclass(frozen=True)
class InputPlan:
    """How a uint8 RGB image becomes the input tensor (arguments of preprocess.to_input_tensor)."""

    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    quantization: tuple[float, int] = (0.0, 0)


@dataclass(frozen=True)
class Result:
    """The outcome for one image file: categories and the none-of-these verdict, or an error."""

    path: str
    categories: tuple[Category, ...] = ()
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    error: str | None = None
    unknown: bool = False  # none of the classes (see edge.postprocess.is_none_of_these)
    none_score: float | None = None  # the reject class's probability; None without one
    best: Category | None = None  # the best known class
    reject_label: str | None = None  # the open-set class's label; None without one


@dataclass(frozen=True)
class _Prepared:
    path: str
    tensor: np.ndarray | None
    ms: float
    error: str | None = None


def plan_input(meta: ModelMetadata, tensor: TensorInfo) -> InputPlan:
    """Choose the input normalization for a model.

    Float inputs: the metadata's mean/std (ours 0/1 -> raw 0..255, Google's 127.5/127.5);
    without metadata our contract, raw 0..255. Integer inputs: raw pixels (shifted by 128 for
    int8), whatever the metadata says, as libcoral and the Task Library do; the quantization
    already encodes the normalization (automl's metadata says mean 0, std 1 on an input
    quantized with scale 1/127, which taken literally would saturate every pixel).
    """
    if tensor.dtype.kind != "f":
        return _raw_pixel_plan(tensor.dtype)
    if meta.mean is None or meta.std is None:
        return InputPlan()
    mean, std = np.asarray(meta.mean), np.asarray(meta.std)
    if (len(mean) not in (1, 3) or len(std) not in (1, 3) or not np.isfinite(mean).all()
            or not np.isfinite(std).all() or (std == 0).any()):
        raise InvalidModelError(f"metadata normalization mean {meta.mean} std {meta.std} is unusable")
    return InputPlan(tuple(meta.mean), tuple(meta.std))


def check_image_classifier(model: LoadedModel) -> None:
    """Raise InvalidModelError (one line) unless the model takes one RGB image of a numeric
    dtype and returns a numeric score vector: what Classifier can feed and read."""
    i, o = model.input, model.output
    if len(i.shape) != 4 or i.shape[0] != 1 or i.shape[3] != 3 or min(i.shape) < 1:
        raise InvalidModelError(f"{model.source}: input shape {list(i.shape)} is not one RGB image (1, H, W, 3)")
    for what, t in (("input", i), ("output", o)):
        if t.dtype.kind not in "fiu" or not np.isfinite(t.scale) or t.scale < 0:
            raise InvalidModelError(f"{model.source}: unsupported {what} tensor {t.dtype} scale {t.scale}")
    if len(o.shape) < 2 or o.shape[0] != 1 or int(np.prod(o.shape[1:])) < 1:
        raise InvalidModelError(f"{model.source}: output shape {list(o.shape)} is not one score vector (1, C)")


def _raw_pixel_plan(dtype: np.dtype) -> InputPlan:
    """Raw pixels for an integer input: unchanged for uint8, shifted into range for int8."""
    if dtype == np.int8:
        return InputPlan(mean=(128.0, 128.0, 128.0), quantization=(1.0, 0))
    return InputPlan()


def resolve_labels(
    model_path: str | Path | None, meta: ModelMetadata, override: str | Path | None
) -> tuple[list[str] | None, str]:
    """Labels and where they came from: an explicit file, the model's metadata, a labels.txt
    beside the model, else None (categories are named by index)."""
    if override is not None:
        return read_labels(override), str(override)
    if meta.labels:
        return list(meta.labels), "metadata"
    if model_path is not None:
        beside = Path(model_path).with_name("labels.txt")
        if beside.is_file():
            return read_labels(beside), str(beside)
    return None, "indices"


class Classifier:
    """A loaded TFLite image classifier. Not thread-safe: call it from one thread."""

    def __init__(self, options: ClassifierOptions):
        self.options = options
        self.model: LoadedModel = make_interpreter(options.model, options.num_threads, edgetpu=options.edgetpu)
        check_image_classifier(self.model)
        self.spec = preprocess.PreprocessSpec(size=self.model.input_size)
        self.plan = plan_input(self.model.metadata, self.model.input)
        self.labels, self.labels_source = resolve_labels(options.model, self.model.metadata, options.labels)
        self.reject_index, self.warnings = _reject_index(self.model.metadata, self.num_classes)
        self._interpreter = self.model.interpreter

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.model.output.shape[1:]))

    @property
    def reject_label(self) -> str | None:
        """The open-set ("none of these") class's label; None when the model has none."""
        return None if self.reject_index is None else label_of(self.reject_index, self.labels)

    def prepare(self, path: str | Path) -> np.ndarray:
        """Decode and resize a photo to the model's input size (edge.preprocess.prepare)."""
        return preprocess.prepare(path, self.spec, fast_decode=self.options.fast_decode)

    def input_tensor(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image (any size) -> the model's input batch (resize, normalize/quantize)."""
        image = preprocess.resize(np.asarray(image, dtype=np.uint8), self.spec)
        return preprocess.to_input_tensor(image, self.model.input.dtype, self.plan.mean, self.plan.std,
                                          self.plan.quantization)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Invoke on a prepared input batch -> float32 class scores (see edge.postprocess).

        Raises edge.runtime.InferenceError (one line) when the interpreter fails."""
        try:
            self._interpreter.set_tensor(self.model.input.index, tensor)
        except ValueError as exc:
            raise InferenceError(f"cannot set the input: {' '.join(str(exc).split())}") from None
        invoke(self._interpreter)
        try:
            out = self._interpreter.get_tensor(self.model.output.index)
        except ValueError as exc:  # e.g. an output no operator writes: "Tensor data is null"
            raise InferenceError(f"cannot read the output: {' '.join(str(exc).split())}") from None
        if out.ndim < 2 or out.shape[0] != 1 or out.size == 0:
            raise InferenceError(f"output shape {list(out.shape)} is not one score vector (1, C)")
        return to_scores(out[0], self.model.output.quantization)

    def scores(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image (any size) -> float32 class scores."""
        return self.run(self.input_tensor(image))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Full score vectors: (H, W, 3) -> (C,), (N, H, W, 3) -> (N, C), float32.

        Images are RGB uint8; ones not at the model size are resized the trainer's way. This is
        what parity checks compare with the Keras model's softmax output.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            return self.scores(images)
        if images.ndim != 4:
            raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) images, got shape {images.shape}")
        out = np.empty((len(images), self.num_classes), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.scores(image)
        return out

    def categorize(self, scores: np.ndarray) -> list[Category]:
        """Scores -> the top categories under this classifier's options."""
        o = self.options
        return top_categories(scores, self.labels, o.top_k, o.threshold, o.allow, o.deny)

    def judge(self, scores: np.ndarray) -> Verdict:
        """Scores -> categories (as :meth:`categorize`) and the none-of-these verdict."""
        o, reject = self.options, self.reject_index
        return Verdict(
            tuple(self.categorize(scores)),
            is_none_of_these(scores, reject, o.threshold),
            None if reject is None else float(scores[reject]),
            best_known(scores, self.labels, reject, o.allow, o.deny),
            self.reject_label,
        )

    def classify_image(self, image: np.ndarray) -> list[Category]:
        """RGB uint8 array (any size) -> top categories."""
        return self.categorize(self.scores(image))

    def classify_path(self, path: str | Path) -> list[Category]:
        """Photo file -> top categories."""
        return self.classify_image(self.prepare(path))

    def classify_paths(self, paths: Iterable[str | Path]) -> Iterator[Result]:
        """Classify many files in order.

        A thread pool decodes, resizes and builds input tensors ahead while the interpreter
        runs (PIL decoding and invoke release the GIL). A file that cannot be read yields a
        Result with ``error`` and the rest go on.
        """
        workers = max(1, self.options.decode_workers)
        queue = iter(paths)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            ahead: deque[Future] = deque(pool.submit(self._prepare_timed, p) for p in islice(queue, 2 * workers))
            while ahead:
                prepared = ahead.popleft().result()
                ahead.extend(pool.submit(self._prepare_timed, p) for p in islice(queue, 1))
                yield self._classify_prepared(prepared)

    def _prepare_timed(self, path: str | Path) -> _Prepared:
        start = time.perf_counter()
        try:
            tensor = self.input_tensor(self.prepare(path))
        except Exception as exc:  # any undecodable file is reported for that file only
            return _Prepared(str(path), None, 0.0, _one_line(exc))
        return _Prepared(str(path), tensor, (time.perf_counter() - start) * 1000)

    def _classify_prepared(self, prepared: _Prepared) -> Result:
        if prepared.tensor is None:
            return Result(prepared.path, error=prepared.error)
        start = time.perf_counter()
        v = self.judge(self.run(prepared.tensor))
        return Result(prepared.path, v.categories, prepared.ms, (time.perf_counter() - start) * 1000,
                      unknown=v.unknown, none_score=v.none_score, best=v.best, reject_label=v.reject_label)


def _reject_index(meta: ModelMetadata, num_classes: int) -> tuple[int | None, tuple[str, ...]]:
    """The open-set class's output index (the last), and the metadata's warnings plus one when
    its labels do not match the outputs (the last label would not be the last output)."""
    warnings = meta.warnings
    if meta.open_set is None:
        return None, warnings
    if len(meta.labels or ()) != num_classes:
        n = len(meta.labels or ())
        return None, (*warnings, f"{n} labels for {num_classes} outputs; no none-of-these class")
    return num_classes - 1, warnings


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
