"""doctor.html: one self-contained page (data URIs only, no script, opens offline) with a contact
sheet per finding: thumbnails with the given and the suggested label, twin groups side by side,
the photos of no class, the unreadable files. Built from doctor.json's object alone."""

from __future__ import annotations

import html
import json
from pathlib import Path

from edge.preprocess import PreprocessSpec
from trainer.report.contact import figure, group_html, mislabeled_caption, outlier_caption
from trainer.report.page import CSS

SHOWN = 120  # photos (or groups) a section shows; doctor.json has all of them


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _cards(found: dict) -> str:
    cards = [(found.get("photos", 0), "photos"), (len(found.get("mislabeled", [])), "look mislabeled"),
             (len(found.get("duplicates", [])), "twin groups"), (len(found.get("outliers", [])), "of no class"),
             (len(found.get("skipped", [])), "unreadable")]
    return "<div class=cards>" + "".join(f"<div class=card><b>{v}</b><span>{k}</span></div>" for v, k in cards) + "</div>"


def _sheet(title: str, items: list[dict], caption, spec: PreprocessSpec, note: str) -> str:
    out = [f"<section><h2>{_e(title)} ({len(items)})</h2><p class=muted>{note}</p>"]
    if not items:
        return out[0] + "<p class=muted>none found</p></section>"
    shown = items[:SHOWN]
    out.append("<div class=grid>" + "".join(figure(Path(m["path"]), m["path"], caption(m), spec) for m in shown)
               + "</div>")
    if len(items) > SHOWN:
        out.append(f"<p class=muted>and {len(items) - SHOWN} more in doctor.json</p>")
    return "".join(out) + "</section>"


def _twins(groups: list[dict], spec: PreprocessSpec) -> str:
    out = [f"<section><h2>Twins ({len(groups)} groups)</h2><p class=muted>Byte-identical files (exact) and "
           "near-identical photos (near: a resized, re-encoded or edited copy, a burst shot), filed under several "
           "classes first. <code>train</code> keeps each group in one split, so no test photo has a twin in train.</p>"]
    if not groups:
        return out[0] + "<p class=muted>none found</p></section>"
    for g in groups[:SHOWN]:
        shown = dict(g, split=g.get("folders", []))
        out.append(group_html(Path(), shown, spec, limit=8))
    if len(groups) > SHOWN:
        out.append(f"<p class=muted>and {len(groups) - SHOWN} more groups in doctor.json</p>")
    return "".join(out) + "</section>"


def _skipped(skipped: list[dict]) -> str:
    rows = "".join(f"<tr><td><code>{_e(s['path'])}</code></td><td>{_e(s['reason'])}</td></tr>" for s in skipped)
    body = (f"<div class=scroll><table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>{rows}</tbody>"
            "</table></div>" if skipped else "<p class=muted>none: every file was readable</p>")
    return f"<section><h2>Unreadable files ({len(skipped)})</h2><p class=muted>train skips these.</p>{body}</section>"


def render(found: dict) -> str:
    """The page as a string, from doctor.json's object."""
    spec = PreprocessSpec.from_dict(found["settings"]["preprocess"]) if "settings" in found else PreprocessSpec()
    folders = ", ".join(found.get("data", []))
    act = ("Leave photos out of a run (nothing on disk is moved or deleted): <code>python -m trainer train "
           "--data DIR --exclude doctor.json:mislabeled,duplicates</code> (also <code>outliers</code>, "
           "<code>skipped</code>, or a file with one path a line).")
    body = "".join([
        f"<h1>Data doctor</h1><p class=muted>{_e(folders)}; {found.get('readable', 0)} readable photos, "
        f"{len(found.get('labels', []))} classes</p>", _cards(found), f"<p>{act}</p>",
        _sheet("Look mislabeled", found.get("mislabeled", []), mislabeled_caption, spec,
               "Most suspicious first. p(given): the out-of-fold probability of the label the photo is filed under "
               "(k-fold heads over several seeds and a neighbour vote on the cached features); suggested: the class "
               "that clears its confident-learning threshold."),
        _twins(found.get("duplicates", []), spec),
        _sheet("Of no class", found.get("outliers", []), outlier_caption, spec,
               "Farthest first: the cosine of the photo's embedding to the nearest class mean, below what "
               "almost every photo reaches (Q1 − 1.5 IQR)."),
        _skipped(found.get("skipped", [])),
        "<section><h2>Settings</h2><details><summary>doctor.json settings</summary><pre>"
        f"{_e(json.dumps({k: found.get(k) for k in ('settings', 'timings', 'data')}, indent=2))}</pre></details></section>",
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>Data doctor</title>'
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n")
