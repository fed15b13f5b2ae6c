"""RUN_DIR/model.keras -> model_<mode>.tflite for every quantization mode, verified, with metadata.

One table of modes (:data:`MODES`, :class:`Quantization` values) drives option validation,
converter settings, the promises each file is checked against, and the export loop. Every file
is converted, verified, given Task-Library metadata, verified again and only then written
(atomically), so a crash or a failed check never leaves half a model at its final path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge import metadata as edge_metadata, model_file
from edge.preprocess import PreprocessSpec
from trainer import atomic, data
from trainer.data import DataError

INTEGER_TENSOR_TYPES = frozenset({"int8", "uint8", "int32"})
# What the Task Library and MediaPipe accept as a quantized image input: raw pixels, i.e. the
# uint8 value is the real value (scale 1, zero point 0); our model takes 0..255 RGB.
IDENTITY_INPUT_QUANTIZATION = (1.0, 0)
DEFAULT_CALIBRATION_IMAGES = 300


class ConversionError(RuntimeError):
    """The converter failed or a converted file broke a promise of its mode (one line)."""


@dataclass(frozen=True)
class Quantization:
    """One export mode: how the converter is set up and what the resulting file promises.

    weights: the storage type the mode promises for the big weight tensors.
    io_dtype / output_dtype: the input and output tensor dtypes clients see.
    integer_only: every op runs in integer arithmetic (no float tensors, no DEQUANTIZE).
    """

    mode: str
    summary: str
    weights: str
    io_dtype: str = "float32"
    output_dtype: str = "float32"
    optimize: bool = False
    calibrated: bool = False
    integer_only: bool = False

    @classmethod
    def float32(cls) -> "Quantization":
        return cls("float32", "float32 weights and math: the reference copy", weights="float32")

    @classmethod
    def float16(cls) -> "Quantization":
        return cls("float16", "float16 weights, float32 math: half the size, same accuracy", weights="float16",
                   optimize=True)

    @classmethod
    def dynamic(cls) -> "Quantization":
        return cls("dynamic", "int8 weights, float I/O (dynamic-range): a quarter of the size", weights="int8",
                   optimize=True)

    @classmethod
    def int8(cls, float_output: bool = False) -> "Quantization":
        """Full integer with uint8 input and output: Android's Task Library and MediaPipe reject int8
        I/O. ``float_output`` (an experiment) keeps a float32 output behind one DEQUANTIZE."""
        return cls("int8", "all-integer math, uint8 in / uint8 out: Edge TPU, NNAPI, microcontrollers",
                   weights="int8", io_dtype="uint8", output_dtype="float32" if float_output else "uint8",
                   optimize=True, calibrated=True, integer_only=not float_output)

    def configure(self, converter, representative: Callable | None = None) -> None:
        """Set a tf.lite.TFLiteConverter up for this mode."""
        import tensorflow as tf

        if self.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.weights == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if self.mode == "dynamic":
            # TF >= 2.16 quantizes dense layers per channel (FULLY_CONNECTED version 12), which
            # tflite-runtime 2.14 (the Raspberry Pi wheel) cannot load; per-tensor keeps it loadable.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if self.calibrated:
            if representative is None:
                raise ValueError(f"{self.mode} needs calibration images")
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.as_dtype(self.io_dtype)
            converter.inference_output_type = tf.as_dtype(self.output_dtype)


MODES: dict[str, Quantization] = {q.mode: q for q in (
    Quantization.float32(), Quantization.float16(), Quantization.dynamic(), Quantization.int8())}


def resolve_modes(mode: str) -> list[str]:
    """"all" or one mode name -> mode names in table order; a bad name is a user error."""
    if mode == "all":
        return list(MODES)
    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)} or all, got {mode!r}")
    return [mode]


def model_path(run_dir: str | Path, mode: str) -> Path:
    return Path(run_dir) / f"model_{mode}.tflite"


# --------------------------------------------------------------------------- verification
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "problems": list(self.problems)}


def inspect_model(model_bytes: bytes) -> Verification:
    """Read dtypes, quantization, ops and the converter's min_runtime_version of a model."""
    from edge.runtime import make_interpreter

    loaded = make_interpreter(model_bytes, num_threads=1)
    tensors = Counter(str(np.dtype(d["dtype"])) for d in loaded.interpreter.get_tensor_details())
    return Verification(
        input_dtype=str(loaded.input.dtype),
        output_dtype=str(loaded.output.dtype),
        input_quantization=loaded.input.quantization,
        output_quantization=loaded.output.quantization,
        ops=dict(sorted(Counter(model_file.op_names(model_bytes)).items())),
        tensor_types=dict(sorted(tensors.items())),
        min_runtime_version=edge_metadata.read_metadata(model_bytes).min_runtime_version,
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
    if quant.io_dtype == "uint8" and v.input_quantization != IDENTITY_INPUT_QUANTIZATION:
        problems.append(f"input quantization {v.input_quantization} is not (1.0, 0): raw pixels would be misread")
    if v.min_runtime_version is None:
        problems.append("no min_runtime_version recorded")
    return Verification(**{**asdict(v), "problems": tuple(problems)})


# --------------------------------------------------------------------------- calibration
def calibration_paths(splits: data.Splits, n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` training photos, class-balanced and seeded: each class in turn gives its next
    photo (in a seeded shuffle) until n are chosen, so small classes are fully represented and
    the activation ranges see every class, whatever the class imbalance."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[data.Sample]] = {}
    for s in splits.train:
        by_class.setdefault(s.label, []).append(s)
    queues = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    chosen: list[data.Sample] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        chosen.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    chosen = chosen[:n]
    return [Path(splits.data_dir) / s.path for s in chosen]


def calibration_images(run_dir: Path, spec: PreprocessSpec, n: int, seed: int = 0) -> np.ndarray:
    """Decoded calibration photos (uint8, the one preprocessing), pixel range anchored at 0..255.

    The uint8 input's quantization comes from the calibrated input range; it must be exactly
    0..255 for scale 1 / zero point 0 (raw pixels in). Photos almost always span it; if the
    chosen ones do not, one pixel of the first image is set to 0 and one to 255.
    """
    if n < 1:
        raise DataError(f"--calibration-images must be at least 1, got {n}")
    splits = data.read_splits(run_dir)
    if not splits.train:
        raise DataError(f"{run_dir}/splits.json has no training photos to calibrate int8 with")
    images, ok, errors = data.load_images(calibration_paths(splits, n, seed), spec)
    images = images[ok]
    if not len(images):
        raise DataError(f"no calibration photo could be read, e.g. {next(iter(errors.items()))}")
    if images.min() > 0:
        images[0, 0, 0, 0] = 0
    if images.max() < 255:
        images[0, 0, 1, 0] = 255
    return images


def representative_dataset(images: np.ndarray) -> Callable:
    """The converter's calibration input: one float32 0..255 image a step, as model.keras takes."""
    return lambda: ([image[None].astype(np.float32)] for image in images)


# --------------------------------------------------------------------------- conversion
@contextlib.contextmanager
def _silenced():
    """Swallow everything written to stdout/stderr, Python and C++ alike (the MLIR converter
    prints from C++); on error the captured tail goes into the exception message."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            sink.seek(0)
            tail = sink.read().decode("utf-8", errors="replace").strip().splitlines()[-3:]
            first = (str(exc).strip().splitlines() or [""])[0]
            said = f" | converter said: {' / '.join(tail)}" if tail else ""
            raise ConversionError(f"{type(exc).__name__}: {first}{said}") from exc
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def convert_model(model, quant: Quantization, calibration: np.ndarray | None = None) -> bytes:
    """A Keras model -> TFLite bytes for one mode (no metadata yet)."""
    import tensorflow as tf

    from trainer.features import quiet_convert

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quant.configure(converter, representative_dataset(calibration) if quant.calibrated else None)
    with _silenced():
        return quiet_convert(converter)


@dataclass(frozen=True)
class RunInfo:
    """What the metadata and the model card say about a run."""

    run_dir: Path
    labels: list[str]
    spec: PreprocessSpec
    config: dict
    model_digest: str

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunInfo":
        run_dir = Path(run_dir)
        for name in ("model.keras", "labels.txt", "config.json", "splits.json"):
            if not (run_dir / name).is_file():
                raise DataError(f"{run_dir / name} not found: is {run_dir} a training run directory?")
        labels = (run_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
        config = json.loads((run_dir / "config.json").read_text())
        digest = hashlib.sha256((run_dir / "model.keras").read_bytes()).hexdigest()
        return cls(run_dir, labels, PreprocessSpec.from_dict(config["preprocess"]), config, digest)


def metadata_info(run: RunInfo, quant: Quantization, author: str, license: str):
    """Task-Library metadata for one variant. mean 0 / std 1: the model normalizes inside, and the
    int8 input (scale 1, zero point 0) takes the same raw pixels."""
    from trainer.metadata import MetadataInfo

    backbone = run.config.get("backbone", {}).get("name", "mobilenet_v2")
    h, w = run.spec.size
    data_dir = Path(run.config.get("data", {}).get("dir", "photos")).name
    return MetadataInfo(
        name=f"edge-transfer {backbone} classifier ({quant.mode})",
        description=(f"Classifies an RGB photo ({h}x{w}, 0-255, no normalization) into {len(run.labels)} classes "
                     f"({', '.join(run.labels[:8])}{', ...' if len(run.labels) > 8 else ''}); "
                     f"transfer-learned on '{data_dir}'. {quant.summary}."),
        version=f"{_package_version()}+{run.model_digest[:12]}",
        author=author,
        license=license,
        labels=run.labels,
    )


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("edge-transfer")
    except Exception:  # running from a source tree that is not installed
        return "0.1.0"


@dataclass(frozen=True)
class Export:
    """One written variant."""

    mode: str
    path: Path
    size_bytes: int
    seconds: float
    verification: Verification
    calibration_images: int = 0

    def line(self) -> str:
        v = self.verification
        extra = f", input quantization {v.input_quantization}" if self.mode == "int8" else ""
        calib = f", calibrated on {self.calibration_images} photos" if self.calibration_images else ""
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, {self.seconds:.1f} s; "
                f"{v.input_dtype} -> {v.output_dtype}, min runtime {v.min_runtime_version}{extra}{calib})")


def export(run_dir: str | Path, modes: list[str], calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
           seed: int = 0, author: str = "edge-transfer", license: str = "Apache-2.0",
           keras_model=None, log: Callable[[str], None] = print,
           quantizations: dict[str, Quantization] | None = None) -> list[Export]:
    """Convert, verify, add metadata, verify again and write each mode's file atomically.

    Raises ConversionError (nothing written for that mode) when a file breaks its promises.
    """
    import keras

    from trainer.metadata import add_metadata

    run = RunInfo.load(run_dir)
    table = {**MODES, **(quantizations or {})}
    model = keras_model or keras.models.load_model(run.run_dir / "model.keras")
    calibration = None
    if any(table[m].calibrated for m in modes):
        calibration = calibration_images(run.run_dir, run.spec, calibration_count, seed)
    exports = []
    for mode in modes:
        quant = table[mode]
        t0 = time.perf_counter()
        bare = convert_model(model, quant, calibration)
        _raise_problems(mode, "after conversion", verify(bare, quant))
        try:
            final = add_metadata(bare, metadata_info(run, quant, author, license))
        except ValueError as exc:  # e.g. labels.txt no longer matches the model's outputs
            raise ConversionError(f"{mode}: cannot add metadata: {exc}") from None
        checked = verify(final, quant)
        _raise_problems(mode, "after adding metadata", checked)
        meta = edge_metadata.read_metadata(final)
        if meta.labels != run.labels:
            raise ConversionError(f"{mode}: metadata labels {meta.labels} differ from labels.txt {run.labels}")
        path = atomic.write_bytes(model_path(run.run_dir, mode), final)
        done = Export(mode, path, len(final), time.perf_counter() - t0, checked,
                      len(calibration) if quant.calibrated else 0)
        log(done.line())
        exports.append(done)
    return exports


def _raise_problems(mode: str, when: str, v: Verification) -> None:
    if not v.ok:
        raise ConversionError(f"{mode} model fails its checks {when}: {'; '.join(v.problems)}")


def run(run_dir: str | Path, modes: list[str], calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
        thresholds: dict | None = None, seed: int = 0, threads: int | None = None, author: str = "edge-transfer",
        license: str = "Apache-2.0", log: Callable[[str], None] = print):
    """The `convert` command: export the variants, gate them on parity, write the model card.
    Returns the ParityReport of this invocation's variants (its ``passed`` is the gate)."""
    run_info = RunInfo.load(run_dir)  # a bad RUN_DIR fails here, before TensorFlow loads
    import keras

    from trainer import model_card, parity

    model = keras.models.load_model(run_info.run_dir / "model.keras")
    export(run_info.run_dir, modes, calibration_count, seed, author, license, keras_model=model, log=log)
    t0 = time.perf_counter()
    report = parity.check(run_info.run_dir, modes, thresholds or parity.default_thresholds(), keras_model=model,
                          threads=threads, spec=run_info.spec)
    log(f"wrote {parity.write(run_info.run_dir, report)} ({time.perf_counter() - t0:.1f} s)")
    md, js = model_card.write(run_info.run_dir)
    log(f"wrote {md} and {js.name}")
    return report
