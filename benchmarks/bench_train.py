"""Training speed, side by side in one run on the same photos (ratios are what to compare:
the machine is shared and noisy).

  (a) naive: the tutorial pipeline, keras image_dataset_from_directory + model.fit through the
      frozen base with a new head, seconds per epoch
  (b) ours: `python -m trainer train` end to end (whole process), warm and cold feature-extractor cache
  (c) one bare forward pass of the backbone over the photos (same tf.data pipeline as (a))
  (d) feature extraction throughput on decoded images: Keras predict vs our TFLite extractor

Usage: python benchmarks/bench_train.py [--data DIR] [--naive-epochs 2] [--out bench_train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.paths import SHARED_DATA  # noqa: E402


def tutorial_dataset(data: Path, size: int):
    import keras

    return keras.utils.image_dataset_from_directory(str(data), image_size=(size, size), batch_size=32,
                                                    label_mode="categorical", shuffle=True, seed=1, verbose=False)


def naive_fit(data: Path, size: int, epochs: int) -> list[float]:
    """Seconds per epoch of the classic frozen-base model.fit over decoded photos."""
    import keras

    from trainer.config import BackboneConfig
    from trainer.model.backbones import build_backbone

    ds = tutorial_dataset(data, size)
    n_classes = len(ds.class_names)
    backbone = build_backbone(BackboneConfig(image_size=size))
    backbone.base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = backbone.features(inputs, training=False)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds.prefetch(2), epochs=epochs, verbose=0, callbacks=[Timer()])
    return times


def bare_forward(data: Path, size: int) -> tuple[float, int]:
    from trainer.config import BackboneConfig
    from trainer.model.backbones import build_backbone

    ds = tutorial_dataset(data, size)
    model = build_backbone(BackboneConfig(image_size=size)).feature_model()
    t = time.perf_counter()
    feats = model.predict(ds.map(lambda x, y: x).prefetch(2), verbose=0)
    return time.perf_counter() - t, len(feats)


def ours(data: Path, cache: str | None) -> float:
    env = dict(os.environ)
    if cache:
        env["EDGE_TRANSFER_CACHE"] = cache
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trainer", "train", "--data", str(data), "--out", out],
                       cwd=REPO, env=env, check=True, capture_output=True)
        return time.perf_counter() - t


def extraction_throughput(data: Path, n: int = 256) -> dict:
    import numpy as np

    from edge.preprocess import PreprocessSpec
    from trainer.config import BackboneConfig
    from trainer.data import dataset
    from trainer.data.feature_cache import FeatureCache
    from trainer.fit import features
    from trainer.model.backbones import build_backbone

    _, samples = dataset.scan(data)
    pick = [data / samples[i].path for i in np.linspace(0, len(samples) - 1, n).astype(int)]
    images, _, _ = dataset.load_images(pick, PreprocessSpec())
    model = build_backbone(BackboneConfig()).feature_model()
    model.predict(images[:32].astype(np.float32), verbose=0)
    t = time.perf_counter()
    model.predict(images.astype(np.float32), batch_size=32, verbose=0)
    keras_ips = n / (time.perf_counter() - t)
    extractor = features.Extractor(model, FeatureCache.default())
    extractor(images[:8])  # converts (or finds) the cached TFLite copy
    t = time.perf_counter()
    extractor(images)
    return {"keras_predict_img_s": keras_ips, "tflite_img_s": n / (time.perf_counter() - t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "tf_flowers" / "train")
    parser.add_argument("--naive-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    size = 224
    results: dict = {"data": str(args.data), "cpus": os.cpu_count()}
    results["ours_warm_s"] = ours(args.data, None)
    with tempfile.TemporaryDirectory() as cold:
        results["ours_cold_cache_s"] = ours(args.data, cold)
    results["bare_forward_s"], results["photos"] = bare_forward(args.data, size)
    results["naive_epoch_s"] = naive_fit(args.data, size, args.naive_epochs)
    results.update(extraction_throughput(args.data))
    fwd = results["bare_forward_s"]
    rows = [
        ("(c) one bare forward pass of the backbone", fwd),
        ("(a) naive model.fit, epoch 1", results["naive_epoch_s"][0]),
        ("(a) naive model.fit, last epoch", results["naive_epoch_s"][-1]),
        ("(b) ours end to end, warm cache", results["ours_warm_s"]),
        ("(b) ours end to end, cold cache", results["ours_cold_cache_s"]),
    ]
    print(f"{results['photos']} photos, {results['cpus']} cores")
    print(f"{'':45s} {'seconds':>8s} {'x forward':>10s}")
    for name, secs in rows:
        print(f"{name:45s} {secs:8.1f} {secs / fwd:10.2f}")
    print(f"feature extraction: Keras predict {results['keras_predict_img_s']:.0f} img/s, "
          f"our TFLite extractor {results['tflite_img_s']:.0f} img/s "
          f"({results['tflite_img_s'] / results['keras_predict_img_s']:.1f}x)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
