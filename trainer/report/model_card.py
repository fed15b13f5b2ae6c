"""RUN_DIR/model_card.{json,md}: what the model is, what it was trained and checked on, its limits.

Built only from files in the run directory (config, splits, report, parity.json and the
.tflite files themselves), so it can be regenerated at any time and never disagrees with them.
A run with a none-of-these output (report.json's open_set) gets its facts too: "classes" stays
the real classes, "outputs" adds the reject label, "open_set" holds the measurement.
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
OPEN_SET_LIMIT = ("Photos of anything else get `{label}` only when they look unlike every class (their "
                  "embedding's best cosine to the class prototypes below the threshold): {measured} Those it does "
                  "not reject get a confident-looking wrong label.")
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


def open_set_facts(run: RunDir) -> dict | None:
    """report.json's open_set, compact: the reject label and its threshold, the held-out split's
    rejections, the calibration, leave-one-class-out (mean and per class); None without one."""
    o = run.open_set
    if o is None:
        return None
    split = next((k for k in ("test", "val") if isinstance(o.get(k), dict)), None)
    loco = o.get("leave_one_class_out")
    return {"label": o["label"], "output_index": len(run.labels), "score": o.get("score"),
            "threshold": o.get("threshold"), "keep": o.get("keep"), "prototypes": o.get("prototypes"),
            "prototypes_per_class": o.get("prototypes_per_class"),
            "held_out": {"split": split, **o[split]} if split else None,
            "calibration": o.get("calibration"),
            "leave_one_class_out": {"keep": loco.get("keep", o.get("keep")), "mean": loco.get("mean"),
                                    "classes": loco.get("classes", [])} if loco else None}


def limitations(open_set: dict | None) -> list[str]:
    if open_set is None:
        return LIMITS
    mean = (open_set["leave_one_class_out"] or {}).get("mean") or {}
    measured = (f"left out of training, a class had {_pct(mean.get('rejected'))} of its photos rejected on average "
                f"(leave one class out, model_card.json), while {_pct(mean.get('known_kept'))} of the other "
                "classes' photos were kept." if mean else "how often was not measured (fewer than 3 classes).")
    return [OPEN_SET_LIMIT.format(label=open_set["label"], measured=measured), *LIMITS[1:]]


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
                                          "mean_abs_dp", "evidence", "decision", "photos_needed", "passed",
                                          "none_of_these")}
                              if entry else None}
    open_set = open_set_facts(run)
    return {
        "name": f"edge-transfer {config.get('backbone', {}).get('name', 'mobilenet_v2')} classifier",
        "classes": labels,
        "outputs": run.output_labels,
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
        "open_set": open_set,
        "variants": variants,
        "intended_use": INTENDED_USE,
        "limitations": limitations(open_set),
    }


def render_markdown(card: dict) -> str:
    lines = [f"# Model card: {card['name']}", "", "## Intended use", card["intended_use"], "",
             "## Classes", ", ".join(f"`{c}`" for c in card["classes"]),
             *([f"- one more output after them, `{card['open_set']['label']}` (index "
                f"{card['open_set']['output_index']}): none of these (below)"] if card.get("open_set") else []), "",
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
    lines += _open_set_markdown(card.get("open_set"))
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
    none = [f"{mode} {v['parity']['none_of_these']['agreement']:.2f} %" for mode, v in card["variants"].items()
            if v["parity"] and v["parity"].get("none_of_these")]
    if none:
        lines += ["", "Accuracy and agreement are over the classes; the none-of-these decision's own agreement "
                      f"(tolerance 97 %): {', '.join(none)}."]
    lines += ["", "## Limitations", *[f"- {item}" for item in card["limitations"]], ""]
    return "\n".join(lines)


def _open_set_markdown(o: dict | None) -> list[str]:
    if not o:
        return []
    h, cal, loco = o.get("held_out") or {}, o.get("calibration") or {}, o.get("leave_one_class_out")
    lines = ["", "## None of these",
             f"A photo whose embedding's largest cosine similarity to the {o.get('prototypes')} class prototypes is "
             f"below {_fmt(o.get('threshold'))} gets `{o['label']}` (the last output) instead of a class; the "
             f"threshold keeps {_keep(o.get('keep'))} of the val photos.", ""]
    if h:
        lines.append(f"- {h.get('split')}: {h.get('photos')} photos, {_pct(h.get('rejected'))} answered "
                     f"`{o['label']}`; accuracy {_fmt(h.get('accuracy'))} without rejections, "
                     f"{_fmt(h.get('accuracy_with_rejections'))} with rejections counted as wrong")
    if cal:
        lines.append(f"- calibration: temperature {_fmt(cal.get('temperature'))} (fitted on val, folded into the "
                     f"head); expected calibration error {_fmt(cal.get('ece_before'))} -> "
                     f"{_fmt(cal.get('ece_after'))} on {cal.get('photos')} held-out photos")
    if not loco:
        return [*lines, "- leave one class out: not measured (fewer than 3 classes)"]
    lines += ["", "Leave one class out: each class in turn is left out of training and its test photos should be "
              f"rejected (threshold keeping {_keep(loco.get('keep'))} of val). Max prob: the top softmax "
              "probability at its own threshold keeping the same share; known: the other classes' test photos.", "",
              "| left out | photos (out / known) | AUROC | AUROC max prob | rejected | rejected max prob | known kept "
              "| known accuracy | with rejections |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(r.get("left_out"), f"{r.get('left_out_photos')} / {r.get('known_photos')}", r)
            for r in loco.get("classes", [])]
    if loco.get("mean"):
        rows.append(("**mean**", "", loco["mean"]))
    for name, photos, r in rows:
        lines.append(f"| {name} | {photos} | {_fmt(r.get('auroc'), '.3f')} "
                     f"| {_fmt(r.get('auroc_max_probability'), '.3f')} "
                     f"| {_pct(r.get('rejected'))} | {_pct(r.get('rejected_max_probability'))} "
                     f"| {_pct(r.get('known_kept'))} | {_fmt(r.get('known_accuracy'))} "
                     f"| {_fmt(r.get('known_accuracy_with_rejections'))} |")
    return lines


def _fmt(x, f: str = ".4f") -> str:
    return "-" if x is None else format(x, f)


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"


def _keep(x) -> str:
    return "-" if x is None else f"{x * 100:g} %"


def _interval(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "-"


def write(run_dir: str | Path) -> tuple[Path, Path]:
    card = build(run_dir)
    run_dir = Path(run_dir)
    return (atomic.write_text(run_dir / MODEL_CARD_MD, render_markdown(card)),
            atomic.write_json(run_dir / MODEL_CARD_JSON, card))
