"""The variant table: every TFLite export mode, what its file promises, and the check of a file.

One table (:data:`MODES`, :class:`Quantization` values) drives option validation, converter
settings, the promises each file is checked against, the export loop, the parity gate's
defaults, the model card and the benchmark rows. It imports no TensorFlow at module level and
nothing above it, so every command can depend on it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from edge.metadata import read_metadata
from edge.model_file import op_names
from edge.runtime import make_interpreter
from trainer.data.dataset import DataError

INTEGER_TENSOR_TYPES = frozenset({"int8", "uint8", "int32"})
# What the Task Library and MediaPipe accept as a quantized image input: raw pixels, i.e. the
# uint8 value is the real value (scale 1, zero point 0); our model takes 0..255 RGB.
IDENTITY_INPUT_QUANTIZATION = (1.0, 0)


@dataclass(frozen=True)
class Quantization:
    """One export mode: how the file is made and what it promises.

    weights: the storage type the mode promises for the big weight tensors.
    io_dtype / output_dtype: the input and output tensor dtypes clients see.
    calibrated: activations quantized from calibration photos (int8 math).
    float_ops: op types kept in float inside a calibrated model (the head: FULLY_CONNECTED and
        SOFTMAX, so logits and probabilities are not squeezed onto a 256-level grid, which made
        exact ties; the head is 0.02 MB of weights).
    float_layers: keep the layers whose float copy most lowers the logit error in float (int8's knob).
    integer_only: every op runs in integer arithmetic (no float tensors, no DEQUANTIZE).
    gate: the default parity gate against model.keras on the held-out split: max |dp| for float
        copies; min agreement (%) and min accuracy change (points) for quantized ones.
    """

    mode: str
    summary: str
    weights: str
    io_dtype: str = "float32"
    output_dtype: str = "float32"
    optimize: bool = False
    calibrated: bool = False
    float_ops: tuple[str, ...] = ()
    float_layers: bool = False
    integer_only: bool = False
    gate_max_abs_dp: float | None = None
    gate_min_agreement: float | None = None
    gate_min_delta_acc: float | None = None

    @classmethod
    def float32(cls) -> "Quantization":
        return cls("float32", "float32 weights and math: the reference copy", weights="float32",
                   gate_max_abs_dp=1e-4)

    @classmethod
    def float16(cls) -> "Quantization":
        return cls("float16", "float16 weights, float32 math: half the size, same accuracy", weights="float16",
                   optimize=True, gate_max_abs_dp=0.05)

    @classmethod
    def dynamic(cls) -> "Quantization":
        return cls("dynamic", "int8 weights, float I/O (dynamic-range): a quarter of the size", weights="int8",
                   optimize=True, gate_min_agreement=97.0, gate_min_delta_acc=-1.0)

    @classmethod
    def int8(cls) -> "Quantization":
        """uint8 pixels in, float32 probabilities out: MediaPipe and the Task Library check input and
        output types separately and accept exactly this pair."""
        return cls("int8", "int8 math, uint8 pixels in, float32 probabilities out (softmax in float): "
                   "phones and Raspberry Pi CPUs", weights="int8", io_dtype="uint8", output_dtype="float32",
                   optimize=True, calibrated=True, float_ops=("FULLY_CONNECTED", "SOFTMAX"), float_layers=True,
                   # weights on the int8 grid (trainer.model.int8_grid) and activation ranges from per-photo
                   # quantiles (trainer.export.ranges): the default tf_flowers run meets 99 % / -0.3 (README)
                   gate_min_agreement=99.0, gate_min_delta_acc=-0.3)

    @classmethod
    def full_int8(cls) -> "Quantization":
        return cls("full_int8", "all-integer math, uint8 in / uint8 out: Edge TPU, NNAPI, microcontrollers",
                   weights="int8", io_dtype="uint8", output_dtype="uint8", optimize=True, calibrated=True,
                   # looser: every op integer, the uint8 softmax output's 1/256 grid included (README)
                   integer_only=True, gate_min_agreement=97.0, gate_min_delta_acc=-1.0)

    def configure(self, converter) -> None:
        """Set a tf.lite.TFLiteConverter up for an uncalibrated mode (calibrated modes are made
        from one calibrated model by trainer.export.tflite.quantize)."""
        import tensorflow as tf

        if self.calibrated:
            raise ValueError(f"{self.mode} is made by trainer.export.tflite.quantize, not by one converter run")
        if self.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.weights == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if self.mode == "dynamic":
            # TF >= 2.16 quantizes dense layers per channel (FULLY_CONNECTED version 12), which
            # tflite-runtime 2.14 (the Raspberry Pi wheel) cannot load; per-tensor keeps it loadable.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True


MODES: dict[str, Quantization] = {q.mode: q for q in (
    Quantization.float32(), Quantization.float16(), Quantization.dynamic(), Quantization.int8(),
    Quantization.full_int8())}


def resolve_modes(mode: str) -> list[str]:
    """"all" or one mode name -> mode names in table order; a bad name is a user error."""
    if mode == "all":
        return list(MODES)
    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)} or all, got {mode!r}")
    return [mode]


@dataclass(frozen=True)
class Verification:
    """What a converted file actually is, and how it falls short of its mode's promises."""

    input_dtype: str
    output_dtype: str
    input_quantization: tuple[float, int]
    output_quantization: tuple[float, int]
    ops: dict[str, int]
    tensor_types: dict[str, int]
    min_runtime_version: str | None
    problems: tuple[str, ...] = ()
    input_signature: tuple[int, ...] = ()  # the input's shape_signature: [1, H, W, 3], -1 where dynamic
    dynamic_dims: int = 0  # -1 dimensions in every tensor's shape_signature: 0 for the files we write

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "problems": list(self.problems)}


def inspect_model(model_bytes: bytes) -> Verification:
    """Read dtypes, quantization, ops and the converter's min_runtime_version of a model."""
    loaded = make_interpreter(model_bytes, num_threads=1)
    details = loaded.interpreter.get_tensor_details()
    tensors = Counter(str(np.dtype(d["dtype"])) for d in details)
    signature = loaded.interpreter.get_input_details()[0].get("shape_signature", loaded.input.shape)
    return Verification(
        input_dtype=str(loaded.input.dtype),
        output_dtype=str(loaded.output.dtype),
        input_quantization=loaded.input.quantization,
        output_quantization=loaded.output.quantization,
        ops=dict(sorted(Counter(op_names(model_bytes)).items())),
        tensor_types=dict(sorted(tensors.items())),
        min_runtime_version=read_metadata(model_bytes).min_runtime_version,
        input_signature=tuple(int(d) for d in signature),
        dynamic_dims=sum(int((np.asarray(d.get("shape_signature", ())) < 0).sum()) for d in details),
    )


def verify(model_bytes: bytes, quant: Quantization) -> Verification:
    """Check a converted file against what its mode promises; problems are listed, not raised."""
    v = inspect_model(model_bytes)
    problems = []
    if v.input_dtype != quant.io_dtype:
        problems.append(f"input is {v.input_dtype}, expected {quant.io_dtype}")
    if v.output_dtype != quant.output_dtype:
        problems.append(f"output is {v.output_dtype}, expected {quant.output_dtype}")
    if quant.weights in ("float16", "int8") and not v.tensor_types.get(quant.weights):
        problems.append(f"no {quant.weights} weight tensors")
    if quant.weights == "float32" and set(v.tensor_types) - {"float32", "int32"}:
        problems.append(f"unexpected tensor types {sorted(v.tensor_types)}")
    if quant.integer_only:
        floats = sorted(set(v.tensor_types) - INTEGER_TENSOR_TYPES)
        if floats:
            problems.append(f"not integer-only: {', '.join(floats)} tensors")
        if "DEQUANTIZE" in v.ops:
            problems.append("not integer-only: DEQUANTIZE op")
    elif quant.calibrated and v.tensor_types.get("int8", 0) <= v.tensor_types.get("float32", 0):
        problems.append(f"mostly float, not int8 math: tensor types {v.tensor_types}")
    if quant.io_dtype == "uint8" and v.input_quantization != IDENTITY_INPUT_QUANTIZATION:
        problems.append(f"input quantization {v.input_quantization} is not (1.0, 0): raw pixels would be misread")
    if v.min_runtime_version is None:
        problems.append("no min_runtime_version recorded")
    if v.input_signature[:1] != (1,) or v.dynamic_dims:
        problems.append(f"input signature {list(v.input_signature)} with {v.dynamic_dims} dynamic dimensions: "
                        "expected a fixed batch of 1 (LiteRT.js and GPU / NNAPI delegates need it)")
    return Verification(**{**asdict(v), "problems": tuple(problems)})
