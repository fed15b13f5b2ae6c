"""The persistent feature cache: hits, misses, content keys, damaged entries, concurrent runs, the
`cache` command, and memory that does not grow with the number of photos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import PreprocessSpec
from tests.conftest import run_cli
from tests.paths import REPO, SAMPLE_FLOWERS
from trainer.data.feature_cache import FeatureCache
from trainer.data.rows import Rows
from trainer.fit import features

pytestmark = pytest.mark.slow  # each test converts or runs a backbone of its own (make test, not test-fast)

SPEC = PreprocessSpec(size=(96, 96))


@pytest.fixture(scope="module")
def feature_model():
    from trainer.config import BackboneConfig
    from trainer.model.backbones import build_backbone

    return build_backbone(BackboneConfig(image_size=96)).feature_model()


def _photos(tmp_path, n=8) -> list[Path]:
    src = sorted(SAMPLE_FLOWERS.rglob("*.jpg"))[:n]
    dst = tmp_path / "photos"
    dst.mkdir(exist_ok=True)
    return [Path(shutil.copy(p, dst / f"{i}.jpg")) for i, p in enumerate(src)]


def _extract(paths, cache, model, out=None, **kw):
    return features.extract(paths, SPEC, features.Extractor(model, cache), cache, out, progress=None, **kw)


def test_second_run_hits_new_photos_miss_and_features_are_identical(tmp_path, feature_model):
    cache = FeatureCache(tmp_path / "cache")
    paths = _photos(tmp_path, 10)
    first = _extract(paths[:8], cache, feature_model, tmp_path / "a.f32")
    assert first.hits == 0 and first.ok.all() and cache.info().entries == 8
    again = _extract(paths, cache, feature_model, tmp_path / "b.f32")  # two photos added
    assert again.hits == 8 and again.ok.all() and cache.info().entries == 10
    np.testing.assert_array_equal(first.array(), again.array()[:8])
    # the key is the content: a renamed copy hits, the same name with other bytes misses
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(paths[0], renamed)
    edited = tmp_path / "edited.jpg"
    edited.write_bytes(paths[1].read_bytes() + b"\0")  # after the JPEG end marker: same pixels
    third = _extract([renamed, edited], cache, feature_model, tmp_path / "c.f32")
    assert third.hits == 1
    np.testing.assert_array_equal(third.array()[1], again.array()[1])  # computed again, same result
    # a mirrored view is its own entry
    mirrored = _extract(paths[:2], cache, feature_model, tmp_path / "m.f32", view="mirrored")
    assert mirrored.hits == 0 and not np.array_equal(mirrored.array(), again.array()[:2])


def test_damaged_entries_are_detected_and_computed_again(tmp_path, feature_model):
    cache = FeatureCache(tmp_path / "cache")
    paths = _photos(tmp_path, 3)
    clean = _extract(paths, cache, feature_model, tmp_path / "a.f32").array().copy()
    entries = sorted((tmp_path / "cache" / "features").rglob("*"))
    entries = [p for p in entries if p.is_file()]
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    raw = bytearray(entries[1].read_bytes())
    raw[-1] ^= 0x40  # one flipped bit in the payload: the CRC catches it
    entries[1].write_bytes(bytes(raw))
    again = _extract(paths, cache, feature_model, tmp_path / "b.f32")
    assert again.hits == 1
    np.testing.assert_array_equal(again.array(), clean)
    assert _extract(paths, cache, feature_model, None).hits == 3  # rewritten whole


def test_an_unreadable_photo_is_cached_as_its_error(tmp_path, feature_model):
    cache = FeatureCache(tmp_path / "cache")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [*_photos(tmp_path, 2), bad]
    first = _extract(paths, cache, feature_model, tmp_path / "a.f32")
    second = _extract(paths, cache, feature_model, tmp_path / "b.f32")
    assert list(first.ok) == list(second.ok) == [True, True, False]
    assert second.hits == 3 and second.errors == first.errors and first.errors[2].startswith("OSError")
    assert cache.info().errors == 1


WRITER = """
import sys
from pathlib import Path
from edge.preprocess import PreprocessSpec
from trainer.fit import features
from trainer.model.backbones import build_backbone
from trainer.config import BackboneConfig
from trainer.data.feature_cache import FeatureCache
cache = FeatureCache(Path(sys.argv[1]))
paths = sorted(Path(sys.argv[2]).glob("*.jpg"))
model = build_backbone(BackboneConfig(image_size=96)).feature_model()
table = features.extract(paths, PreprocessSpec(size=(96, 96)), features.Extractor(model, cache), cache,
                         Path(sys.argv[3]), progress=None)
assert table.ok.all()
"""


@pytest.mark.slow
def test_two_runs_sharing_the_cache_at_once_cannot_corrupt_it(tmp_path, feature_model):
    paths = _photos(tmp_path, 40)
    cache_dir = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(paths[0].parent),
                               str(tmp_path / f"{i}.f32")], cwd=REPO) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    cache = FeatureCache(cache_dir)
    assert cache.info().entries == 40
    assert not [p for p in (cache_dir / "features").rglob(".*")]  # no temp file left behind
    again = _extract(sorted(paths), cache, feature_model, tmp_path / "again.f32")  # the writers' order
    assert again.hits == 40  # every entry written by either process reads back intact
    np.testing.assert_array_equal(Rows(tmp_path / "0.f32", 40, 1280).read_all(), again.array())
    np.testing.assert_array_equal(Rows(tmp_path / "1.f32", 40, 1280).read_all(), again.array())


@pytest.mark.slow
def test_cache_info_and_clear(tmp_path, feature_model):
    cache_dir = tmp_path / "cache"
    _extract(_photos(tmp_path, 3), FeatureCache(cache_dir), feature_model, None)
    (cache_dir / "pi-rootfs").mkdir()  # not ours to delete
    env = {"EDGE_TRANSFER_CACHE": str(cache_dir)}
    info = run_cli("trainer", "cache", "info", env=env)
    assert info.returncode == 0 and "feature entries: 3 " in info.stdout and str(cache_dir) in info.stdout
    cleared = run_cli("trainer", "cache", "clear", env=env)
    assert cleared.returncode == 0 and "removed 3 feature entries" in cleared.stdout
    assert FeatureCache(cache_dir).info().entries == 0 and (cache_dir / "pi-rootfs").is_dir()


def _synthetic_dataset(root: Path, n_per_class: int) -> Path:
    rng = np.random.default_rng(n_per_class)
    for c, tint in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            noise = rng.integers(0, 60, (48, 48, 3))
            Image.fromarray(np.clip(np.array(tint) + noise, 0, 255).astype(np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_memory_does_not_grow_with_the_number_of_photos(tmp_path, monkeypatch):
    """Python/numpy heap peak (tracemalloc) of extract -> head -> evaluate -> write, at 1x and 4x:
    decoded photos never pile up (they used to: 0.26 MB a photo at 224x224)."""
    from trainer.config import BackboneConfig, DataConfig, RunConfig
    from trainer.fit import stages as train
    from trainer.model.backbones import build_backbone

    monkeypatch.setenv("EDGE_TRANSFER_CACHE", str(tmp_path / "cache"))
    backbone = build_backbone(BackboneConfig())
    warm = features.Extractor(backbone.feature_model(), FeatureCache.default())
    warm(np.zeros((1, 224, 224, 3), np.uint8))  # converts the base outside the measurement
    peaks = {}
    for n in (160, 640):  # both past the two chunks in flight
        cfg = RunConfig(DataConfig(str(_synthetic_dataset(tmp_path / f"ds{n}", n // 2))))
        ds = train.scan_dataset(cfg)
        timer, out, work = train.Timer(), tmp_path / f"run{n}", tmp_path / f"work{n}"
        work.mkdir()
        out.mkdir()
        tracemalloc.start()
        feats = train.extract_features(cfg, backbone, ds, work, timer)
        trained = train.fit(cfg, backbone, ds, feats, out, timer)
        probs, _ = train.evaluate(trained, ds, feats, timer)  # (probabilities, embeddings) per split
        train.write_outputs(out, trained, ds, feats, probs, train.build_report(cfg, ds, feats, trained, probs, timer),
                            timer)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    held_then = 480 * 224 * 224 * 3  # what holding the 480 extra decoded photos alone would add
    assert peaks[640] - peaks[160] < 0.1 * held_then, peaks
    assert os.path.getsize(tmp_path / "work640" / "features.f32") == 640 * 1280 * 4  # the features are on disk
