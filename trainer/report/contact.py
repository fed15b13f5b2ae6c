"""Contact sheets: thumbnails of photos with a caption, as data URIs (pages that open offline),
and report.html's "Check your data" section (report.json's ``data_check``, written by `train`).
`trainer doctor`'s page (trainer.doctor.page) is built from the same figures.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edge.preprocess import PreprocessSpec, prepare

THUMB_PX = 96


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def thumbnail(path: Path, spec: PreprocessSpec) -> str | None:
    """data: URI of a ~96 px JPEG of the photo as the model saw it, or None if it is unreadable."""
    from PIL import Image

    try:
        pixels = prepare(path, spec)
    except Exception:  # gone, unreadable or not an image any more: the page shows a placeholder
        return None
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def figure(path: Path, shown: str, caption: str, spec: PreprocessSpec) -> str:
    """One photo: its thumbnail (or a placeholder), ``caption`` (HTML), then ``shown`` (its path)."""
    uri = thumbnail(path, spec)
    pic = (f'<img alt="{_e(shown)}" src="{uri}" width={THUMB_PX} height={THUMB_PX}>' if uri
           else '<div class="missing">photo not found</div>')
    return (f'<figure title="{_e(path)}">{pic}<figcaption>{caption}<br>'
            f'<span class=path>{_e(shown)}</span></figcaption></figure>')


def mislabeled_caption(item: dict) -> str:
    return (f'given <b>{_e(item["label"])}</b><br><span class=p>suggested <b>{_e(item["suggested"])}</b></span><br>'
            f'<span class=c>p(given) {item["score"]:.2g}</span>')


def outlier_caption(item: dict) -> str:
    return (f'given <b>{_e(item["label"])}</b><br><span class=p>nearest <b>{_e(item["nearest"])}</b></span><br>'
            f'<span class=c>cosine {item["score"]:.2f}</span>')


def group_html(root: Path, group: dict, spec: PreprocessSpec, limit: int = 6, shown=None) -> str:
    """A twin group: its photos side by side, what kind of twins, which classes (and splits)."""
    where = f' · {", ".join(group["split"])}' if group.get("split") else ""
    across = len(group.get("classes", [])) > 1
    head = (f'<p class="{"fail" if across else "muted"}">{_e(group["kind"])} twins, '
            f'{len(group["paths"])} photos, {"classes " if across else "class "}{_e(", ".join(group["classes"]))}'
            f'{_e(where)}</p>')
    figures = [figure(root / p, (shown or (lambda q: q))(p), f'<b>{_e(Path(p).parent.name)}</b>', spec)
               for p in group["paths"][:limit]]
    more = f'<p class=muted>and {len(group["paths"]) - limit} more</p>' if len(group["paths"]) > limit else ""
    return f'<div class=twins>{head}<div class=grid>{"".join(figures)}</div>{more}</div>'


def data_check_section(check: dict | None, root: Path, spec: PreprocessSpec) -> str:
    """report.html's "Check your data": counts, the top photos of each finding, how to see all."""
    if not check:
        return ""
    mis, dup, far = check.get("mislabeled", {}), check.get("duplicates", {}), check.get("outliers", {})
    cards = [(mis.get("count", 0), "look mislabeled"), (dup.get("groups", 0), "twin groups"),
             (far.get("count", 0), "of no class"), (check.get("skipped", 0), "unreadable"),
             (check.get("excluded", 0), "left out (--exclude)")]
    out = ["<section><h2>Check your data</h2>",
           f"<p class=muted>On the run's features, no extra backbone pass: {check.get('photos', 0)} photos. "
           "Out-of-fold probabilities (5-fold heads and a neighbour vote) point at labels that look wrong; "
           "byte-identical and near-identical photos are twins; photos far from every class mean are of no "
           "class.</p><div class=cards>"
           + "".join(f"<div class=card><b>{v}</b><span>{k}</span></div>" for v, k in cards) + "</div>",
           f"<p>Twin groups are kept in one split each: {dup.get('groups', 0)} groups ({dup.get('exact', 0)} exact, "
           f"{dup.get('near', 0)} near, {dup.get('across_classes', 0)} filed under two classes); "
           f"{dup.get('rejoined', 0)} of them straddled the split and were brought together.</p>"
           if dup.get("groups") else "<p>No twins: no two photos are byte-identical or near-identical.</p>"]
    if mis.get("top"):
        out.append(f"<h3>Look mislabeled (top {len(mis['top'])} of {mis['count']})</h3><div class=grid>"
                   + "".join(figure(root / m["path"], m["path"], mislabeled_caption(m), spec) for m in mis["top"])
                   + "</div>")
    if dup.get("top"):
        out.append(f"<h3>Twins (first {len(dup['top'])} of {dup['groups']} groups)</h3>"
                   + "".join(group_html(root, g, spec, limit=4) for g in dup["top"]))
    if far.get("top"):
        out.append(f"<h3>Of no class (top {len(far['top'])} of {far['count']})</h3><div class=grid>"
                   + "".join(figure(root / m["path"], m["path"], outlier_caption(m), spec) for m in far["top"])
                   + "</div>")
    out.append(f"<p>All of it, with a contact sheet per finding: <code>{_e(check.get('doctor', 'python -m trainer doctor DATA'))}"
               "</code> (doctor.html, doctor.json); leave photos out of the next run with "
               "<code>train --exclude doctor.json:mislabeled,duplicates</code>. Nothing on disk is moved or deleted.</p>")
    return "".join(out) + "</section>"
