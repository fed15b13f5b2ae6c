"""TensorFlow's converter, run quietly: float conversions, one int8 calibration, and the
quantized models made from it.

The MLIR converter prints pages from C++ and Python; everything here swallows them (a failure
becomes one ConversionError line). Calibrated modes are made the way TensorFlow's own
QuantizationDebugger makes its selectively quantized models: calibrate once
(``_experimental_calibrate_only``), then ``mlir_quantize`` with op types and layers kept in float,
then the I/O types set as the converter itself sets them (``util.modify_model_io_type``). One
calibration then serves every calibrated mode and every choice of float layers.

Every converter run sees the model with a fixed batch of one (:func:`input_signature`): the files
declare ``[1, H, W, 3]`` in and ``[1, C]`` out, with no -1 anywhere in the graph. LiteRT.js cannot
resize an input, and mobile GPU / NNAPI delegates handle dynamic shapes poorly; the edge runtime
feeds one photo an invoke anyway (measured: same scores, same latency, docs/web.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import weakref
from pathlib import Path


BATCH = 1  # every .tflite we write takes one photo an invoke


class ConversionError(RuntimeError):
    """The converter failed or a converted file broke a promise of its mode (one line)."""


def input_signature(model) -> list:
    """The Keras model's input with the batch fixed to :data:`BATCH`: ``[TensorSpec([1, H, W, 3])]``,
    named as its Input layer (the file's input stays ``serving_default_image:0``)."""
    import tensorflow as tf

    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ConversionError(f"the model input {shape} is not one image of a fixed size (None, H, W, C)")
    return [tf.TensorSpec((BATCH, *shape[1:]), model.inputs[0].dtype, name=model.inputs[0].name)]


def _export(model, folder: str | Path) -> None:
    with silenced(), contextlib.redirect_stdout(io.StringIO()):
        model.export(str(folder), verbose=False, input_signature=input_signature(model))


@contextlib.contextmanager
def exported(model):
    """The Keras model as a SavedModel in a temp folder, for the duration of an export: every
    converter run then reads it instead of tracing the Keras model again, in half the time
    (measured: 5.3 s against 10.7 s a run; the export itself 6.7 s once, same bytes out). Its
    serving signature takes a batch of one (:func:`input_signature`), and so does every file
    converted from it, the child's float conversions (trainer.export.float_convert) included."""
    with tempfile.TemporaryDirectory(prefix="edge-transfer-export-") as folder:
        _export(model, folder)
        yield Path(folder)


def converter_for(source):
    """A TFLiteConverter for a SavedModel folder (see :func:`exported`) or a Keras model; a Keras
    model is exported the same way first (batch of one), to a temp folder that lives as long as
    the converter."""
    import tensorflow as tf

    if isinstance(source, (str, Path)):
        return tf.lite.TFLiteConverter.from_saved_model(str(source))
    folder = tempfile.TemporaryDirectory(prefix="edge-transfer-export-")
    _export(source, folder.name)
    converter = tf.lite.TFLiteConverter.from_saved_model(folder.name)
    weakref.finalize(converter, folder.cleanup)
    return converter


def calibrate(source, representative) -> bytes:
    """A Keras model or SavedModel folder -> a float TFLite model carrying the activation ranges
    of the calibration data."""
    import tensorflow as tf

    converter = converter_for(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    return run_converter(converter)


def quantize(calibrated: bytes, input_dtype: str, output_dtype: str, float_ops: tuple[str, ...] = (),
             float_nodes: tuple[str, ...] = (), debug: bool = False) -> bytes:
    """A calibrated model -> int8 math with the given I/O types; ``float_ops`` (op types) and
    ``float_nodes`` (output tensor names) stay float. ``debug`` adds NumericVerify ops (for
    the QuantizationDebugger's per-layer error, never shipped)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.python import util as tf_util

    with silenced():
        quantized = tf_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                             enable_numeric_verify=debug, denylisted_ops=list(float_ops),
                                             denylisted_nodes=list(float_nodes))
        if debug:
            return quantized
        return tf_util.modify_model_io_type(quantized, tf.as_dtype(input_dtype), tf.as_dtype(output_dtype))


def run_converter(converter) -> bytes:
    """converter.convert() with stdout/stderr swallowed; a failure becomes one ConversionError line
    carrying the tail of what the converter said."""
    with silenced(), contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


@contextlib.contextmanager
def silenced():
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
