"""RUN_DIR/model_<variant>.tflite -> android_assets/: what an Android app ships, checked first.

`python -m trainer android RUN_DIR --variant int8 [--out android_assets]` writes

    android_assets/
      model.tflite    the variant's file byte for byte (metadata: normalization, labels packed in);
                      one fixed name, so app code does not change when the variant does
      labels.txt      the same labels, for apps that run a plain Interpreter instead of a Task API
      manifest.json   variant, input contract, quantization, parity numbers, sha256, versions
      README.md       for the app developer: where the files go, Gradle, Kotlin (MediaPipe Tasks
                      and TFLite Task Library), what the model expects

Everything is validated before anything is written (:func:`plan`): the file exists and is a
TFLite model with metadata and labels, the label count equals the output size, the labels equal
RUN_DIR/labels.txt, and parity.json records that this very file (same sha256) passed its gate.
Any failure is a :class:`BundleError` (one line; the CLI exits 2) and the destination is left
untouched. The bundle is built in a temp folder next to the destination and swapped in with
renames (:func:`trainer.atomic.swap_in`), so a crash leaves the old folder or the new one, never a mix.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from edge.benchmark import size_mb
from edge.flatbuffer import InvalidModelError
from edge.metadata import read_metadata
from edge.model_file import read_model_bytes
from edge.runtime import RuntimeMissingError, make_interpreter
from trainer import atomic
from trainer.data.dataset import DataError
from trainer.export.variants import MODES
from trainer.run_dir import LABELS, PARITY, RunDir, sha256_bytes
from trainer.version import package_version

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
FORMAT = "edge-transfer-android-bundle/1"
DEFAULT_OUT = Path("android_assets")
# Versions the README's snippets were written against (any later release should do).
MEDIAPIPE_ARTIFACT = "com.google.mediapipe:tasks-vision:0.10.14"
TASK_LIBRARY_ARTIFACT = "org.tensorflow:tensorflow-lite-task-vision:0.4.4"
README_TEMPLATE = Path(__file__).parent / "templates" / "android_README.md"


class BundleError(DataError):
    """The run cannot be bundled as asked (one line): nothing was written."""


@dataclass(frozen=True)
class Plan:
    """Everything the bundle needs, read and checked before a byte is written."""

    run_dir: Path
    variant: str
    source: Path
    model_bytes: bytes
    labels: list[str]
    manifest: dict


# --------------------------------------------------------------------------- validation
def _checked_parity(run: RunDir, variant: str, model_sha: str) -> tuple[dict, dict]:
    """(parity.json, its entry for ``variant``) when that entry is current and passed; else BundleError."""
    path = run / PARITY
    parity = run.parity()
    if not parity.exists:
        raise BundleError(f"{path} not found: run `python -m trainer convert {run.path}` first "
                          "(an unchecked model is not shipped)")
    entry = parity.entry(variant)
    if not entry:
        raise BundleError(f"{path} has no parity result for {variant}: run "
                          f"`python -m trainer convert {run.path} --mode {variant}`")
    if entry.get("sha256") != model_sha:
        raise BundleError(f"{path} is stale: it checked a different model_{variant}.tflite (sha256 differs); "
                          f"run `python -m trainer convert {run.path} --mode {variant}` again")
    try:
        run.refuse_foreign_parity()
    except DataError as exc:
        raise BundleError(str(exc)) from None
    if entry.get("passed") is not True or entry.get("failures"):
        why = "; ".join(entry.get("failures") or []) or "not marked passed"
        raise BundleError(f"{variant} failed its parity gate ({why}): ship a variant that passed "
                          "(see parity.json) or convert again")
    return parity.data, entry


def plan(run_dir: str | Path, variant: str = "int8") -> Plan:
    """Read and check everything; raises BundleError (one line) on the first problem."""
    if variant not in MODES:
        raise BundleError(f"--variant must be one of {', '.join(MODES)}, got {variant!r}")
    try:
        run = RunDir.open(run_dir, require=(LABELS,))
    except DataError as exc:
        raise BundleError(str(exc)) from None
    labels_path, run_labels = run / LABELS, run.output_labels
    source = run.variant(variant)
    if not source.is_file():
        raise BundleError(f"{source} not found: run `python -m trainer convert {run.path} --mode {variant}` first")

    try:
        data = read_model_bytes(source)
        meta = read_metadata(data)
    except InvalidModelError as exc:
        raise BundleError(f"{source}: unreadable model or metadata: {exc}") from None
    if not meta.has_metadata:
        raise BundleError(f"{source} has no TFLite metadata: MediaPipe and the Task Library need it "
                          "(normalization, labels); convert again")
    if not meta.labels:
        raise BundleError(f"{source} metadata has no labels file: convert again")
    try:
        loaded = make_interpreter(data, num_threads=1)  # it drops the runtime's INFO banner itself
    except (InvalidModelError, RuntimeMissingError) as exc:
        raise BundleError(f"{source}: {exc}") from None
    n_out = 1
    for dim in loaded.output.shape[1:]:
        n_out *= int(dim)
    if len(meta.labels) != n_out:
        raise BundleError(f"{source}: metadata has {len(meta.labels)} labels but the model outputs {n_out} scores")
    if meta.labels != run_labels:
        raise BundleError(f"{source}: metadata labels {meta.labels} differ from {labels_path} {run_labels}")

    sha = sha256_bytes(data)
    parity, entry = _checked_parity(run, variant, sha)
    manifest = _manifest(variant, source, data, sha, meta, loaded, parity, entry)
    return Plan(run.path, variant, source, data, list(meta.labels), manifest)


def _quantization(tensor) -> dict:
    return {"scale": float(tensor.scale), "zero_point": int(tensor.zero_point), "quantized": bool(tensor.is_quantized)}


def _manifest(variant, source: Path, data: bytes, sha: str, meta, loaded, parity: dict, entry: dict) -> dict:
    inp, out = loaded.input, loaded.output
    _, h, w, c = (list(inp.shape) + [1, 1, 1, 1])[:4]
    return {
        "format": FORMAT,
        "variant": variant,
        "summary": MODES[variant].summary,
        "model": {"file": MODEL_FILE, "source": source.name, "sha256": sha, "size_bytes": len(data),
                  "size_mb": size_mb(len(data)), "min_runtime_version": meta.min_runtime_version},
        "input": {
            "shape": [int(s) for s in inp.shape],
            "height": int(h), "width": int(w), "channels": int(c),
            "dtype": str(inp.dtype),
            "color_space": meta.color_space or "RGB",
            "normalization": {"mean": list(meta.mean) if meta.mean else None,
                              "std": list(meta.std) if meta.std else None},
            "quantization": _quantization(inp),
            "pixels": "RGB 0..255, resized to the input size; (pixel - mean) / std as the metadata says "
                      "(mean 0, std 1: raw pixels)",
        },
        "output": {"shape": [int(s) for s in out.shape], "dtype": str(out.dtype), "quantization": _quantization(out),
                   "meaning": "softmax probabilities, one per label (uint8: score = scale * (q - zero_point))"},
        "labels": {"file": LABELS_FILE, "count": len(meta.labels), "in_model_metadata": True,
                   "none_of_these": meta.open_set.label if meta.open_set else None},
        "parity": {
            "split": parity.get("split"), "n": parity.get("n"), "keras_accuracy": parity.get("keras_accuracy"),
            **{k: entry.get(k) for k in ("accuracy", "delta_acc", "agreement", "strict_agreement", "max_abs_dp",
                                         "thresholds", "evidence", "decision", "passed")},
        },
        "metadata": {"name": meta.name, "version": meta.version, "author": meta.author, "license": meta.license},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edge_transfer_version": package_version(),
    }


# --------------------------------------------------------------------------- writing
def write_files(p: Plan, folder: Path) -> None:
    """Write the bundle's files into ``folder`` (each atomically) and read the model back."""
    atomic.write_bytes(folder / MODEL_FILE, p.model_bytes)
    atomic.write_text(folder / LABELS_FILE, "\n".join(p.labels) + "\n")
    atomic.write_json(folder / MANIFEST_FILE, p.manifest)
    atomic.write_text(folder / README_FILE, readme(p.manifest, p.labels))  # each with the umask's mode
    if sha256_bytes((folder / MODEL_FILE).read_bytes()) != p.manifest["model"]["sha256"]:
        raise OSError(f"{folder / MODEL_FILE} does not read back as written")


def build(run_dir: str | Path, variant: str = "int8", out: str | Path = DEFAULT_OUT) -> Plan:
    """Validate, then (and only then) replace ``out`` with a fresh bundle. Returns the plan."""
    p = plan(run_dir, variant)
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"{dest} exists and is not a folder")
    atomic.recover(dest)  # a bundle swap that was killed: the old folder comes back first
    staging = atomic.staging_dir(dest)
    try:
        if dest.is_dir():
            os.chmod(staging, dest.stat().st_mode & 0o7777)  # the app team's folder keeps its mode
        write_files(p, staging)
        (staging / ".gitkeep").touch()
        atomic.swap_in(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return p


# --------------------------------------------------------------------------- README
def _gate(thresholds: dict) -> str:
    words = {"max_abs_dp": "max |p - p_keras| <= {:g}", "min_delta_acc": "accuracy change >= {:+g} points",
             "min_agreement": "same top-1 as Keras on >= {:g} % of photos"}
    return ", ".join(words[k].format(v) if k in words else f"{k} {v}" for k, v in thresholds.items()) or "no bounds"


def readme(m: dict, labels: list[str]) -> str:
    """The app developer's page, filled with this bundle's facts."""
    inp, out, par = m["input"], m["output"], m["parity"]
    mean, std = inp["normalization"]["mean"], inp["normalization"]["std"]
    q_in, q_out = inp["quantization"], out["quantization"]
    if inp["dtype"] == "float32":
        feed = (f"float32 `[1, {inp['height']}, {inp['width']}, 3]`, RGB values 0..255 as floats "
                f"(metadata mean {mean}, std {std}: no scaling to 0..1 or -1..1; the model normalizes inside)")
    else:
        feed = (f"{inp['dtype']} `[1, {inp['height']}, {inp['width']}, 3]`, raw RGB pixels 0..255 "
                f"(input quantization scale {q_in['scale']:g}, zero point {q_in['zero_point']}: the byte is the pixel)")
    if q_out["quantized"]:
        scores = (f"{out['dtype']} `{out['shape']}`; probability = {q_out['scale']:g} × (q − {q_out['zero_point']}). "
                  "MediaPipe and the Task Library dequantize for you.")
    else:
        scores = f"{out['dtype']} `{out['shape']}`, softmax probabilities."
    pct = lambda x: "n/a" if x is None else f"{x * 100:.2f} %"  # noqa: E731
    agree = "n/a" if par.get("agreement") is None else f"{par['agreement']:.2f} %"
    bounds = (par.get("evidence") or {}).get("agreement")
    if bounds:  # the held-out interval the gate decided on
        agree += f" (90 % interval {bounds['low']:.2f}-{bounds['high']:.2f} %)"
    delta = "n/a" if par.get("delta_acc") is None else f"{par['delta_acc']:+.2f} points"
    label_list = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
    reject = m["labels"].get("none_of_these")
    sure = (f"- The last label, `{reject}`, means \"none of these\": the model puts it first when the photo is\n"
            "  far from every class (its threshold is inside the model: the default options are enough).\n"
            "  The scores are this model's softmax; treat a low top score (e.g. below 0.5) as \"not sure\"."
            if reject else
            f"- The scores are this model's softmax; it always names one of its {m['labels']['count']} classes, so\n"
            "  treat a low top score (e.g. below 0.5) as \"not sure\".")
    values = {
        "model_file": MODEL_FILE, "labels_file": LABELS_FILE, "manifest_file": MANIFEST_FILE,
        "mediapipe_artifact": MEDIAPIPE_ARTIFACT, "task_library_artifact": TASK_LIBRARY_ARTIFACT,
        "agree": agree, "delta": delta, "feed": feed, "scores": scores, "label_list": label_list, "sure": sure,
        "color_space": inp["color_space"], "height": inp["height"], "width": inp["width"],
        "created_at": m["created_at"], "version": m["edge_transfer_version"], "label_count": m["labels"]["count"],
        "title": m["metadata"]["name"] or "image classifier", "min_runtime": m["model"]["min_runtime_version"],
        "sha256": m["model"]["sha256"], "sha256_short": m["model"]["sha256"][:16], "size_mb": m["model"]["size_mb"],
        "source": m["model"]["source"], "summary": m["summary"], "variant": m["variant"],
        "parity_n": par.get("n"), "parity_split": par.get("split"), "accuracy": pct(par.get("accuracy")),
        "keras_accuracy": pct(par.get("keras_accuracy")), "gate": _gate(par.get("thresholds") or {}),
    }
    return string.Template(README_TEMPLATE.read_text(encoding="utf-8")).substitute(values).split("\n", 1)[1]
