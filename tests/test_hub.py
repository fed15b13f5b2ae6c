"""TF Hub / Kaggle handles: tensorflow_hub's cache layout offline, a download into that layout
(from a loopback server), the one-line error with the folder to fill, and a hub-trained run
that still loads and converts after the cache is deleted."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading

import numpy as np
import pytest

from tests.conftest import TEST_GATE_FLAGS, run_cli
from tests.paths import REPO
from tests.test_backbones import _tiny_dataset
from trainer.config import BackboneConfig
from trainer.model import hub
from trainer.model.backbones import BackboneError, build_backbone

HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
KAGGLE = "https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/tf2-preview-feature-vector/4"


def make_feature_vector(path, seed: int = 1):
    """A TF2 hub-format image feature vector like the real ones: a tf.Module whose only entry is
    ``__call__`` (no serving signature), float images in [0, 1] of any size -> (N, 8)."""
    import tensorflow as tf

    class FeatureVector(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 8), seed=(seed, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME")), axis=[1, 2])

    module = FeatureVector()
    tf.saved_model.save(module, str(path), signatures={})
    assert not tf.saved_model.load(str(path)).signatures  # really no serving signature
    return module


def test_cache_key_is_tensorflow_hubs_sha1_of_the_handle_as_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    assert hub.module_dir(HANDLE) == tmp_path / hashlib.sha1(HANDLE.encode("utf8")).hexdigest()
    assert hub.module_dir(KAGGLE) != hub.module_dir(HANDLE)  # tensorflow_hub does not normalize either
    monkeypatch.delenv("TFHUB_CACHE_DIR")
    assert str(hub.cache_dir()) == os.path.join(tempfile.gettempdir(), "tfhub_modules")


def test_cached_handle_loads_call_only_savedmodel_and_normalizes_to_unit_range(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    module = make_feature_vector(hub.module_dir(HANDLE))
    backbone = build_backbone(BackboneConfig(name=HANDLE, image_size=32))
    assert not backbone.fine_tunable
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    got = backbone.feature_model().predict(images, verbose=0)
    np.testing.assert_allclose(got, module(images / 255.0).numpy(), atol=1e-5)


def test_signature_only_savedmodel_loads_from_a_folder(tmp_path):
    """The other SavedModel shape: no __call__, only a serving_default signature returning a dict."""
    import tensorflow as tf

    class Exported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, images):
            return {"feature_vector": tf.reduce_mean(images, axis=[1, 2]) * 2.0}

    module = Exported()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    assert not callable(tf.saved_model.load(str(tmp_path / "sm")))
    backbone = build_backbone(BackboneConfig(name=f"hub:{tmp_path / 'sm'}", image_size=32))
    images = np.full((1, 32, 32, 3), 255.0, np.float32)
    np.testing.assert_allclose(backbone.feature_model().predict(images, verbose=0), [[2.0, 2.0, 2.0]], atol=1e-6)


def test_two_hub_models_never_share_the_feature_cache_key(tmp_path):
    """Hub variables are not Keras weights: the SavedModel fingerprint must enter the digest that
    keys the cached TFLite feature extractor, or a second hub model would reuse the first's."""
    from trainer.model.backbones import weights_digest

    digests = []
    for seed in (1, 2):
        make_feature_vector(tmp_path / f"fv{seed}", seed)
        backbone = build_backbone(BackboneConfig(name=f"hub:{tmp_path / f'fv{seed}'}", image_size=32))
        digests.append(weights_digest(backbone.feature_model()))
    assert digests[0] != digests[1]


class _TarballHandler(http.server.BaseHTTPRequestHandler):
    tarball = b""
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        self.wfile.write(self.tarball)

    def log_message(self, *args):
        pass


def test_download_fills_the_cache_like_tensorflow_hub(tmp_path, monkeypatch):
    """Served from 127.0.0.1: the handle gets ?tf-hub-format=compressed, the .tar.gz lands
    extracted under sha1(handle) with its .descriptor.txt, and a second resolve is offline."""
    make_feature_vector(tmp_path / "model")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted((tmp_path / "model").rglob("*")):
            tar.add(f, arcname=str(f.relative_to(tmp_path / "model")), recursive=False)
    _TarballHandler.tarball, _TarballHandler.requests = buf.getvalue(), []
    server = http.server.HTTPServer(("127.0.0.1", 0), _TarballHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    handle = f"http://127.0.0.1:{server.server_port}/google/fv/4"
    try:
        path = hub.resolve(handle)
        assert hub.resolve(handle) == path  # cached now: no second request
    finally:
        server.shutdown()
    assert _TarballHandler.requests == ["/google/fv/4?tf-hub-format=compressed"]
    assert path == tmp_path / "cache" / hashlib.sha1(handle.encode()).hexdigest()
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert f"Module: {handle}" in (tmp_path / "cache" / f"{path.name}.descriptor.txt").read_text()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


def test_missing_model_offline_error_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)
    with pytest.raises(BackboneError) as err:
        build_backbone(BackboneConfig(name=KAGGLE))
    assert f"{hub.module_dir(KAGGLE)}/" in str(err.value) and "\n" not in str(err.value)
    assert not hub.module_dir(KAGGLE).exists()


def test_cli_no_cache_no_network_is_one_line_exit_2(tmp_path):
    ds = _tiny_dataset(tmp_path / "ds", n=5)
    handle = "http://127.0.0.1:9/google/fv/4"  # the discard port: refused at once, like no network
    result = run_cli("trainer", "train", "--data", str(ds), "--out", str(tmp_path / "run"),
                     "--backbone", handle, "--min-per-class", "4", env={"TFHUB_CACHE_DIR": str(tmp_path / "cache")},
                     timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = tmp_path / "cache" / hashlib.sha1(handle.encode()).hexdigest()
    assert len(lines) == 1 and f"{expected}/" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hub_handle_trains_offline_and_the_run_outlives_the_cache(tmp_path):
    """The tutorial handle from a pre-filled cache trains; with the cache deleted, model.keras
    loads and predicts the same, and convert writes a float32 TFLite file that passes parity."""
    cache = tmp_path / "cache"
    env = {"TFHUB_CACHE_DIR": str(cache)}
    make_feature_vector(cache / hashlib.sha1(HANDLE.encode()).hexdigest())
    ds, run = _tiny_dataset(tmp_path / "ds"), tmp_path / "run"
    result = run_cli("trainer", "train", "--data", str(ds), "--out", str(run), "--backbone", HANDLE,
                     "--image-size", "32", "--epochs", "50", "--min-per-class", "4", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["backbone"]["name"] == HANDLE
    shutil.rmtree(cache)
    check = ("import sys, numpy as np, keras, trainer.hub_layer\n"
             "m = keras.models.load_model(sys.argv[1])\n"
             "x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype('float32')\n"
             "p = m.predict(x, verbose=0); assert p.shape == (2, 3) and np.allclose(p.sum(1), 1), p\n"  # + unknown
             "print('ok')\n")
    loaded = subprocess.run([sys.executable, "-c", check, str(run / "model.keras")], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert loaded.returncode == 0 and "ok" in loaded.stdout, loaded.stderr[-3000:]
    converted = run_cli("trainer", "convert", str(run), "--mode", "float32", "--calibration-images", "4",
                        *TEST_GATE_FLAGS, env=env, timeout=300)
    assert converted.returncode == 0, (converted.stdout + converted.stderr)[-3000:]
    parity = json.loads((run / "parity.json").read_text())
    assert parity["variants"]["float32"]["passed"] and parity["variants"]["float32"]["agreement"] == 100.0, parity
    assert (run / "model_float32.tflite").stat().st_size > 0 and not cache.exists()
