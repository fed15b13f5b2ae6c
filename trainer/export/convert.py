"""model.keras -> model_<mode>.tflite: convert, verify, add metadata, verify again, write atomically.

A file that breaks a promise of its mode (:mod:`trainer.export.variants`) is never written: the export
raises :class:`ConversionError` (one line) and the previous file, if any, stays.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.metadata import read_metadata
from trainer import atomic
from trainer.export.calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_images,
    representative_dataset,
    selection_images,
)
from trainer.export.float_convert import Beside, beside, convert_model
from trainer.export.metadata import MetadataInfo, add_metadata
from trainer.export.ranges import choose_ranges, correct_open_set_bias, pin_open_set
from trainer.export.sensitivity import choose_float_layers, short_name
from trainer.export.tflite import ConversionError, calibrate, exported, quantize
from trainer.export.variants import MODES, Quantization, Verification, verify
from trainer.model.model_io import load_keras
from trainer.run_dir import MODEL, RunDir
from trainer.version import package_version

# int8 keeps this many layers in float, chosen by their effect on the logits, when the backbone's
# weights are off the int8 grid (--no-int8-grid, older runs); on the grid it needs none (README)
OFF_GRID_FLOAT_LAYERS = 6


def default_float_layers(run: RunDir) -> int:
    """0 for a model trained on the int8 grid (trainer.model.int8_grid), else OFF_GRID_FLOAT_LAYERS."""
    return 0 if run.config.get("backbone", {}).get("int8_grid", False) else OFF_GRID_FLOAT_LAYERS


@dataclass(frozen=True)
class Calibrated:
    """One calibration shared by every calibrated mode, and the layers int8 keeps in float."""

    model: bytes
    images: int
    float_layers: tuple[str, ...]

    @classmethod
    def of(cls, source, images: np.ndarray, float_layers: int, chooser: np.ndarray | None = None,
           log: Callable[[str], None] = lambda line: None, pins: dict | None = None) -> "Calibrated":
        """Calibrate on ``images``, pin the none-of-these layer's ranges (``pins``); choose the
        activation ranges, then the float layers, on ``chooser`` (else on ``images``)."""
        from trainer.model.open_set_layer import ABOVE, BELOW

        calibrated = pin_open_set(calibrate(source, representative_dataset(images)), pins or {}, BELOW, ABOVE)
        chooser = images if chooser is None else chooser
        calibrated, ranges = choose_ranges(calibrated, images, chooser, MODES["int8"].float_ops)
        log(f"  activation ranges: {ranges.line()}")
        chosen = (choose_float_layers(calibrated, chooser, MODES["int8"].float_ops, float_layers, log).layers
                  if float_layers else ())
        if pins:
            calibrated, shift = correct_open_set_bias(calibrated, chooser, MODES["int8"].float_ops, (-BELOW, ABOVE))
            log(f"  none of these: int8 threshold corrected by {shift:+.3f} logit units (mean score bias)")
        return cls(calibrated, len(images), chosen)

    def quantized(self, quant: Quantization) -> bytes:
        return quantize(self.model, quant.io_dtype, quant.output_dtype, quant.float_ops,
                        self.float_layers if quant.float_layers else ())


def metadata_info(run: RunDir, quant: Quantization, author: str, license: str) -> MetadataInfo:
    """Task-Library metadata for one variant. mean 0 / std 1: the model normalizes inside, and the
    int8 input (scale 1, zero point 0) takes the same raw pixels."""
    backbone = run.config.get("backbone", {}).get("name", "mobilenet_v2")
    h, w = run.spec.size
    data_dir = Path(run.config.get("data", {}).get("dir", "photos")).name
    return MetadataInfo(
        name=f"edge-transfer {backbone} classifier ({quant.mode})",
        description=(f"Classifies an RGB photo ({h}x{w}, 0-255, no normalization) into {len(run.labels)} classes "
                     f"({', '.join(run.labels[:8])}{', ...' if len(run.labels) > 8 else ''}); "
                     f"transfer-learned on '{data_dir}'"
                     + (f", or '{run.open_set['label']}' for a photo of none of them" if run.open_set else "")
                     + f". {quant.summary}."),
        version=f"{package_version()}+{run.model_digest[:12]}",
        author=author,
        license=license,
        labels=run.output_labels,
        open_set=run.open_set_metadata(),
    )


@dataclass(frozen=True)
class Export:
    """One written variant."""

    mode: str
    path: Path
    size_bytes: int
    seconds: float
    verification: Verification
    calibration_images: int = 0
    float_layers: tuple[str, ...] = ()

    def line(self) -> str:
        v = self.verification
        extra = f", input quantization {v.input_quantization}" if v.input_dtype == "uint8" else ""
        calib = f", calibrated on {self.calibration_images} photos" if self.calibration_images else ""
        if self.float_layers:
            calib += f", {len(self.float_layers)} layers kept float"
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, {self.seconds:.1f} s; "
                f"{v.input_dtype} -> {v.output_dtype}, min runtime {v.min_runtime_version}{extra}{calib})")


def export(run_dir: str | Path, modes: list[str], calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
           seed: int = 0, author: str = "edge-transfer", license: str = "Apache-2.0",
           keras_model=None, log: Callable[[str], None] = print,
           float_layers: int | None = None, overlap: bool = True) -> list[Export]:
    """Convert, verify, add metadata, verify again and write each mode's file atomically.
    ``float_layers``: how many int8 may keep in float (None: :func:`default_float_layers`).
    ``overlap``: the uncalibrated modes convert in a second process while this one calibrates.

    Raises ConversionError (nothing written for that mode) when a file breaks its promises.
    """
    from trainer.model.open_set_layer import exportable, open_set_pins

    run = RunDir.open(run_dir)
    float_layers = default_float_layers(run) if float_layers is None else float_layers
    model = keras_model or load_keras(run / MODEL)
    calibrating = any(MODES[m].calibrated for m in modes)
    floats = [m for m in modes if not MODES[m].calibrated]
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(exported(exportable(model)))
        side = None
        if overlap and calibrating and floats:
            side = stack.enter_context(beside(source, floats))
            log(f"converting {', '.join(floats)} in a second process while calibrating")
        calibrated = None
        if calibrating:
            t0 = time.perf_counter()
            keep = float_layers if any(MODES[m].float_layers for m in modes) else 0
            calibrated = Calibrated.of(source, calibration_images(run, calibration_count, seed), keep,
                                       selection_images(run), log, open_set_pins(model))
            kept = (f"; int8 keeps float: {', '.join(short_name(t) for t in calibrated.float_layers)}"
                    if calibrated.float_layers else "")
            log(f"calibrated on {calibrated.images} photos ({time.perf_counter() - t0:.1f} s){kept}")
        if side is not None:
            side.steal(floats)
        return [_export_one(run, mode, source, calibrated, side, author, license, log) for mode in modes]


def _export_one(run: RunDir, mode: str, source, calibrated: Calibrated | None, side: Beside | None,
                author: str, license: str, log: Callable[[str], None]) -> Export:
    quant = MODES[mode]
    t0 = time.perf_counter()
    if quant.calibrated:
        bare = calibrated.quantized(quant)
    else:
        bare = side.get(mode) if side is not None else convert_model(source, quant)
    _raise_problems(mode, "after conversion", verify(bare, quant))
    try:
        final = add_metadata(bare, metadata_info(run, quant, author, license))
    except ValueError as exc:  # e.g. labels.txt no longer matches the model's outputs
        raise ConversionError(f"{mode}: cannot add metadata: {exc}") from None
    checked = verify(final, quant)
    _raise_problems(mode, "after adding metadata", checked)
    meta = read_metadata(final)
    if meta.labels != run.output_labels:
        raise ConversionError(f"{mode}: metadata labels {meta.labels} differ from the run's {run.output_labels}")
    path = atomic.write_bytes(run.variant(mode), final)
    done = Export(mode, path, len(final), time.perf_counter() - t0, checked,
                  calibrated.images if quant.calibrated else 0,
                  calibrated.float_layers if quant.float_layers else ())
    log(done.line())
    return done


def _raise_problems(mode: str, when: str, v: Verification) -> None:
    if not v.ok:
        raise ConversionError(f"{mode} model fails its checks {when}: {'; '.join(v.problems)}")
