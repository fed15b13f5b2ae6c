"""The web page (`trainer web`) against `edge classify` on the same photos, in one run.

    python benchmarks/bench_web.py RUN_DIR [--variant int8] [--photos data/sample_flowers]
        [--screenshot web.png] [--out bench_web.json]

Builds the folder into a temp dir, serves it from 127.0.0.1, opens it in headless Chromium, runs
every photo through window.edgeTransfer.classifyDetailed (LiteRT.js, one WebAssembly thread) and
the same files through edge.classifier (ai-edge-litert, 1 and 2 threads), then prints: top-1
agreement, max / mean |score difference|, median ms per photo (decode, resize, model) on each
side, the model load time in the page, the folder's size; a screenshot of the page with a few
picked photos. The machine is shared and noisy: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.preprocess import list_images  # noqa: E402
from tests import browser  # noqa: E402
from tests.web_page import compare, edge_run, page_run, serve, wait_for  # noqa: E402
from trainer.ship import web  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "sample_flowers")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    paths = [str(p.relative_to(args.photos)) for p in list_images(args.photos)]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        _, manifest = web.build(args.run_dir, args.variant, site)
        on_disk = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        with serve(site, args.photos) as base, browser.Session(height=1000) as s:
            s.open(base + "index.html")
            ready = json.loads(s.evaluate("edgeTransfer.ready.then(r => JSON.stringify(r))", timeout=120))
            page = page_run(s, paths)
            if args.screenshot:
                s.set_files("#pick", [args.photos / p for p in paths[::34]])
                wait_for(s, f"document.querySelectorAll('.result .cat').length >= {3 * len(paths[::34])}", 120)
                s.screenshot(args.screenshot)
            record = s.record()
        model = site / web.MODEL_FILE
        edges = {t: edge_run(model, args.photos, paths, threads=t) for t in (1, 2)}
    results = {t: compare(page, e) for t, e in edges.items()}
    outside = [u for u in record.requests if not u.startswith((base, "data:", "blob:"))]
    report = {"variant": args.variant, "photos": len(paths), "litertjs": manifest["litertjs"]["version"],
              "page_load_ms": ready["loadMs"], "console_errors": record.errors, "outside_requests": outside,
              "folder_bytes": on_disk, "model_bytes": manifest["model"]["size_bytes"],
              "vs_edge": {f"{t} threads": r for t, r in results.items()}, "screenshot": str(args.screenshot or "")}
    r1 = results[1]
    print(f"{args.variant}, {len(paths)} photos from {args.photos}; LiteRT.js {report['litertjs']} in headless Chromium "
          f"vs edge.classifier (ai-edge-litert)")
    print(f"top-1 agreement {r1['top1_agreement']:.2f} % ({len(r1['disagreements'])} differ: {r1['disagreements']}); "
          f"max |score diff| {r1['max_abs_diff']:.2e}, mean {r1['mean_abs_diff']:.2e}")
    print(f"page, median ms a photo: decode {r1['page_ms']['decode']:.1f}, resize {r1['page_ms']['resize']:.1f}, "
          f"model {r1['page_ms']['inference']:.1f}, total {r1['page_total_ms']:.1f}; model load {ready['loadMs']:.0f} ms")
    for t, r in results.items():
        print(f"edge, {t} thread{'s' if t > 1 else ''}, median ms a photo: preprocess {r['edge_ms']['preprocess']:.1f}, "
              f"model {r['edge_ms']['inference']:.1f}, total {r['edge_total_ms']:.1f}")
    print(f"folder {on_disk / 1e6:.1f} MB ({len(manifest['files']) + 1} files; model {report['model_bytes'] / 1e6:.2f} MB); "
          f"console errors {len(record.errors)}; requests outside 127.0.0.1: {len(outside)}"
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
