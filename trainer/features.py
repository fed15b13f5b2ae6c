"""Stage-1 feature cache: the frozen base runs once over the photos.

The base is converted once to a float32 TFLite file (cached on disk, keyed by a hash of its
weights) and run with XNNPACK on every core: 4.6-6.7x the images/s of Keras `predict` on a
2-core CPU, measured by benchmarks/bench_train.py. Falls back to Keras when a base cannot convert.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from trainer import atomic
from trainer.tflite import ConversionError, run_converter


def cache_dir() -> Path:
    root = os.environ.get("EDGE_TRANSFER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "edge-transfer"
    return Path(root).expanduser()


def feature_tflite(feature_model) -> Path | None:
    """Path of the cached float32 TFLite copy of the feature model, converting it if needed."""
    import tensorflow as tf

    from trainer.backbones import weights_digest

    path = cache_dir() / "features" / f"{feature_model.name}-{weights_digest(feature_model)}-tf{tf.__version__}.tflite"
    if path.exists():
        return path
    try:
        data = run_converter(tf.lite.TFLiteConverter.from_keras_model(feature_model))
    except ConversionError as exc:  # a base TFLite cannot express: Keras predict still works
        print(f"note: feature extractor did not convert to TFLite ({type(exc).__name__}); using Keras predict")
        return None
    return atomic.write_bytes(path, data)


def _tflite_features(path: Path, images: np.ndarray, threads: int, desc: str | None) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter
    from tqdm.auto import tqdm

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    feats = None
    for i in tqdm(range(len(images)), desc=desc, unit="img", disable=desc is None, mininterval=0.5):
        interpreter.set_tensor(inp, images[i:i + 1].astype(np.float32))
        interpreter.invoke()
        row = interpreter.get_tensor(out)
        if feats is None:
            feats = np.empty((len(images), row.shape[-1]), np.float32)
        feats[i] = row[0]
    return feats if feats is not None else np.zeros((0, 0), np.float32)


def extract(feature_model, images: np.ndarray, threads: int | None = None, desc: str | None = "features",
            timings: dict | None = None) -> np.ndarray:
    """Pooled features (N, D) float32 of uint8 images (N, H, W, 3) through the frozen base."""
    threads = threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    path = feature_tflite(feature_model)
    t1 = time.perf_counter()
    if path is not None:
        feats = _tflite_features(path, images, threads, desc)
    else:
        feats = feature_model.predict(images.astype(np.float32), batch_size=32, verbose=1 if desc else 0)
    if timings is not None:
        timings["feature_extractor_convert_s"] = timings.get("feature_extractor_convert_s", 0) + t1 - t0
        timings["features_s"] = timings.get("features_s", 0) + time.perf_counter() - t1
    return np.asarray(feats, np.float32)
