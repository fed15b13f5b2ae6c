"""Which layers int8 quantization hurts most: TensorFlow's QuantizationDebugger, per layer.

The int8 variant keeps the few worst layers in float. On MobileNetV2 they are early depthwise
convolutions, whose per-channel ranges differ most; keeping three of them moved int8/float
agreement on unseen flower photos from 96.6 % to 98.3 % at the same size (measured, see README).
The score is the debugger's mean squared error of a layer's int8 output against its float
output (both from the same quantized input), in units of the layer's quantization step
(MSE / scale^2): comparable across layers with different ranges.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from trainer.calibration import representative_dataset
from trainer.tflite import quantize, silenced


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
    """Every quantized layer, worst first, measured on ``images`` (uint8, the one preprocessing)."""
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
