"""RUN_DIR/report.html: one self-contained page about a run (no network, no external CSS/JS,
images as data URIs), rebuilt at any time from the run directory's files alone.

report.json is required (its "open_set" adds the "None of these" section); splits.json,
config.json, labels.txt, training_curves.png, parity.json, bench.json and model_card.json each
add a section when present. `train` writes the page, `convert` and `bench` rewrite it.
Thumbnails of wrong photos are read from the data folder through edge.preprocess (what the model
saw); a photo that is gone gets a placeholder.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from edge.preprocess import PreprocessSpec
from trainer import atomic
from trainer.data.dataset import DataError
from trainer.report.contact import THUMB_PX, data_check_section, thumbnail
from trainer.report.metrics import wilson
from trainer.run_dir import RunDir, read_json

__all__ = ["CSS", "render", "write", "refresh", "thumbnail"]

CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f5f7fa;--ok:#1b7f3b;--bad:#c62828;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}p{margin:6px 0}.muted{color:var(--muted)}code{font-size:12.5px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:4px 20px 18px;margin-top:18px}
section>h2:first-child{margin-top:14px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:22px}.card span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:#f0f3f7;font-weight:600}td.n,th.n{text-align:right}tbody tr:hover{background:#f8fafc}
.pass{color:var(--ok);font-weight:600}.fail{color:var(--bad);font-weight:600}
table.cm td{text-align:center;min-width:46px}table.cm td.diag{outline:2px solid #94a3b8;outline-offset:-2px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:150px;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
figure img,.missing{width:96px;height:96px;display:block;margin:0 auto;border-radius:4px}
.missing{background:repeating-linear-gradient(45deg,#eef1f5,#eef1f5 6px,#e2e6eb 6px,#e2e6eb 12px);
 color:var(--muted);font-size:11px;display:flex;align-items:center;justify-content:center;text-align:center}
figcaption{font-size:12px;margin-top:5px;word-break:break-word}figcaption .p{color:var(--bad)}figcaption .c{color:var(--bad);font-size:11.5px}
figcaption .path{color:var(--muted);font-size:10.5px}
img.plot{max-width:100%;height:auto}.scroll{overflow-x:auto}ul{margin:6px 0;padding-left:20px}
pre{background:#f0f3f7;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.twins{display:inline-block;vertical-align:top;margin:8px 18px 4px 0}.twins p{margin:2px 0 6px;font-size:12.5px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, fmt: str = "{:.4f}") -> str:
    return "–" if x is None else fmt.format(x)


def _table(head: list[str], rows: list[list], numeric_from: int = 1, cls: str = "") -> str:
    """Rows are lists of HTML-ready cells; columns from ``numeric_from`` on are right-aligned."""
    th = "".join(f'<th{" class=n" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= numeric_from else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<div class=scroll><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _acc_ci(accuracy, n) -> str:
    if accuracy is None:
        return "–"
    lo, hi = wilson(accuracy, n)
    return f"{accuracy:.4f} <span class=muted>[{lo:.3f}, {hi:.3f}]</span>"


def _gate(passed, variant: dict | None = None) -> str:
    if passed is None:
        return "–"
    if passed and variant and variant.get("decision") == "undecided":
        return f'<span class="muted">undecided: too few photos (~{_e(variant.get("photos_needed"))} needed)</span>'
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _agreement(v: dict) -> str:
    """Agreement with its 90 % interval (the one-sided 95 % bounds the gate decides on)."""
    found = (v.get("evidence") or {}).get("agreement")
    bounds = f' <span class=muted>[{found["low"]:.1f}, {found["high"]:.1f}]</span>' if found else ""
    return _num(v.get("agreement"), "{:.2f}") + bounds


def _name(run_dir: Path) -> str:
    """The run's name, also while `train --overwrite` builds it in a hidden sibling."""
    return atomic.final_name(run_dir.resolve())


def _png(path: Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _eval_split(report: dict) -> str:
    splits = report.get("splits", {})
    return "test" if (splits.get("test") or {}).get("n") else "val"


def _summary(run_dir: Path, report: dict, config: dict, labels: list[str]) -> str:
    split = _eval_split(report)
    m = report.get("splits", {}).get(split, {})
    cards = []
    if m.get("accuracy") is not None:
        lo, hi = wilson(m["accuracy"], m["n"])
        cards.append((f"{m['accuracy'] * 100:.1f} %", f"{split} accuracy, 95 % CI {lo * 100:.1f}–{hi * 100:.1f} %"))
    cards.append((str(m.get("n", 0)), f"{split} photos"))
    cards.append((str(len(labels)), "classes"))
    counts = report.get("counts", {})
    cards.append((str(sum(counts.values())), "photos used"))
    cards.append((str(len(report.get("skipped", []))), "files skipped"))
    if "total_s" in report.get("timings", {}):
        cards.append((f"{report['timings']['total_s']:.0f} s", "training time"))
    backbone = config.get("backbone", {})
    size = config.get("preprocess", {}).get("size")
    sub = f"backbone <code>{_e(backbone.get('name', '?'))}</code>" + (f", {size[0]}×{size[1]} px" if size else "")
    return (f"<h1>Training report: {_e(_name(run_dir))}</h1><p class=muted>{sub}; "
            f"data <code>{_e(config.get('data', {}).get('dir', ''))}</code></p><div class=cards>"
            + "".join(f"<div class=card><b>{v}</b><span>{k}</span></div>" for v, k in cards) + "</div>")


def _dataset(report: dict, splits: dict | None, labels: list[str]) -> str:
    parts = ("train", "val", "test")
    out = ["<section><h2>Dataset</h2>"]
    if splits:
        counts = {p: [0] * len(labels) for p in parts}
        for p in parts:
            for s in splits.get(p, []):
                counts[p][int(s["label"])] += 1
        rows = [[_e(c)] + [counts[p][i] for p in parts] + [sum(counts[p][i] for p in parts)]
                for i, c in enumerate(labels)]
        rows.append(["<b>all</b>"] + [f"<b>{sum(counts[p])}</b>" for p in parts]
                    + [f"<b>{sum(sum(v) for v in counts.values())}</b>"])
        out.append(_table(["class", *parts, "total"], rows))
    elif report.get("counts"):
        out.append(_table(["split", "photos"], [[p, report["counts"].get(p, 0)] for p in parts]))
    skipped = report.get("skipped", [])
    out.append(f"<h3>Skipped files ({len(skipped)})</h3>")
    if skipped:
        out.append(_table(["file", "reason"], [[f"<code>{_e(s.get('path'))}</code>", _e(s.get("reason"))]
                                               for s in skipped], numeric_from=9))
    else:
        out.append("<p class=muted>none: every file was readable</p>")
    return "".join(out) + "</section>"


def _metrics(report: dict, labels: list[str]) -> str:
    splits = report.get("splits", {})
    rows = [[p, m.get("n", 0), _acc_ci(m.get("accuracy"), m.get("n", 0)), _num(m.get("macro_f1"))]
            for p, m in splits.items()]
    out = ["<section><h2>Metrics (model.keras)</h2>",
           _table(["split", "n", "accuracy [95 % Wilson interval]", "macro F1"], rows)]
    split = _eval_split(report)
    m = splits.get(split, {})
    if m.get("per_class"):
        rows = [[_e(c), _num(v["precision"]), _num(v["recall"]), _num(v["f1"]), v["support"]]
                for c, v in m["per_class"].items()]
        out += [f"<h3>Per class ({split})</h3>", _table(["class", "precision", "recall", "F1", "support"], rows)]
    if m.get("confusion_matrix"):
        out += [f"<h3>Confusion matrix ({split}; rows true, columns predicted)</h3>", _confusion(m["confusion_matrix"], labels)]
    return "".join(out) + "</section>"


def _share(x) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def _keep(x) -> str:
    return "–" if x is None else f"{x * 100:g} %"


def _held_out(o: dict) -> tuple[str, dict]:
    """The eval split's name and numbers in report.json's open_set: test, else val."""
    return next(((k, o[k]) for k in ("test", "val") if isinstance(o.get(k), dict)), ("test", {}))


def _open_set(o: dict | None) -> str:
    """report.json's open_set: the none-of-these output, its cost on the held-out split, the
    calibration, and leave-one-class-out (ours against the top-softmax baseline)."""
    if not o:
        return ""
    label, keep = f"<code>{_e(o.get('label'))}</code>", _keep(o.get("keep"))
    split, h = _held_out(o)
    cal = o.get("calibration") or {}
    out = [f"<section><h2>None of these ({label})</h2>"
           f"<p>The model has one more output, {label}, after the classes: a photo whose largest cosine similarity "
           f"between its embedding and the {_e(o.get('prototypes', '?'))} class prototypes "
           f"({_e(o.get('prototypes_per_class', '?'))} per class) is below the threshold "
           f"<b>{_num(o.get('threshold'))}</b> gets {label} instead of a class. The threshold keeps {keep} "
           "of the val photos.</p>",
           f"<p><b>{_e(split)}</b> ({_e(h.get('photos', '–'))} photos): {_share(h.get('rejected'))} "
           f"answered {label}; "
           f"accuracy {_num(h.get('accuracy'))} without rejections, {_num(h.get('accuracy_with_rejections'))} "
           "with each rejection counted as wrong.</p>"]
    if cal:
        out.append(f"<p><b>Calibration</b>: temperature {_num(cal.get('temperature'))} (fitted on val, folded into "
                   f"the head); expected calibration error on {_e(cal.get('photos', '–'))} {_e(split)} photos "
                   f"{_num(cal.get('ece_before'))} → {_num(cal.get('ece_after'))}.</p>")
    loco = o.get("leave_one_class_out")
    if not loco:
        out.append("<p class=muted>Leave one class out: not measured (it needs at least 3 classes).</p>")
        return "".join(out) + "</section>"

    def row(name: str, r: dict) -> list:
        photos = (f"{_e(r['left_out_photos'])} / {_e(r.get('known_photos', '–'))}" if "left_out_photos" in r else "")
        return [name, photos, _num(r.get("auroc"), "{:.3f}"), _num(r.get("auroc_max_probability"), "{:.3f}"),
                _share(r.get("rejected")), _share(r.get("rejected_max_probability")), _share(r.get("known_kept")),
                _num(r.get("known_accuracy")), _num(r.get("known_accuracy_with_rejections"))]

    rows = [row(_e(r.get("left_out")), r) for r in loco.get("classes", [])]
    if loco.get("mean"):
        rows.append([f"<b>{c}</b>" if c else c for c in row("mean", loco["mean"])])
    head = ["left out", "photos<br><span class=muted>left out / known</span>", "AUROC<br><span class=muted>ours</span>",
            "AUROC<br><span class=muted>max probability</span>", "rejected<br><span class=muted>ours</span>",
            "rejected<br><span class=muted>max probability</span>", "known kept",
            "known accuracy<br><span class=muted>without rejections</span>",
            "known accuracy<br><span class=muted>with rejections</span>"]
    out += [f"<h3>Leave one class out (threshold keeping {_keep(loco.get('keep', o.get('keep')))} of val)</h3>",
            "<p class=muted>Each class in turn is left out of training; its test photos should all be rejected. "
            "Ours: the prototype cosine above; max probability: the top softmax probability, at its own threshold "
            "keeping the same share of val. Known: the other classes' test photos (accuracy with rejections counts "
            "a rejected known photo as wrong).</p>", _table(head, rows), "</section>"]
    return "".join(out)


def _confusion(cm: list[list[int]], labels: list[str]) -> str:
    """An HTML heat map, shaded by the share of each true class (row)."""
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(c)}</th>" for c in labels) + "</tr>"
    body = []
    for i, row in enumerate(cm):
        total = sum(row) or 1
        cells = []
        for j, v in enumerate(row):
            a = v / total
            colour = "#fff" if a > 0.55 else "inherit"
            cells.append(f'<td class="{"diag" if i == j else ""}" style="background:rgba(37,99,235,{a:.3f});'
                         f'color:{colour}">{v}</td>')
        body.append(f"<tr><th>{_e(labels[i]) if i < len(labels) else i}</th>{''.join(cells)}</tr>")
    return f'<table class="cm"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _curves(run_dir: Path) -> str:
    uri = _png(run_dir / "training_curves.png")
    if uri is None:
        return ""
    return f'<section><h2>Training curves</h2><img class=plot alt="training curves" src="{uri}"></section>'


def _data_root(splits: dict | None, config: dict) -> Path:
    return Path((splits or {}).get("data_dir") or config.get("data", {}).get("dir", "."))


def _spec(config: dict) -> PreprocessSpec:
    return PreprocessSpec.from_dict(config["preprocess"]) if "preprocess" in config else PreprocessSpec()


def _mistakes(report: dict, splits: dict | None, config: dict) -> str:
    mistakes = report.get("mistakes")
    if mistakes is None:
        return ""
    out = [f"<section><h2>Photos it got wrong ({len(mistakes)}, most confident first)</h2>"]
    if not mistakes:
        return out[0] + "<p class=muted>none</p></section>"
    root, spec = _data_root(splits, config), _spec(config)
    figures = []
    for m in mistakes:
        uri = thumbnail(root / m["path"], spec)
        pic = (f'<img alt="{_e(m["path"])}" src="{uri}" width={THUMB_PX} height={THUMB_PX}>' if uri
               else '<div class="missing">photo not found</div>')
        figures.append(f'<figure title="{_e(root / m["path"])}">{pic}<figcaption>true <b>{_e(m["label"])}</b><br>'
                       f'<span class=p>predicted <b>{_e(m["predicted"])}</b></span><br>'
                       f'<span class=c>confidence {m["confidence"] * 100:.0f} %</span><br>'
                       f'<span class=path>{_e(m["path"])}</span></figcaption></figure>')
    return out[0] + f"<div class=grid>{''.join(figures)}</div></section>"


def _parity(parity: dict | None) -> str:
    if not parity:
        return ""
    rows = []
    none = any(v.get("none_of_these") for v in parity.get("variants", {}).values())  # the unknown output's decision
    for mode, v in parity.get("variants", {}).items():
        rows.append([f"<b>{_e(mode)}</b>", f"<code>{_e(v.get('file'))}</code>", v.get("n"),
                     _acc_ci(v.get("accuracy"), v.get("n", 0)), _num(v.get("delta_acc"), "{:+.2f}"),
                     _agreement(v), _num(v.get("strict_agreement"), "{:.2f}"),
                     _num(v.get("max_abs_dp"), "{:.1e}"), _num(v.get("mean_abs_dp"), "{:.1e}"),
                     *([_num((v.get("none_of_these") or {}).get("agreement"), "{:.2f}")] if none else []),
                     _gate(v.get("passed"), v)])
    head = ["variant", "file", "n", "accuracy [95 % CI]", "Δacc (pt)", "agreement % [90 % CI]", "strict %",
            "max |Δp|", "mean |Δp|", *(["none of these %"] if none else []), "gate"]
    failed = "".join(f"<li><b>{_e(mode)}</b>: {_e('; '.join(v['failures']))}</li>"
                     for mode, v in parity.get("variants", {}).items() if v.get("failures"))
    return (f"<section><h2>TFLite parity</h2><p>Every variant against model.keras on {_e(parity.get('n'))} "
            f"{_e(parity.get('split'))} photos (Keras accuracy {_acc_ci(parity.get('keras_accuracy'), parity.get('n', 0))}); "
            f"gate overall: {_gate(parity.get('passed'))}</p>" + _table(head, rows, numeric_from=2)
            + (f"<p class=fail>Failed gates:</p><ul>{failed}</ul>" if failed else "") + "</section>")


def _bench(bench: dict | None) -> str:
    if not bench:
        return ""
    s, machine = bench.get("settings", {}), bench.get("machine", {})
    threads = [str(t) for t in s.get("threads", [])]
    head = ["variant", "status", "input", "size MB", "accuracy", "Δacc (pt)",
            *(f"{t} thread{'s' if t != '1' else ''}<br><span class=muted>p50 / p90 ms · img/s</span>" for t in threads)]
    rows = []
    for v in bench.get("variants", []):
        status = _e(v.get("status")) + (f" <span class=muted>({_e('; '.join(v.get('notes', [])))})</span>" if v.get("notes") else "")
        row = [f"<b>{_e(v.get('variant'))}</b>", status, _e(v.get("input_dtype") or "–"), _num(v.get("size_mb"), "{:.2f}"),
               _num(v.get("accuracy")), _num(v.get("delta_acc"), "{:+.2f}")]
        for t in threads:
            lat = v.get("latency", {}).get(t)
            row.append(f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f} <span class=muted>·</span> {lat['images_per_s']:.0f}"
                       if lat else "–")
        rows.append(row)
    return (f"<section><h2>Benchmark</h2><p class=muted>{_e(s.get('runs'))} timed invokes after {_e(s.get('warmup'))} "
            f"warmup, seeded random input; {_e(machine.get('backend') or 'no runtime')} on {_e(machine.get('cpu_count'))} "
            f"CPUs ({_e(machine.get('machine'))}){'; ' + _e(bench['created_at']) if bench.get('created_at') else ''}</p>"
            + _table(head, rows, numeric_from=3) + "</section>")


def _model_card(card: dict | None) -> str:
    if not card:
        return ""
    rows = [[f"<b>{_e(m)}</b>", _e(v.get("summary", "")), _e(v.get("input")), _e(v.get("output")),
             _e(v.get("min_runtime_version")), _num(v.get("size_mb"), "{:.2f}")] for m, v in card.get("variants", {}).items()]
    limits = "".join(f"<li>{_e(x)}</li>" for x in card.get("limitations", []))
    return (f"<section><h2>Model card</h2><h3>{_e(card.get('name', ''))}</h3>"
            f"<p><b>Intended use.</b> {_e(card.get('intended_use', ''))}</p>"
            f"<p><b>Input.</b> {_e(card.get('preprocessing', {}).get('input', ''))}</p>"
            + (_table(["variant", "what it is", "input", "output", "min runtime", "size MB"], rows, numeric_from=4)
               if rows else "") + f"<p><b>Limitations.</b></p><ul>{limits}</ul></section>")


def _converted(run_dir: Path) -> list[str]:
    """Parity, bench and model card, unless parity.json was made for another model.keras: a
    page never shows another model's numbers as this one's."""
    if RunDir(run_dir).parity().foreign():
        return ['<section><h2>TFLite variants</h2><p class=fail>parity.json and the variants were made for '
                f'another model.keras: not shown. Run <code>python -m trainer convert {_e(run_dir)}</code> '
                'again.</p></section>']
    return [_parity(read_json(run_dir / "parity.json")), _bench(read_json(run_dir / "bench.json")),
            _model_card(read_json(run_dir / "model_card.json"))]


def render(run_dir: str | Path) -> str:
    """The page as a string, from the run directory's files only."""
    run_dir = Path(run_dir)
    report = read_json(run_dir / "report.json")
    if not report:
        raise DataError(f"{run_dir / 'report.json'} not found or not JSON: is {run_dir} a training run directory?")
    config = read_json(run_dir / "config.json")
    splits = read_json(run_dir / "splits.json")
    labels_file = run_dir / "labels.txt"
    labels = (labels_file.read_text(encoding="utf-8").splitlines() if labels_file.is_file()
              else report.get("labels") or (splits or {}).get("labels", []))
    body = "".join([
        _summary(run_dir, report, config, labels), _dataset(report, splits, labels),
        data_check_section(report.get("data_check"), _data_root(splits, config), _spec(config)), _metrics(report, labels),
        _open_set(report.get("open_set")), _curves(run_dir), _mistakes(report, splits, config),
        *_converted(run_dir),
        f"<section><h2>Configuration</h2><details><summary>config.json</summary><pre>{_e(json.dumps(config, indent=2))}"
        "</pre></details></section>" if config else "",
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{_e(_name(run_dir))}: training report</title>'
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n")


def write(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html atomically and return its path."""
    return atomic.write_text(Path(run_dir) / "report.html", render(run_dir))


def refresh(run_dir: str | Path) -> Path | None:
    """Rewrite report.html after `convert` / `bench`; a run without report.json gets none."""
    return write(run_dir) if (Path(run_dir) / "report.json").is_file() else None
