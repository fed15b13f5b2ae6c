"""RUN_DIR/model_<variant>.tflite -> a static web folder: the model classifies photos in a browser.

`python -m trainer web RUN_DIR [--variant int8] --out DIR` writes

    DIR/
      index.html       the page; the model card's headline numbers and the page's settings are
                       embedded (no side file), a Content-Security-Policy allows this origin only
      app.js           loading, classifying, the page, window.edgeTransfer (the scripting hook)
      preprocess.js    edge.preprocess in JavaScript: EXIF orientation, TF's half-pixel bilinear
                       resize, truncation to uint8
      tflite.js        the model file's tensors, metadata and zipped labels file, read in JavaScript
      model.tflite     the variant's file byte for byte (labels inside, in its metadata)
      manifest.json    variant, input contract, parity numbers, LiteRT.js version, every file's sha256
      vendor/litertjs/ LiteRT.js (@litertjs/core + @litertjs/wasm-utils, pinned in web/package.json):
                       its ES modules and the two single-threaded WebAssembly builds it picks from

Any static file server can publish DIR (docs/web.md); the page asks nothing of any other origin.

Everything is checked before anything is written: what `trainer android` checks (metadata, labels,
a current and passed parity gate: :func:`trainer.ship.android.plan`), plus a fixed batch of 1
(LiteRT.js cannot resize an input: files converted before batch-1 exports are refused), I/O types
LiteRT.js takes, and the LiteRT.js files at the pinned version. Then the folder is built in a
staging folder and swapped in with renames, like android_assets/. An --out that holds anything
but such a folder is refused (so a typo cannot replace a run).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from trainer import atomic
from trainer.export.variants import inspect_model
from trainer.run_dir import MODEL_CARD_JSON, RunDir, read_json, sha256_bytes
from trainer.ship import android
from trainer.ship.android import BundleError
from trainer.version import package_version

FORMAT = "edge-transfer-web-bundle/1"
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
PAGE_FILES = ("app.js", "preprocess.js", "tflite.js")
TEMPLATES = Path(__file__).parent / "templates" / "web"
NPM_FOLDER = Path(__file__).resolve().parents[2] / "web"  # package.json + package-lock.json: the pin
RUNTIME_ENV = "EDGE_TRANSFER_LITERTJS"  # another node_modules/@litertjs folder
VENDOR = "vendor/litertjs"
WASM = f"{VENDOR}/wasm/"
# What the page loads of the npm packages: the ES modules, and the two single-threaded WebAssembly
# builds loadLiteRt() picks between (relaxed SIMD or not). The threaded and JSPI builds (another
# 19 MB) answer options the page does not pass: threads need cross-origin isolation headers that a
# plain static host does not send.
RUNTIME_FILES = {
    "core/dist/index.js": f"{VENDOR}/core/index.js",
    "wasm-utils/dist/index.js": f"{VENDOR}/wasm-utils/index.js",
    **{f"core/wasm/litert_wasm_{b}.{ext}": f"{WASM}litert_wasm_{b}.{ext}"
       for b in ("internal", "compat_internal") for ext in ("js", "wasm")},
}
IMPORT_MAP = {"imports": {"@litertjs/wasm-utils": f"./{VENDOR}/wasm-utils/index.js"}}
LITERT_INPUT_TYPES = ("uint8", "float32")  # of LiteRT.js's float32 / int32 / uint8, what a photo model takes
TOP_K = 3


@dataclass(frozen=True)
class Runtime:
    """The LiteRT.js files to vendor: where they are and which version."""

    folder: Path
    version: str

    @classmethod
    def find(cls, folder: str | Path | None = None) -> "Runtime":
        """``folder`` (a node_modules/@litertjs), else $EDGE_TRANSFER_LITERTJS, else web/node_modules/@litertjs;
        its @litertjs/core must be the version web/package.json pins."""
        folder = Path(folder or os.environ.get(RUNTIME_ENV) or NPM_FOLDER / "node_modules" / "@litertjs")
        missing = [src for src in RUNTIME_FILES if not (folder / src).is_file()]
        if missing:
            raise BundleError(f"LiteRT.js is not installed at {folder} ({missing[0]} missing): run `make web-runtime` "
                              f"(npm ci in {NPM_FOLDER.name}/), or point {RUNTIME_ENV} at a node_modules/@litertjs folder")
        pin_file = NPM_FOLDER / "package.json"  # absent from an installed (not editable) package: no pin to check
        try:
            version = json.loads((folder / "core" / "package.json").read_text())["version"]
            pins = json.loads(pin_file.read_text())["dependencies"] if pin_file.is_file() else {}
            found = {name: json.loads((folder / name.split("/", 1)[1] / "package.json").read_text()).get("version")
                     for name in pins}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"cannot read the LiteRT.js version at {folder}: {exc}") from None
        for name, pinned in pins.items():
            if found[name] != pinned:
                raise BundleError(f"{folder} holds {name} {found[name]}, but {NPM_FOLDER.name}/package.json pins {pinned}: "
                                  "run `make web-runtime` (npm ci)")
        return cls(folder, version)


@dataclass(frozen=True)
class Plan:
    """Everything the folder needs, read and checked before a byte is written."""

    bundle: android.Plan  # the checked variant: bytes, labels, the manifest trainer android writes
    runtime: Runtime
    card: dict  # the headline numbers the page shows

    @property
    def manifest(self) -> dict:
        return self.bundle.manifest


def plan(run_dir: str | Path, variant: str = "int8", runtime: str | Path | None = None) -> Plan:
    """Read and check everything; raises BundleError (one line) on the first problem."""
    bundle = android.plan(run_dir, variant)
    source, v = bundle.source, inspect_model(bundle.model_bytes)
    if v.input_signature[:1] != (1,) or v.dynamic_dims:
        raise BundleError(f"{source} declares input {list(v.input_signature)} ({v.dynamic_dims} dynamic dimensions): "
                          "LiteRT.js needs a fixed batch of 1; convert again "
                          f"(`python -m trainer convert {bundle.run_dir} --mode {variant}` writes batch-1 files)")
    for what, dtype in (("input", v.input_dtype), ("output", v.output_dtype)):
        if dtype not in LITERT_INPUT_TYPES:
            raise BundleError(f"{source}: {what} type {dtype} is not one LiteRT.js takes ({', '.join(LITERT_INPUT_TYPES)})")
    return Plan(bundle, Runtime.find(runtime), headline(RunDir.open(bundle.run_dir, require=()), bundle.manifest))


def headline(run: RunDir, manifest: dict) -> dict:
    """The model card's headline numbers for this variant (parity.json and model_card.json)."""
    entry = run.parity().entry(manifest["variant"]) or {}
    par = manifest["parity"]
    card = read_json(run / MODEL_CARD_JSON)  # {} when absent
    data, backbone = card.get("data") or {}, card.get("backbone") or {}
    return {
        "name": card.get("name") or manifest["metadata"]["name"], "variant": manifest["variant"],
        "summary": manifest["summary"], "size_mb": manifest["model"]["size_mb"], "sha256": manifest["model"]["sha256"],
        "classes": len(run.labels) if (run / "labels.txt").is_file() else manifest["labels"]["count"],
        "none_of_these": (run.open_set or {}).get("label"), "photos": data.get("photos"), "backbone": backbone.get("name"),
        "split": par.get("split"), "n": par.get("n"), "keras_accuracy": par.get("keras_accuracy"),
        "accuracy": par.get("accuracy"), "accuracy_ci95": entry.get("accuracy_ci95"),
        "delta_acc": par.get("delta_acc"), "agreement": par.get("agreement"), "max_abs_dp": par.get("max_abs_dp"),
        "decision": entry.get("decision") or ("pass" if par.get("passed") else None),
    }


def _num(x, fmt: str, suffix: str = "") -> str:
    return "n/a" if x is None else f"{format(x, fmt)}{suffix}"


def headline_html(card: dict) -> str:
    """The card as the page's row of numbers (escaped; shown before any script runs)."""
    ci = card.get("accuracy_ci95")
    acc = _num(card.get("accuracy"), ".3f") + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
    items = [
        (f"accuracy on {card.get('n') or 'n/a'} {card.get('split') or 'held-out'} photos", acc),
        ("same top-1 as model.keras", _num(card.get("agreement"), ".2f", " %")),
        ("accuracy change vs model.keras", _num(card.get("delta_acc"), "+.2f", " pt")),
        ("max |p − p_keras|", _num(card.get("max_abs_dp"), ".3f")),
        ("parity gate", card.get("decision") or "n/a"),
        ("model file", f"{_num(card.get('size_mb'), '.2f', ' MB')} ({card['variant']})"),
    ]
    return "\n".join(f'<div><span class="muted">{html.escape(k)}</span><b>{html.escape(v)}</b></div>' for k, v in items)


def _script_json(obj) -> str:
    """JSON safe inside a <script> element (no "</" that would end it)."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")


def index_html(p: Plan) -> str:
    card = p.card
    importmap = _script_json(IMPORT_MAP)
    digest = base64.b64encode(hashlib.sha256(importmap.encode()).digest()).decode()
    config = {"model": MODEL_FILE, "runtime": WASM, "litertjs": p.runtime.version, "variant": card["variant"],
              "top_k": TOP_K, "card": card}
    trained = ", ".join(x for x in (f"{card['photos']} photos" if card.get("photos") else "",
                                    f"{card['classes']} classes", card.get("backbone") or "") if x)
    values = {
        "title": html.escape(card["name"] or "image classifier"), "importmap": importmap,
        "importmap_hash": f"'sha256-{digest}'", "config": _script_json(config), "headline": headline_html(card),
        "subtitle": html.escape(f"{card['variant']}: {card['summary']}. Trained on {trained}."),
        "litertjs": html.escape(p.runtime.version),
    }
    return string.Template((TEMPLATES / "index.html").read_text(encoding="utf-8")).substitute(values)


def web_manifest(p: Plan, files: dict[str, bytes]) -> dict:
    m = p.manifest
    return {
        "format": FORMAT, "variant": m["variant"], "summary": m["summary"],
        "model": {**m["model"], "file": MODEL_FILE}, "input": m["input"], "output": m["output"],
        "labels": {"count": m["labels"]["count"], "in_model_metadata": True}, "parity": m["parity"],
        "headline": p.card,
        "litertjs": {"version": p.runtime.version, "packages": ["@litertjs/core", "@litertjs/wasm-utils"],
                     "license": "Apache-2.0", "accelerator": "wasm (CPU, XNNPACK)"},
        "files": {name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in sorted(files.items())},
        "total_bytes": sum(len(d) for d in files.values()),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edge_transfer_version": package_version(),
    }


def files_of(p: Plan) -> dict[str, bytes]:
    """Every file of the folder but manifest.json: relative path -> bytes."""
    files = {"index.html": index_html(p).encode("utf-8"), MODEL_FILE: p.bundle.model_bytes}
    files.update({name: (TEMPLATES / name).read_bytes() for name in PAGE_FILES})
    files.update({dest: (p.runtime.folder / src).read_bytes() for src, dest in RUNTIME_FILES.items()})
    return files


def _refuse_foreign(dest: Path) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise BundleError(f"{dest} exists and is not a folder")
    if not any(dest.iterdir()):
        return
    try:
        made_here = json.loads((dest / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        made_here = False
    if not made_here:
        raise BundleError(f"{dest} holds files that `trainer web` did not write (no {MANIFEST_FILE} of a web folder): "
                          "give a new or empty --out")


def build(run_dir: str | Path, variant: str, out: str | Path, runtime: str | Path | None = None) -> tuple[Plan, dict]:
    """Validate, then (and only then) replace ``out`` with a fresh folder. Returns the plan and manifest."""
    p = plan(run_dir, variant, runtime)
    dest = Path(out)
    atomic.recover(dest)  # a swap that was killed: the old folder comes back first
    _refuse_foreign(dest)
    files = files_of(p)
    manifest = web_manifest(p, files)
    staging = atomic.staging_dir(dest)
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(staging / name, data)
        atomic.write_json(staging / MANIFEST_FILE, manifest)
        if sha256_bytes((staging / MODEL_FILE).read_bytes()) != manifest["model"]["sha256"]:
            raise OSError(f"{staging / MODEL_FILE} does not read back as written")
        atomic.swap_in(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return p, manifest
