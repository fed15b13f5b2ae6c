"""RUN_DIR/model_card.{json,md}: what the model is, what it was trained and checked on, its limits.

Built only from files in the run directory (config, splits, report, parity.json and the
.tflite files themselves), so it can be regenerated at any time and never disagrees with them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge.benchmark import size_mb
from trainer import atomic
from trainer.export.variants import MODES, inspect_model
from trainer.run_dir import CONFIG, MODEL_CARD_JSON, MODEL_CARD_MD, REPORT, SPLITS, RunDir

INTENDED_USE = (
    "On-device classification of photos into the listed classes, for the kind of photos it was "
    "trained on (same subjects, framing and cameras). The app shows or acts on the top classes "
    "and their scores; it is not meant for decisions with safety, legal or medical consequences."
)
LIMITS = [
    "It always answers with one of its classes: photos of anything else get a confident-looking wrong label "
    "(no 'none of these' class). Use a score threshold and treat low scores as unknown.",
    "Accuracy is measured on a held-out split of the same folder of photos; photos from other sources, "
    "lighting or cameras may score lower.",
    "Transfer-learned from ImageNet features: it inherits that data set's biases and blind spots.",
    "Small classes are measured on few photos; per-class numbers (model_card.json) carry wide uncertainty.",
    "Quantized variants (dynamic, int8, full_int8) may differ from the float model on borderline photos; see parity.",
]
INPUT_CONTRACT = ("RGB, {h}x{w}, 0..255 values: float variants take them as float32, int8 and full_int8 as "
                  "uint8 (scale 1, zero point 0). Normalization is inside the model; metadata mean 0, std 1. "
                  "Resize: {resize} (edge.preprocess).")


def variant_facts(path: Path) -> dict:
    """Size, dtypes, quantization and runtime requirements of one .tflite, read from the file."""
    raw = path.read_bytes()
    v = inspect_model(raw)
    return {"file": path.name, "size_bytes": len(raw), "size_mb": size_mb(len(raw)),
            "input": v.input_dtype, "output": v.output_dtype, "input_quantization": list(v.input_quantization),
            "output_quantization": list(v.output_quantization), "min_runtime_version": v.min_runtime_version}


def build(run_dir: str | Path) -> dict:
    run = RunDir.open(run_dir)
    config, report, splits = (run.read(name) for name in (CONFIG, REPORT, SPLITS))
    parity = run.parity()
    labels = run.labels
    counts = {part: dict(sorted(Counter(labels[s["label"]] for s in splits.get(part, [])).items()))
              for part in ("train", "val", "test")}
    per_class = {c: sum(counts[p].get(c, 0) for p in counts) for c in labels}
    preprocess = config.get("preprocess", {})
    h, w = preprocess.get("size", [224, 224])
    variants = {}
    for mode in MODES:
        path = run.variant(mode)
        if path.is_file():
            entry = parity.current(mode)
            variants[mode] = {**variant_facts(path), "summary": MODES[mode].summary,
                              "parity": {k: entry.get(k) for k in
                                         ("accuracy", "accuracy_ci95", "delta_acc", "agreement", "max_abs_dp",
                                          "mean_abs_dp", "evidence", "decision", "photos_needed", "passed")}
                              if entry else None}
    return {
        "name": f"edge-transfer {config.get('backbone', {}).get('name', 'mobilenet_v2')} classifier",
        "classes": labels,
        "data": {"dir": splits.get("data_dir") or config.get("data", {}).get("dir"),
                 "photos": sum(per_class.values()), "per_class": per_class, "skipped": len(splits.get("skipped", [])),
                 "excluded": len(config.get("data", {}).get("exclude", [])),
                 "excluded_from": config.get("data", {}).get("exclude_from") or None},
        "splits": {part: {"n": sum(c.values()), "per_class": c} for part, c in counts.items()},
        "preprocessing": {**preprocess, "input": INPUT_CONTRACT.format(h=h, w=w, resize=preprocess.get("resize"))},
        "backbone": config.get("backbone"),
        "training": config.get("train"),
        "metrics": {part: {k: m.get(k) for k in ("n", "accuracy", "accuracy_ci95", "macro_f1", "per_class")}
                    for part, m in report.get("splits", {}).items()},
        "parity": {k: parity.data.get(k) for k in ("split", "n", "keras_accuracy", "keras_accuracy_ci95", "definitions")}
        if parity.exists else None,
        "variants": variants,
        "intended_use": INTENDED_USE,
        "limitations": LIMITS,
    }


def render_markdown(card: dict) -> str:
    lines = [f"# Model card: {card['name']}", "", "## Intended use", card["intended_use"], "",
             "## Classes", ", ".join(f"`{c}`" for c in card["classes"]), "",
             "## Data", f"- folder: `{card['data']['dir']}`",
             f"- {card['data']['photos']} photos used, {card['data']['skipped']} unreadable files skipped",
             *([f"- {card['data']['excluded']} photos left out on purpose (`train --exclude "
                f"{card['data'].get('excluded_from') or '...'}`; the paths are in config.json)"]
               if card["data"].get("excluded") else []), "",
             "| class | " + " | ".join(card["splits"]) + " | total |", "|---|" + "---:|" * (len(card["splits"]) + 1)]
    for c in card["classes"]:
        lines.append(f"| {c} | " + " | ".join(str(s["per_class"].get(c, 0)) for s in card["splits"].values())
                     + f" | {card['data']['per_class'][c]} |")
    lines += ["| **all** | " + " | ".join(str(s["n"]) for s in card["splits"].values())
              + f" | {card['data']['photos']} |", "",
              "## Preprocessing", card["preprocessing"]["input"], "",
              "## Metrics (model.keras)", "Accuracy with its 95 % Wilson interval: the range the true accuracy on "
              "photos like these lies in, given how few were measured.", "",
              "| split | n | accuracy | 95 % interval | macro F1 |", "|---|---:|---:|---|---:|"]
    for part, m in card["metrics"].items():
        lines.append(f"| {part} | {m['n']} | {m['accuracy']} | {_interval(m.get('accuracy_ci95'))} | {m['macro_f1']} |")
    parity = card.get("parity")
    lines += ["", "## TFLite variants"]
    if parity:
        lines.append(f"Parity against model.keras on {parity['n']} {parity['split']} photos "
                     f"(Keras accuracy {parity['keras_accuracy']}); agreement counts exact ties of a "
                     "quantized output as agreeing when the Keras top-1 is among them. The gate fails a variant "
                     "only when the photos show it worse than its tolerance at 95 % (the agreement's interval is "
                     "the pair of one-sided 95 % bounds the decision uses); a split too small to show that is "
                     "marked undecided with the number of photos that would decide.")
    lines += ["", "| variant | size MB | input | output | min runtime | accuracy | 95 % interval | Δacc (pt) "
                  "| agreement % | 90 % interval | max abs Δp | gate |",
              "|---|---:|---|---|---|---:|---|---:|---:|---|---:|---|"]
    for mode, v in card["variants"].items():
        p = v["parity"] or {}
        fmt = lambda key, f: format(p[key], f) if key in p else "-"  # noqa: E731
        gate = "-" if not p else ("FAIL" if not p["passed"] else "pass" if p.get("decision") != "undecided"
                                  else f"undecided (~{p.get('photos_needed')} photos needed)")
        found = (p.get("evidence") or {}).get("agreement")
        lines.append(f"| {mode} | {v['size_mb']} | {v['input']} | {v['output']} | {v['min_runtime_version']} | "
                     f"{fmt('accuracy', '.4f')} | {_interval(p.get('accuracy_ci95'))} | {fmt('delta_acc', '+.2f')} | "
                     f"{fmt('agreement', '.2f')} | {_interval([found['low'], found['high']]) if found else '-'} | "
                     f"{fmt('max_abs_dp', '.2e')} | {gate} |")
    lines += ["", "## Limitations", *[f"- {item}" for item in card["limitations"]], ""]
    return "\n".join(lines)


def _interval(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "-"


def write(run_dir: str | Path) -> tuple[Path, Path]:
    card = build(run_dir)
    run_dir = Path(run_dir)
    return (atomic.write_text(run_dir / MODEL_CARD_MD, render_markdown(card)),
            atomic.write_json(run_dir / MODEL_CARD_JSON, card))
