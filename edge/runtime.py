"""Load a .tflite model into whichever TFLite interpreter is installed, without TensorFlow.

Backend order: ``ai_edge_litert`` (current), ``tflite_runtime`` (legacy Pi wheels), and only if
neither is installed ``tensorflow.lite``. ``EDGE_TRANSFER_BACKEND`` forces one of them (tests
use it to prove the legacy runtime works). Model bytes are verified with
:func:`edge.verify.verify_model` before the C++ runtime sees them: old runtimes crash on
damaged files instead of raising.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.flatbuffer import InvalidModelError
from edge.metadata import ModelMetadata, read_metadata
from edge.model_file import read_model_bytes
from edge.quiet import runtime_info_filtered
from edge.verify import verify_model

BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow")
BACKEND_ENV = "EDGE_TRANSFER_BACKEND"
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class RuntimeMissingError(ImportError):
    """No usable TFLite interpreter package is installed."""


class DelegateError(RuntimeError):
    """A hardware delegate (Edge TPU) could not be loaded."""


class InferenceError(RuntimeError):
    """The interpreter failed while running the model. The message is one line."""


@dataclass(frozen=True)
class Backend:
    """An interpreter package: its name, Interpreter class and load_delegate function."""

    name: str
    interpreter_class: type
    load_delegate: object


@dataclass(frozen=True)
class TensorInfo:
    """What a client needs to feed or read one tensor."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantization(self) -> tuple[float, int]:
        return (self.scale, self.zero_point)

    @property
    def is_quantized(self) -> bool:
        return self.dtype.kind in "iu" and self.scale != 0

    @classmethod
    def from_details(cls, d: dict) -> "TensorInfo":
        scale, zero_point = d.get("quantization", (0.0, 0))
        return cls(int(d["index"]), d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]),
                   float(scale), int(zero_point))


@dataclass
class LoadedModel:
    """An allocated interpreter plus what was learned while loading it."""

    interpreter: object
    backend: str
    metadata: ModelMetadata
    input: TensorInfo
    output: TensorInfo
    delegate: str | None = None
    source: str = "<bytes>"

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the image input."""
        return self.input.shape[1], self.input.shape[2]


def _import_backend(name: str) -> Backend:
    if name == "ai_edge_litert":
        mod = importlib.import_module("ai_edge_litert.interpreter")
        return Backend(name, mod.Interpreter, mod.load_delegate)
    if name == "tflite_runtime":
        mod = importlib.import_module("tflite_runtime.interpreter")
        return Backend(name, mod.Interpreter, mod.load_delegate)
    if name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        return Backend(name, tf.lite.Interpreter, tf.lite.experimental.load_delegate)
    raise RuntimeMissingError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def load_backend(name: str | None = None) -> Backend:
    """The named backend, else ``$EDGE_TRANSFER_BACKEND``, else the first installed in BACKENDS."""
    name = name or os.environ.get(BACKEND_ENV) or None
    if name:
        try:
            return _import_backend(name)
        except ImportError as exc:
            raise RuntimeMissingError(f"backend {name!r} is not installed ({exc})") from None
    for candidate in BACKENDS:
        try:
            return _import_backend(candidate)
        except ImportError:
            continue
    raise RuntimeMissingError("no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime)")


def check_model_bytes(data: bytes) -> ModelMetadata:
    """Verify a model's whole structure (edge.verify.verify_model) and return its
    metadata; raises InvalidModelError with one line."""
    verify_model(data)
    return read_metadata(data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def invoke(interpreter) -> None:
    """interpreter.invoke(), its failures (a kernel rejecting a damaged model) as InferenceError."""
    try:
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise InferenceError(f"inference failed: {_first_line(exc)}") from None


def edgetpu_delegate(backend: Backend):
    """Load the Edge TPU delegate, or raise DelegateError with one actionable line.

    The library is opened with ctypes first: a failed load_delegate leaves a half-built
    Delegate whose __del__ prints a traceback at exit (ai-edge-litert 2.3).
    """
    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:
        ctypes.CDLL(library)
        return backend.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DelegateError(
            f"cannot load the Edge TPU runtime {library} ({detail}); install libedgetpu1-std or drop --edgetpu"
        ) from None


def make_interpreter(
    model: str | os.PathLike | bytes,
    num_threads: int | None = None,
    delegate=None,
    edgetpu: bool = False,
    backend: str | None = None,
) -> LoadedModel:
    """Validate, load and allocate a model from a path or bytes.

    ``delegate`` is an already loaded delegate object; ``edgetpu=True`` also loads the Edge
    TPU delegate from libedgetpu. ``backend`` overrides the default order. Raises InvalidModelError (bad file), RuntimeMissingError or DelegateError, each
    with a one-line message.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, source = bytes(model), "<bytes>"
    else:
        data, source = read_model_bytes(model), str(Path(model))
    try:
        meta = check_model_bytes(data)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{source}: {exc}" if source != "<bytes>" else str(exc)) from None
    chosen = load_backend(backend)
    delegates = [delegate] if delegate is not None else []
    if edgetpu:
        delegates.append(edgetpu_delegate(chosen))
    try:
        with runtime_info_filtered():  # the C++ "INFO: Created ... XNNPACK delegate" banner
            interpreter = chosen.interpreter_class(
                model_content=data, num_threads=num_threads, experimental_delegates=delegates or None
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{source}: the {chosen.name} interpreter rejected the model: "
                                f"{_first_line(exc)}") from None
    try:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    except (ValueError, RuntimeError) as exc:  # e.g. UnicodeDecodeError on a damaged tensor name
        raise InvalidModelError(f"{source}: unreadable tensor details: {_first_line(exc)}") from None
    if not inputs or not outputs:
        raise InvalidModelError(f"{source}: model has no input or no output tensor")
    return LoadedModel(
        interpreter=interpreter,
        backend=chosen.name,
        metadata=meta,
        input=TensorInfo.from_details(inputs[0]),
        output=TensorInfo.from_details(outputs[0]),
        delegate="edgetpu" if edgetpu else (type(delegate).__name__ if delegate is not None else None),
        source=source,
    )
