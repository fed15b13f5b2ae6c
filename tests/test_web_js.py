"""The web page's JavaScript, unit by unit, in node (no browser): the resize equals
edge.preprocess on the same decoded RGB, the EXIF orientation is read and applied as Pillow does,
transparency is composited as Pillow does, big JPEGs get the scale Pillow's draft decoding picks,
and the model reader gets from the .tflite file what edge.metadata gets (labels from the
metadata's zipped file, normalization, tensors)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.metadata import read_metadata
from edge.preprocess import PreprocessSpec, list_images, load_rgb, resize
from edge.runtime import make_interpreter
from tests.paths import CORAL, SAMPLE_FLOWERS, SUPPORT
from trainer.ship.web import TEMPLATES

# Pillow's exif_transpose, orientation -> transpose
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def node(script: str, tmp_path: Path) -> str:
    """Run an ES module script in node with preprocess.js and tflite.js importable; its stdout."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node not found: the web page's tests need Node.js 20 (Debian: apt-get install nodejs npm)")
    imports = (f"import * as pre from {json.dumps((TEMPLATES / 'preprocess.js').as_uri())};\n"
               f"import * as tfl from {json.dumps((TEMPLATES / 'tflite.js').as_uri())};\n"
               "import {readFileSync, writeFileSync} from 'node:fs';\n")
    (tmp_path / "t.mjs").write_text(imports + script)
    result = subprocess.run([exe, str(tmp_path / "t.mjs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def js_resize(tmp_path: Path, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    (tmp_path / "in.bin").write_bytes(np.ascontiguousarray(image).tobytes())
    h, w = image.shape[:2]
    node(f"const rgb = new Uint8Array(readFileSync({json.dumps(str(tmp_path / 'in.bin'))}));\n"
         f"writeFileSync({json.dumps(str(tmp_path / 'out.bin'))}, pre.resizeBilinear(rgb, {h}, {w}, {size[0]}, {size[1]}));",
         tmp_path)
    return np.frombuffer((tmp_path / "out.bin").read_bytes(), np.uint8).reshape(*size, 3)


def test_resize_equals_edge_preprocess_on_photos(tmp_path):
    """Same decoded RGB in, the same bytes out: down, up, odd sizes, one row, the no-op."""
    photos = list_images(SAMPLE_FLOWERS)[::50]
    cases = [(load_rgb(p), (224, 224)) for p in photos]
    rng = np.random.default_rng(0)
    cases += [(load_rgb(photos[0]), (97, 301)), (rng.integers(0, 256, (13, 7, 3), dtype=np.uint8), (224, 224)),
              (rng.integers(0, 256, (1, 500, 3), dtype=np.uint8), (3, 2)), (load_rgb(photos[1])[:224, :224], (224, 224))]
    for image, size in cases:
        want = resize(image, PreprocessSpec(size=size))
        got = js_resize(tmp_path, image, size)
        assert np.array_equal(got, want), (image.shape, size, int(np.abs(got.astype(int) - want).max()))


def test_orientation_is_read_and_applied_as_pillow_does(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    files = {}
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        for fmt in ("JPEG", "PNG", "WEBP"):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, fmt, exif=exif.tobytes())
            path = tmp_path / f"o{o}.{fmt.lower()}"
            path.write_bytes(buf.getvalue())
            files[path.name] = (o, Image.open(path).getexif().get(0x0112, 1))
    (tmp_path / "plain.jpg").write_bytes(sorted((SAMPLE_FLOWERS / "daisy").glob("*.jpg"))[0].read_bytes())
    files["plain.jpg"] = (1, 1)
    names = json.dumps(sorted(files))
    read = json.loads(node(f"const out = {{}};\nfor (const n of {names}) "
                           f"out[n] = pre.exifOrientation(new Uint8Array(readFileSync({json.dumps(str(tmp_path))} + '/' + n)));\n"
                           "console.log(JSON.stringify(out));", tmp_path))
    assert read == {name: pillow for name, (_, pillow) in files.items()}

    (tmp_path / "px.bin").write_bytes(pixels.tobytes())
    got = json.loads(node("const rgb = new Uint8Array(readFileSync(" + json.dumps(str(tmp_path / "px.bin")) + "));\n"
                          "const out = {};\nfor (let o = 1; o <= 8; o++) { const r = pre.orient(rgb, 8, 5, o); "
                          "out[o] = [r.width, r.height, Array.from(r.rgb)]; }\nconsole.log(JSON.stringify(out));", tmp_path))
    for o in range(1, 9):
        img = Image.fromarray(pixels)
        want = np.asarray(img.transpose(TRANSPOSES[o]) if o > 1 else img)
        w, h, flat = got[str(o)]
        assert (h, w) == want.shape[:2] and np.array_equal(np.array(flat, np.uint8).reshape(h, w, 3), want), o


def test_transparency_is_composited_on_black_as_pillow_does(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    rgba[0, :4, 3] = (0, 1, 254, 255)
    (tmp_path / "rgba.bin").write_bytes(rgba.tobytes())
    out = node("const rgb = pre.rgbaToRgb(new Uint8Array(readFileSync(" + json.dumps(str(tmp_path / "rgba.bin")) + ")));\n"
               "console.log(JSON.stringify(Array.from(rgb)));", tmp_path)
    want = load_rgb(Image.fromarray(rgba, "RGBA"))
    assert np.array_equal(np.array(json.loads(out), np.uint8).reshape(16, 16, 3), want)


def test_float_input_is_normalized_as_the_edge_runtime_does(tmp_path):
    out = node("console.log(JSON.stringify([Array.from(pre.toInput(new Uint8Array([0, 128, 255]), 'float32', [127.5], [127.5])),"
               " Array.from(pre.toInput(new Uint8Array([0, 128, 255]), 'float32', null, null)),"
               " Array.from(pre.toInput(new Uint8Array([7]), 'uint8', [127.5], [127.5]))]));", tmp_path)
    google, ours, raw = json.loads(out)
    assert np.array_equal(np.float32(google), (np.float32([0, 128, 255]) - np.float32(127.5)) / np.float32(127.5))
    assert ours == [0, 128, 255] and raw == [7]


def test_model_reader_reads_what_edge_metadata_reads(converted, tmp_path):
    models = [converted / "model_int8.tflite", converted / "model_full_int8.tflite", converted / "model_float32.tflite",
              CORAL / "mobilenet_v2_1.0_224_quant.tflite", SUPPORT / "mobilenet_v1_0.25_224_1_metadata_1.tflite",
              SUPPORT / "automl_labeler_model.tflite", SUPPORT / "mobilenet_v2_1.0_224_quant_nometadata.tflite"]
    paths = json.dumps([str(m) for m in models])
    got = json.loads(node(f"const out = [];\nfor (const p of {paths}) out.push(await tfl.readModel(new Uint8Array(readFileSync(p))));\n"
                          "console.log(JSON.stringify(out));", tmp_path))
    for model, js in zip(models, got):
        meta, loaded = read_metadata(model), make_interpreter(model, num_threads=1)
        assert js["metadata"]["labels"] == meta.labels, model.name
        assert js["metadata"]["name"] == meta.name and js["metadata"]["version"] == meta.version
        assert js["metadata"]["mean"] == (list(meta.mean) if meta.mean else None)
        assert js["metadata"]["std"] == (list(meta.std) if meta.std else None)
        for side, tensor in (("input", loaded.input), ("output", loaded.output)):
            assert js[side]["shape"] == list(tensor.shape) and js[side]["dtype"] == str(tensor.dtype), (model.name, side)
            assert js[side]["quantization"] == pytest.approx(list(tensor.quantization)), (model.name, side)
    assert got[0]["input"]["signature"] == [1, 224, 224, 3]  # ours: batch 1 (trainer.export.tflite)


def test_model_reader_refuses_damaged_files_in_one_line(converted, tmp_path):
    data = (converted / "model_int8.tflite").read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[:100_000])
    (tmp_path / "text.tflite").write_bytes(b"not a model at all")
    flipped = bytearray(data)
    flipped[0:4] = (len(data) + 8).to_bytes(4, "little")  # the root table points past the end
    (tmp_path / "root.tflite").write_bytes(bytes(flipped))
    names = json.dumps(["cut", "text", "root"])
    out = json.loads(node(f"const out = {{}};\nfor (const n of {names}) {{ try {{ await tfl.readModel(new Uint8Array("
                          f"readFileSync({json.dumps(str(tmp_path))} + '/' + n + '.tflite'))); out[n] = 'read'; }}\n"
                          "  catch (e) { out[n] = [e.constructor.name, e.message]; } }\nconsole.log(JSON.stringify(out));",
                          tmp_path))
    assert out["text"] == ["ModelFileError", 'not a TFLite model (18 bytes, no "TFL3" identifier)']
    for name in ("cut", "root"):
        kind, message = out[name]
        assert kind == "ModelFileError" and "corrupt TFLite model" in message and "\n" not in message, out[name]


def test_draft_scale_is_the_one_pillow_picks(tmp_path):
    """edge.preprocess.load_rgb asks Pillow's JPEG decoder for twice the input size; the page picks the
    same 1/2, 1/4, 1/8 or none from the stored size."""
    sizes = [(447, 1000), (448, 448), (895, 900), (896, 896), (1791, 2000), (1792, 1792), (3583, 4000), (3584, 3584),
             (6000, 4000), (4000, 897), (224, 224)]
    pillow = []
    for w, h in sizes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (90, 120, 30)).save(buf, "JPEG")
        img = Image.open(buf)
        img.draft("RGB", (2 * 224, 2 * 224))  # what load_rgb(draft_size=(224, 224)) asks
        pillow.append(img.decoderconfig[0] if img.decoderconfig else 1)
    js = json.loads(node(f"console.log(JSON.stringify({json.dumps(sizes)}.map(([w, h]) => pre.draftScale(w, h, 224, 224))));",
                         tmp_path))
    assert js == pillow and set(pillow) == {1, 2, 4, 8}


def test_box_downscale_is_the_rounded_block_mean(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    (tmp_path / "in.bin").write_bytes(image.tobytes())
    got = json.loads(node("const rgb = new Uint8Array(readFileSync(" + json.dumps(str(tmp_path / "in.bin")) + "));\n"
                          "console.log(JSON.stringify([2, 4, 8].map((s) => Array.from(pre.boxDownscale(rgb, 53, 37, s)))));",
                          tmp_path))
    for s, flat in zip((2, 4, 8), got):
        oh, ow = -(-37 // s), -(-53 // s)
        want = np.array([[np.floor(image[y * s:(y + 1) * s, x * s:(x + 1) * s].reshape(-1, 3).mean(0) + 0.5)
                          for x in range(ow)] for y in range(oh)], np.uint8)
        assert np.array_equal(np.array(flat, np.uint8).reshape(oh, ow, 3), want), s


def test_open_set_json_and_the_none_of_these_rule_as_edge_reads_them(tmp_path):
    """The page reads open_set.json as edge.metadata does (the damaged ones too: no open set) and
    says "none of these" when the reject class ranks first, as edge.postprocess decides."""
    from test_edge_open_set import DAMAGED, LABELS_TXT, with_files, with_metadata

    from edge.postprocess import is_none_of_these

    models = [with_metadata(), with_metadata(open_set=None)]
    models += [with_files(with_metadata(), {"labels.txt": LABELS_TXT, "open_set.json": raw}) for raw in DAMAGED.values()]
    for i, data in enumerate(models):
        (tmp_path / f"m{i}.tflite").write_bytes(data)
    vectors = [[0.115, 0.002, 0.002, 0.881], [0.556, 0, 0, 0.443], [0.5, 0, 0, 0.5], [0.25, 0.25, 0.25, 0.25]]
    got = json.loads(node(f"const out = [];\nfor (let i = 0; i < {len(models)}; i++) out.push((await tfl.readModel("
                          f"new Uint8Array(readFileSync({json.dumps(str(tmp_path))} + `/m${{i}}.tflite`)))).metadata);\n"
                          f"const none = {json.dumps(vectors)}.map((s) => [tfl.noneOfThese(s, 3), tfl.noneOfThese(s, null)]);\n"
                          "console.log(JSON.stringify({out, none}));", tmp_path))
    for js, data in zip(got["out"], models):
        meta = read_metadata(data)
        want = None if meta.open_set is None else {"label": "unknown", "threshold": 0.61, "keep": 0.95}
        assert js["openSet"] == want and len(js["warnings"]) == len(meta.warnings)
    assert got["out"][0]["openSet"] is not None and all(js["openSet"] is None for js in got["out"][1:])
    assert got["none"] == [[is_none_of_these(s, 3), False] for s in vectors] == [[True, False]] + [[False, False]] * 3
