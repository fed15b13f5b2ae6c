"""`python -m trainer android`: the bundle an Android app ships, checked before it is written.

The bundle's model alone loads in MediaPipe Tasks' ImageClassifier (the engine of the README's
Kotlin snippet) and names a real flower right; every refusal is one BundleError line (exit 2 on
the command line) and leaves the destination folder byte for byte as it was.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.client_venvs import assert_top_category, client_classify
from tests.conftest import copy_run, run_cli
from trainer import atomic
from trainer.ship import android as bundling

BUNDLE = [".gitkeep", "README.md", "labels.txt", "manifest.json", "model.tflite"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(folder: Path) -> dict[str, str] | None:
    """Every file and folder under ``folder`` (hidden ones too) -> content hash and mode."""
    if not folder.exists():
        return None
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = f"dir {p.stat().st_mode:o}" if p.is_dir() else f"{sha256(p.read_bytes())} {p.stat().st_mode:o}"
    return out


def android(run: Path, out: Path, variant: str = "int8") -> subprocess.CompletedProcess:
    return run_cli("trainer", "android", str(run), "--variant", variant, "--out", str(out), timeout=120)


@pytest.fixture(scope="module")
def bundle(converted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("app") / "android_assets"
    bundling.build(converted, "int8", out)
    return out


def test_bundle_has_the_files_and_a_manifest_that_matches_them(bundle, converted):
    assert sorted(p.name for p in bundle.iterdir()) == BUNDLE
    assert [p.name for p in bundle.parent.iterdir()] == ["android_assets"]  # no temp or backup folder left
    model = (bundle / "model.tflite").read_bytes()
    assert model == (converted / "model_int8.tflite").read_bytes()
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["variant"] == "int8"
    assert m["model"]["sha256"] == sha256(model) and m["model"]["size_bytes"] == len(model)
    assert m["model"]["file"] == "model.tflite" and m["model"]["source"] == "model_int8.tflite"
    assert m["labels"]["count"] == 6  # the 5 classes and the none-of-these label
    assert (bundle / "labels.txt").read_text() == (converted / "labels.txt").read_text() + "unknown\n"
    inp, out = m["input"], m["output"]
    assert inp["dtype"] == "uint8" and inp["shape"] == [1, 224, 224, 3] and inp["color_space"] == "RGB"
    assert (inp["quantization"]["scale"], inp["quantization"]["zero_point"]) == (1.0, 0)
    assert inp["normalization"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert out["dtype"] == "float32" and out["shape"] == [1, 6]  # softmax in float: no 1/256 grid
    assert out["quantization"]["quantized"] is False
    parity = json.loads((converted / "parity.json").read_text())
    entry = parity["variants"]["int8"]
    assert m["parity"]["passed"] is True
    assert (m["parity"]["accuracy"], m["parity"]["agreement"], m["parity"]["delta_acc"]) == \
        (entry["accuracy"], entry["agreement"], entry["delta_acc"])
    assert m["parity"]["keras_accuracy"] == parity["keras_accuracy"] and m["parity"]["n"] == parity["n"]
    assert m["edge_transfer_version"]
    assert datetime.datetime.fromisoformat(m["created_at"]).tzinfo is not None

    readme = (bundle / "README.md").read_text()
    for needle in ("app/src/main/assets", 'noCompress += "tflite"', 'noCompress "tflite"',
                   "com.google.mediapipe:tasks-vision", "ImageClassifier.createFromOptions", "setModelAssetPath",
                   "org.tensorflow:tensorflow-lite-task-vision", "createFromFileAndOptions", "TensorImage.fromBitmap",
                   m["model"]["sha256"], "uint8", "224"):
        assert needle in readme, needle


@pytest.mark.clients
def test_the_bundled_model_alone_classifies_a_real_flower_in_mediapipe(bundle, confident_photo):
    photo, label, index = confident_photo
    categories = client_classify("mediapipe", bundle / "model.tflite", photo)
    # the labels MediaPipe reports come from the metadata inside the file, in output order
    assert_top_category(categories, (bundle / "labels.txt").read_text().splitlines(), label, index)


# --------------------------------------------------------------------------- refusals
def _fail_parity(run: Path) -> None:
    path = run / "parity.json"
    parity = json.loads(path.read_text())
    parity["variants"]["int8"].update(passed=False, failures=["agreement 80.00% < 97%"])
    parity["passed"] = False
    path.write_text(json.dumps(parity))


def _strip_metadata(run: Path) -> None:
    """Rename the Model.metadata entry so the file (still loadable) has no TFLite metadata."""
    from edge.metadata import read_metadata

    path = run / "model_int8.tflite"
    data = path.read_bytes()
    assert data.count(b"TFLITE_METADATA") == 1
    data = data.replace(b"TFLITE_METADATA", b"XFLITE_METADATA")
    assert not read_metadata(data).has_metadata
    path.write_bytes(data)


def _six_labels(run: Path) -> None:
    """Re-pack the labels file inside the model with 7 labels for its 6 outputs (5 classes, unknown)."""
    from edge.metadata import read_metadata

    path = run / "model_int8.tflite"
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        start = min(info.header_offset for info in z.infolist())
        names = [info.filename for info in z.infolist()]
    assert names == ["labels.txt", "open_set.json"]
    out = io.BytesIO()
    out.write(data[:start])
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("labels.txt", (run / "labels.txt").read_text() + "orchids\nunknown\n")
    path.write_bytes(out.getvalue())
    assert len(read_metadata(path).labels) == 7


def _drop_parity(run: Path) -> None:
    (run / "parity.json").unlink()


def _other_model(run: Path) -> None:
    """parity.json (and so its variants) made for an older model.keras of this folder."""
    path = run / "parity.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "keras_sha256": "0" * 64}))


def _other_labels(run: Path) -> None:
    labels = (run / "labels.txt").read_text().splitlines()
    (run / "labels.txt").write_text("\n".join([labels[1], labels[0], *labels[2:]]) + "\n")


REFUSALS = {
    "parity_failed": (_fail_parity, "failed its parity gate"),
    "no_metadata": (_strip_metadata, "no TFLite metadata"),
    "label_count": (_six_labels, "7 labels but the model outputs 6"),
    "no_parity": (_drop_parity, "parity.json not found"),
    "labels_differ": (_other_labels, "differ from"),
    "other_model": (_other_model, "made for another model.keras"),
}


@pytest.fixture(scope="module")
def refusal_runs(converted, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refusals")
    runs = {}
    for name, (damage, _) in REFUSALS.items():
        runs[name] = copy_run(converted, root / name)
        damage(runs[name])
    return runs


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_and_leave_the_folder_as_it_was(case, refusal_runs, bundle, tmp_path):
    dest = tmp_path / "android_assets"
    shutil.copytree(bundle, dest)
    (dest / "notes.txt").write_text("the app team's own file")  # an old folder with extra content
    before, siblings = tree_digest(dest), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(bundling.BundleError) as info:
        bundling.build(refusal_runs[case], "int8", dest)
    assert REFUSALS[case][1] in str(info.value) and "\n" not in str(info.value)
    assert tree_digest(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings


@pytest.mark.slow
def test_cli_refusal_exits_2_with_one_line_and_creates_no_folder(refusal_runs, tmp_path):
    result = android(refusal_runs["parity_failed"], tmp_path / "new" / "android_assets")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "failed its parity gate" in lines[0]
    assert list(tmp_path.iterdir()) == []
    result = android(refusal_runs["parity_failed"], tmp_path / "a", variant="int4")
    assert result.returncode == 2 and "--variant must be one of" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("crash", ["while writing", "while swapping"])
def test_a_crash_leaves_the_old_bundle_whole(crash, converted, bundle, tmp_path, monkeypatch):
    dest = tmp_path / "android_assets"
    shutil.copytree(bundle, dest)
    (dest / "manifest.json").write_text('{"variant": "old"}')
    before = tree_digest(dest)
    if crash == "while writing":
        monkeypatch.setattr(bundling, "readme", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    else:
        real_rename = bundling.os.rename

        def rename(src, dst):
            if Path(dst) == dest and atomic.NEW_MARK in Path(src).name:
                raise OSError("power cut")
            return real_rename(src, dst)

        monkeypatch.setattr(bundling.os, "rename", rename)
    with pytest.raises(OSError):
        bundling.build(converted, "int8", dest)
    assert tree_digest(dest) == before
    assert [p.name for p in tmp_path.iterdir()] == ["android_assets"]


def test_the_shipped_bundle_readme_is_the_template_filled_with_its_manifest():
    """android_assets/README.md in the repo is exactly what the packaged template renders."""
    from tests.paths import REPO

    assets = REPO / "android_assets"
    manifest = json.loads((assets / "manifest.json").read_text())
    labels = (assets / "labels.txt").read_text().splitlines()
    assert bundling.README_TEMPLATE.is_file()
    assert bundling.readme(manifest, labels) == (assets / "README.md").read_text()
