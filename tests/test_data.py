"""Dataset scanning, decoding and splitting on real photos and deliberately broken files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import PreprocessSpec, load_rgb
from tests.conftest import run_cli
from tests.paths import SMALL_FLOWERS
from trainer.data import dataset


def _photos(n_per_class: int, classes=("daisy", "roses")):
    return {c: sorted((SMALL_FLOWERS / c).glob("*.jpg"))[:n_per_class] for c in classes}


def make_dataset(root, n_per_class=6, classes=("daisy", "roses")):
    for c, files in _photos(n_per_class, classes).items():
        (root / c).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / c / f.name)
    return root


def test_scan_finds_every_extension_in_any_case_and_sorts_classes(tmp_path):
    src = sorted((SMALL_FLOWERS / "tulips").glob("*.jpg"))[0]
    img = Image.open(src).convert("RGB")
    (tmp_path / "b_class").mkdir()
    (tmp_path / "a_class" / "nested").mkdir(parents=True)
    for ext, fmt in [(".JPG", "JPEG"), (".jpeg", "JPEG"), (".png", "PNG"), (".BMP", "BMP"), (".gif", "GIF"), (".webp", "WEBP")]:
        img.save(tmp_path / "b_class" / f"x{ext}", format=fmt)
    img.save(tmp_path / "a_class" / "nested" / "y.jpg")
    (tmp_path / "a_class" / "notes.txt").write_text("not an image")
    (tmp_path / "a_class" / ".hidden.jpg").write_bytes(b"x")
    classes, samples = dataset.scan(tmp_path)
    assert classes == ["a_class", "b_class"]
    assert sorted(s.path for s in samples if s.label == 1) == sorted(
        f"b_class/x{e}" for e in [".JPG", ".jpeg", ".png", ".BMP", ".gif", ".webp"])
    assert [s.path for s in samples if s.label == 0] == ["a_class/nested/y.jpg"]


def test_exif_orientation_and_every_mode_become_upright_rgb(tmp_path):
    base = np.zeros((20, 40, 3), np.uint8)
    base[:, :20] = (255, 0, 0)  # left half red, right half blue: landscape
    base[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.fromarray(base).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    rotated = load_rgb(tmp_path / "rot.jpg")
    assert rotated.shape == (40, 20, 3)  # became portrait
    assert rotated[2, 10, 0] > 200 and rotated[-3, 10, 2] > 200  # red on top, blue at the bottom
    img = Image.fromarray(base)
    for mode in ("L", "P", "RGBA", "CMYK", "I;16", "1", "LA"):
        converted = img.convert(mode) if mode != "I;16" else Image.fromarray((base[..., 0].astype(np.uint16) * 256))
        out = load_rgb(converted)
        assert out.dtype == np.uint8 and out.shape == (20, 40, 3), mode


def test_corrupt_files_are_skipped_with_a_reason(tmp_path):
    root = make_dataset(tmp_path / "ds")
    good = next((root / "daisy").glob("*.jpg"))
    (root / "daisy" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (root / "roses" / "text.png").write_text("this is not a png")
    classes, samples = dataset.scan(root)
    images, ok, errors = dataset.load_images([root / s.path for s in samples], PreprocessSpec(size=(64, 64)))
    assert ok.sum() == 12 and len(errors) == 2
    assert any("truncated.jpg" in p for p in errors) and any("text.png" in p for p in errors)
    assert all(reason for reason in errors.values())
    assert images[ok].std() > 10  # real pixels for the good ones


def test_stratified_split_is_seeded_disjoint_and_proportional():
    samples = [dataset.Sample(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(40 + 20 * c)]
    a = dataset.stratified_split(samples, 3, 0.1, 0.2, seed=1)
    b = dataset.stratified_split(samples, 3, 0.1, 0.2, seed=1)
    c = dataset.stratified_split(samples, 3, 0.1, 0.2, seed=2)
    assert a == b and a != c
    train, val, test = a
    paths = [s.path for part in a for s in part]
    assert len(paths) == len(set(paths)) == len(samples)
    for cls, n in enumerate((40, 60, 80)):
        assert sum(s.label == cls for s in test) == round(n * 0.2)
        assert sum(s.label == cls for s in val) == round(n * 0.1)


@pytest.mark.parametrize("setup, message", [
    ("one_class", "at least 2 class folders"),
    ("too_few", "below the minimum"),
    ("empty", "no images found"),
    ("missing", "not found"),
])
def test_bad_datasets_fail_with_one_line_and_exit_2(tmp_path, setup, message):
    root = tmp_path / "ds"
    if setup == "one_class":
        make_dataset(root, classes=("daisy",))
    elif setup == "too_few":
        make_dataset(root, n_per_class=6)
        for f in list((root / "roses").glob("*.jpg"))[2:]:
            f.unlink()
    elif setup == "empty":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    result = run_cli("trainer", "train", "--data", str(root), "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    messages = [line for line in result.stderr.splitlines() if "img/s" not in line and line.strip()]
    assert len(messages) == 1 and messages[0].startswith("error: ")  # progress bars aside, one line
    assert not (tmp_path / "out" / "model.keras").exists()
