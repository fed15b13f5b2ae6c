"""`trainer web`: the static folder it writes, what it refuses, and the page in headless Chromium
served from 127.0.0.1: it loads with no console error and no request elsewhere, agrees with
`edge classify` on the 200 sample photos, shows results for picked files and the camera, feeds the
model the pixels edge.preprocess makes, and shows a readable error for a broken model file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import PreprocessSpec, list_images, prepare
from tests import browser
from tests.conftest import run_cli
from tests.paths import SAMPLE_FLOWERS
from tests.web_page import compare, edge_run, ensure_runtime, page_run, serve, wait_for
from trainer.ship import web
from trainer.ship.android import BundleError


@pytest.fixture(scope="session")
def runtime() -> web.Runtime:
    """LiteRT.js from web/node_modules, installed first (npm ci) when a fresh clone lacks it."""
    try:
        return web.Runtime.find()
    except BundleError:
        ensure_runtime()
        return web.Runtime.find()


@pytest.fixture(scope="session")
def site(converted, runtime, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web") / "site"
    web.build(converted, "int8", out)
    return out


def _sample_paths() -> list[str]:
    return [str(p.relative_to(SAMPLE_FLOWERS)) for p in list_images(SAMPLE_FLOWERS)]


# --------------------------------------------------------------------------- the folder
def test_folder_holds_the_page_the_model_and_the_runtime(site, converted, runtime):
    manifest = json.loads((site / "manifest.json").read_text())
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == sorted([*manifest["files"], "manifest.json"])
    assert set(manifest["files"]) == {"index.html", "app.js", "preprocess.js", "tflite.js", "model.tflite",
                                      *web.RUNTIME_FILES.values()}
    for name, entry in manifest["files"].items():
        assert web.sha256_bytes((site / name).read_bytes()) == entry["sha256"], name
    assert (site / "model.tflite").read_bytes() == (converted / "model_int8.tflite").read_bytes()
    assert not list(site.rglob("labels*")), "labels come from the model's metadata, not a side file"
    assert manifest["litertjs"]["version"] == runtime.version == "2.5.3"
    for src, dest in web.RUNTIME_FILES.items():  # vendored byte for byte
        assert (site / dest).read_bytes() == (runtime.folder / src).read_bytes()


def test_index_embeds_the_model_card_and_allows_no_other_origin(site, converted):
    page = (site / "index.html").read_text()
    parity = json.loads((converted / "parity.json").read_text())
    entry = parity["variants"]["int8"]
    config = json.loads(re.search(r'<script type="application/json" id="config">(.*?)</script>', page, re.S).group(1))
    card = config["card"]
    assert card["accuracy"] == entry["accuracy"] and card["agreement"] == entry["agreement"]
    assert card["n"] == parity["n"] and card["decision"] == entry["decision"] and card["classes"] == 5
    assert f"{entry['accuracy']:.3f}" in page and f"{entry['agreement']:.2f} %" in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert "default-src 'self'" in csp and "connect-src 'self' blob:" in csp and "http" not in csp
    for name in ("index.html", "app.js", "preprocess.js", "tflite.js"):
        assert not re.search(r"https?://", (site / name).read_text()), name


def test_refusals_leave_the_folder_alone(converted, runtime, tmp_path, monkeypatch):
    with pytest.raises(BundleError, match="--variant must be one of"):
        web.build(converted, "int4", tmp_path / "a")
    with pytest.raises(BundleError, match="make web-runtime"):
        web.build(converted, "int8", tmp_path / "b", runtime=tmp_path / "nothing")
    stale = tmp_path / "litertjs"  # LiteRT.js of another version than web/package.json pins
    for src in [*web.RUNTIME_FILES, "wasm-utils/package.json"]:
        (stale / src).parent.mkdir(parents=True, exist_ok=True)
        (stale / src).symlink_to(runtime.folder / src)
    (stale / "core" / "package.json").write_text(json.dumps({"name": "@litertjs/core", "version": "2.5.2"}))
    with pytest.raises(BundleError, match="holds @litertjs/core 2.5.2, but web/package.json pins 2.5.3"):
        web.build(converted, "int8", tmp_path / "b", runtime=stale)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(BundleError, match="did not write"):
        web.build(converted, "int8", other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    real = web.inspect_model
    monkeypatch.setattr(web, "inspect_model", lambda data: real(data).__class__(
        **{**real(data).__dict__, "input_signature": (-1, 224, 224, 3), "dynamic_dims": 70}))
    with pytest.raises(BundleError, match=r"declares input \[-1, 224, 224, 3\] \(70 dynamic dimensions\).*convert again"):
        web.build(converted, "int8", tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_second_build_replaces_the_first(converted, runtime, tmp_path):
    out = tmp_path / "site"
    web.build(converted, "int8", out)
    (out / "stray.txt").write_text("from before")
    _, manifest = web.build(converted, "full_int8", out)
    assert not (out / "stray.txt").exists() and manifest["variant"] == "full_int8"
    assert (out / "model.tflite").read_bytes() == (converted / "model_full_int8.tflite").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no staging folder left


@pytest.mark.slow
def test_cli_writes_the_folder_and_refuses_in_one_line(converted, runtime, tmp_path):
    result = run_cli("trainer", "web", str(converted), "--out", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"wrote {tmp_path / 'site'}/: index.html, model.tflite (int8, ")
    assert "LiteRT.js 2.5.3" in result.stdout and (tmp_path / "site" / "index.html").is_file()
    result = run_cli("trainer", "web", str(tmp_path), "--out", str(tmp_path / "other"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- the page in Chromium
def _only_local(requests: list[str], base: str) -> list[str]:
    return [u for u in requests if not (u.startswith(base) or u.startswith(("data:", "blob:")))]


@pytest.mark.slow
@pytest.mark.browser
def test_page_agrees_with_edge_classify_on_the_sample_photos(site, converted, record_property):
    """The 200 sample photos through the page's scripting hook, against the edge runtime on the
    same files: same top-1 on >= 99 %, every score close; no console error, no outside request."""
    paths = _sample_paths()
    assert len(paths) == 200
    with serve(site, SAMPLE_FLOWERS) as base, browser.Session() as s:
        s.open(base + "index.html")
        ready = s.evaluate("edgeTransfer.ready.then(r => JSON.stringify(r))", timeout=120)
        assert json.loads(ready)["labels"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips", "unknown"]
        page = page_run(s, paths)
        record = s.record()
    edge = edge_run(converted / "model_int8.tflite", SAMPLE_FLOWERS, paths, threads=1)
    result = compare(page, edge)
    record_property("page_vs_edge", result)
    print(f"\npage vs edge classify: {json.dumps(result)}")
    assert record.errors == [], record.errors
    assert _only_local(record.requests, base) == []
    assert result["top1_agreement"] >= 99.0, result["disagreements"]
    assert result["max_abs_diff"] < 0.05, result  # the decoders differ at most by a little (docs/web.md)


def mosaic(tiles: int, path: Path, orientation: int = 1) -> Path:
    """A big JPEG of natural detail: tiles x tiles sample photos side by side (320 x 240 each)."""
    photos = list_images(SAMPLE_FLOWERS)
    big = Image.new("RGB", (320 * tiles, 240 * tiles))
    for i in range(tiles * tiles):
        big.paste(Image.open(photos[(7 * i) % len(photos)]).convert("RGB").resize((320, 240)), (320 * (i % tiles), 240 * (i // tiles)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    big.crop((0, 0, big.width - 3, big.height - 5)).save(path, quality=90, exif=exif.tobytes())  # edges off the block grid
    return path


@pytest.mark.browser
def test_page_feeds_the_model_edge_preprocess_pixels(site, tmp_path, record_property):
    """The page's input pixels against edge.preprocess.prepare (edge classify's decoding) on the same
    files: the sample JPEGs, an EXIF-rotated copy, a PNG with transparency: equal. Big JPEGs, which
    Pillow decodes at 1/2, 1/4, 1/8 (draft) and the page decodes whole and block-averages: close."""
    photos = tmp_path / "photos"
    photos.mkdir()
    samples = list_images(SAMPLE_FLOWERS)[::40]
    names = []
    for i, p in enumerate(samples):
        shutil.copy(p, photos / f"{i}.jpg")
        names.append(f"{i}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(samples[0]).save(photos / "rotated.jpg", exif=exif.tobytes(), quality=92)
    rgba = Image.open(samples[1]).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(photos / "alpha.png")
    exact = [*names, "rotated.jpg", "alpha.png"]
    drafts = {"draft2.jpg": (4, 1, 2), "draft4.jpg": (8, 1, 4), "draft8_rotated.jpg": (15, 6, 8)}
    for name, (tiles, orientation, _) in drafts.items():
        mosaic(tiles, photos / name, orientation)
    names = [*exact, *drafts]
    with serve(site, photos) as base, browser.Session() as s:
        s.open(base + "index.html")
        s.evaluate("edgeTransfer.ready.then(() => 1)", timeout=120)
        run = page_run(s, names, pixels=True)
        facts = json.loads(s.evaluate(
            f"Promise.all({json.dumps(['/photos/' + n for n in names])}.map(u => edgeTransfer.classifyDetailed(u)"
            ".then(r => [r.width, r.height, r.orientation, r.draft]))).then(JSON.stringify)", timeout=120))
        assert s.record().errors == []
    diffs = {}
    for name, got, (w, h, orientation, draft) in zip(names, run.pixels, facts):
        want = prepare(photos / name, PreprocessSpec())  # what edge classify feeds the model
        stored = Image.open(photos / name).size
        upright = stored[::-1] if orientation >= 5 else stored
        assert orientation == (drafts[name][1] if name in drafts else 6 if name == "rotated.jpg" else 1), name
        assert draft == (drafts[name][2] if name in drafts else 1), (name, draft)
        assert (w, h) == (-(-upright[0] // draft), -(-upright[1] // draft)), (name, w, h)
        d = np.abs(got.astype(int) - want.astype(int))
        diffs[name] = {"max": int(d.max()), "mean": round(float(d.mean()), 3), "equal": round(float((d == 0).mean()), 3)}
        if draft > 1:  # without the block average: the whole decode resized, as a browser alone would
            whole = np.abs(prepare(photos / name, PreprocessSpec(), fast_decode=False).astype(int) - want.astype(int))
            diffs[f"{name} without block average"] = {"max": int(whole.max()), "mean": round(float(whole.mean()), 3)}
    record_property("pixel_diffs", diffs)
    print(f"\npage pixels vs edge.preprocess: {json.dumps(diffs)}")
    assert all(diffs[n]["max"] == 0 for n in exact), diffs  # the same decoder output, the same resize
    assert all(diffs[n]["mean"] < 1.0 for n in drafts), diffs


@pytest.mark.browser
def test_picked_photos_show_their_labels_and_a_screenshot(site, tmp_path):
    picked = list_images(SAMPLE_FLOWERS)[::34]
    with serve(site) as base, browser.Session(height=1000) as s:
        s.open(base + "index.html")
        s.evaluate("edgeTransfer.ready.then(() => 1)", timeout=120)
        s.set_files("#pick", picked)
        wait_for(s, f"document.querySelectorAll('.result .cat').length >= {3 * len(picked)}", timeout=120)
        shown = json.loads(s.evaluate("JSON.stringify([...document.querySelectorAll('.result')].map(r => "
                                      "[r.querySelector('.name').textContent, r.querySelector('.cat span').textContent]))"))
        shot = s.screenshot(tmp_path / "web_page.png")
        summary = s.evaluate("document.getElementById('summary').textContent")
        record = s.record()
    assert record.errors == [] and _only_local(record.requests, base) == []
    assert [name for name, _ in shown] == sorted(p.name for p in picked)
    assert all(label in ("daisy", "dandelion", "roses", "sunflowers", "tulips") for _, label in shown)
    assert summary.startswith(f"{len(picked)} photos classified")
    image = Image.open(shot)
    assert image.width == 1200 and len(np.unique(np.asarray(image.convert("L")))) > 50


@pytest.mark.browser
def test_dropped_photos_and_folders_are_classified(site, tmp_path):
    """A drop of a photo and a folder (walked recursively; hidden files and non-images skipped)."""
    photos = list_images(SAMPLE_FLOWERS)
    folder = tmp_path / "dropped"
    (folder / "deeper").mkdir(parents=True)
    shutil.copy(photos[0], folder / "a.jpg")
    shutil.copy(photos[50], folder / "deeper" / "b.JPG")
    shutil.copy(photos[60], folder / "deeper" / ".hidden.jpg")
    (folder / "notes.txt").write_text("not a photo")
    with serve(site) as base, browser.Session() as s:
        s.open(base + "index.html")
        s.evaluate("edgeTransfer.ready.then(() => 1)", timeout=120)
        box = json.loads(s.evaluate("JSON.stringify(document.getElementById('drop').getBoundingClientRect())"))
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        data = {"items": [], "files": [str(photos[100]), str(folder)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            s.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
        wait_for(s, "document.querySelectorAll('.result .cat').length >= 9", timeout=60)
        names = json.loads(s.evaluate("JSON.stringify([...document.querySelectorAll('.result .name')].map(n => n.textContent))"))
        assert s.record().errors == []
    assert sorted(names) == sorted([photos[100].name, "a.jpg", "b.JPG"])


@pytest.mark.browser
def test_camera_frames_are_classified(site):
    """getUserMedia with Chromium's fake camera: the live panel shows labels for its frames."""
    with serve(site) as base, browser.Session(flags=browser.FAKE_CAMERA) as s:
        s.open(base + "index.html")
        s.evaluate("edgeTransfer.ready.then(() => 1)", timeout=120)
        s.evaluate("document.getElementById('camera-button').click(), 1")
        text = wait_for(s, "document.querySelector('#live .cat') && document.getElementById('live').textContent", 60)
        s.evaluate("document.getElementById('camera-button').click(), 1")
        assert s.record().errors == []
    assert re.search(r"frame \d+×\d+", text) and any(c in text for c in ("daisy", "dandelion", "roses", "sunflowers", "tulips"))


@pytest.mark.browser
@pytest.mark.parametrize("damage", ["truncated", "not a model", "missing"])
def test_a_broken_model_file_gives_a_readable_error_on_the_page(site, tmp_path, damage):
    broken = shutil.copytree(site, tmp_path / "site")
    model = broken / "model.tflite"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:300_000])
    elif damage == "not a model":
        model.write_bytes(b"<html>a page where the model should be</html>")
    else:
        model.unlink()
    with serve(broken) as base, browser.Session() as s:
        s.open(base + "index.html")
        wait_for(s, "document.getElementById('status').className === 'error'", timeout=120)  # no script awaits it yet
        message = s.evaluate("edgeTransfer.ready.then(() => 'loaded', e => e.message)", timeout=120)
        status = json.loads(s.evaluate("JSON.stringify([document.getElementById('status').className, "
                                       "document.getElementById('status').textContent, document.body.innerText.length])"))
        disabled = s.evaluate("document.getElementById('pick').disabled")
        record = s.record()
    kind, text, length = status
    assert message != "loaded" and kind == "error" and text.startswith("The model could not be loaded.\n")
    assert message in text and length > 200 and disabled, status
    expected = {"truncated": "model.tflite is not a usable model: corrupt TFLite model",
                "not a model": "model.tflite is not a usable model: not a TFLite model",
                "missing": "cannot fetch model.tflite: HTTP 404"}[damage]
    assert message.startswith(expected), message
    # the missing file's own 404 is the only log line; no unhandled rejection
    assert [e for e in record.errors if not e.startswith("log error: Failed to load resource")] == [], record.errors


@pytest.mark.browser
def test_an_open_set_model_shows_none_of_these(runtime, tmp_path):
    """A tiny model with open_set.json (tests/test_edge_open_set.py): a grey photo, whose top
    label is the reject class, shows "none of these" with its score; a red one shows daisy.
    Needs no trained run: the folder is the page's files around that model."""
    from types import SimpleNamespace

    from test_edge_open_set import COLOURS, with_metadata

    site = tmp_path / "site"
    site.mkdir()
    card = {"name": "Open set", "variant": "float32", "summary": "tiny", "classes": 4}
    (site / "index.html").write_text(web.index_html(SimpleNamespace(card=card, runtime=runtime)), encoding="utf-8")
    for name in web.PAGE_FILES:
        shutil.copy(web.TEMPLATES / name, site / name)
    for src, dest in web.RUNTIME_FILES.items():
        (site / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(runtime.folder / src, site / dest)
    (site / web.MODEL_FILE).write_bytes(with_metadata())
    photos = []
    for name in ("grey", "red"):
        photos.append(tmp_path / f"{name}.png")
        Image.new("RGB", (8, 8), COLOURS[name]).save(photos[-1])
    with serve(site) as base, browser.Session() as s:
        s.open(base + "index.html")
        open_set = json.loads(s.evaluate("edgeTransfer.ready.then((r) => JSON.stringify(r.openSet))", timeout=120))
        s.set_files("#pick", photos)
        wait_for(s, "document.querySelectorAll('.result .ms').length >= 2", timeout=60)  # both classified
        shown = json.loads(s.evaluate("JSON.stringify([...document.querySelectorAll('.result')].map(r => "
                                      "[...r.querySelectorAll('.cat')].map(c => [...c.children].map(x => x.textContent))))"))
        assert s.record().errors == []
    assert open_set == {"label": "unknown", "threshold": 0.61, "keep": 0.95}
    grey, red = shown
    assert grey[0][0] == "none of these" and float(grey[0][1]) > 0.95 and grey[1][0] == "unknown"
    assert red[0][0] == "daisy" and all(row[0] != "none of these" for row in red)
