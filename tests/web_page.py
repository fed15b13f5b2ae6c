"""The web folder (`trainer web`) in a real browser: serve it from 127.0.0.1, run photos through its
scripting hook, and compare with the edge runtime on the same files. Used by tests/test_web.py and
benchmarks/bench_web.py (standard library, numpy and edge only)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.classifier import Classifier, ClassifierOptions
from tests.paths import REPO

PHOTOS_URL = "/photos/"  # the photo folder, served beside the page by :func:`serve`


def ensure_runtime() -> None:
    """LiteRT.js in web/node_modules, installed by the same step `make web` runs (npm ci)."""
    result = subprocess.run(["make", "-s", "web-runtime"], cwd=REPO, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"make web-runtime failed: {(result.stderr or result.stdout)[-1500:]}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    site: Path
    photos: Path | None

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        if self.photos is not None and path.startswith(PHOTOS_URL):
            return str(self.photos / path[len(PHOTOS_URL):])
        return str(self.site / path.lstrip("/"))

    def log_message(self, *args) -> None:  # quiet
        pass


@contextlib.contextmanager
def serve(site: Path, photos: Path | None = None) -> Iterator[str]:
    """An http.server thread on 127.0.0.1 serving ``site`` (and ``photos`` under /photos/); yields its URL."""
    handler = type("Handler", (_Handler,), {"site": Path(site), "photos": None if photos is None else Path(photos)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Run:
    """Photos through the page (or through edge): scores in class order and times per photo."""

    paths: list[str]
    scores: np.ndarray  # (N, C)
    ms: list[dict] = field(default_factory=list)  # per photo: {"decode", "resize", "inference"} or edge's
    pixels: list[np.ndarray] | None = None

    @property
    def top1(self) -> np.ndarray:
        return self.scores.argmax(1)


CLASSIFY_ALL = """(async (paths, withPixels) => {
  await edgeTransfer.ready;
  const out = [];
  for (const p of paths) {
    const r = await edgeTransfer.classifyDetailed(p);
    let px = null;
    if (withPixels) { let s = ""; for (const b of r.pixels) s += String.fromCharCode(b); px = btoa(s); }
    out.push({scores: r.scores, ms: r.ms, size: [r.width, r.height], pixels: px});
  }
  return JSON.stringify(out);
})"""


def page_run(session, rel_paths: list[str], pixels: bool = False, size: tuple[int, int] = (224, 224)) -> Run:
    """Classify photos (paths relative to the served photo folder) in the open page, in order."""
    urls = [PHOTOS_URL + p for p in rel_paths]
    raw = json.loads(session.evaluate(f"{CLASSIFY_ALL}({json.dumps(urls)}, {json.dumps(pixels)})",
                                      timeout=60 + 2 * len(urls)))
    px = None
    if pixels:
        px = [np.frombuffer(base64.b64decode(r["pixels"]), np.uint8).reshape(*size, 3) for r in raw]
    return Run(list(rel_paths), np.array([r["scores"] for r in raw], np.float32), [r["ms"] for r in raw], px)


def edge_run(model: Path, folder: Path, rel_paths: list[str], threads: int | None = 1) -> Run:
    """The same photos through edge.classifier (what `python -m edge classify` runs), in order."""
    clf = Classifier(ClassifierOptions(model, num_threads=threads, top_k=0))
    scores, ms = [], []
    for result in clf.classify_paths([folder / p for p in rel_paths]):
        assert result.error is None, result
        row = np.zeros(clf.num_classes, np.float32)
        for c in result.categories:
            row[c.index] = c.score
        scores.append(row)
        ms.append({"preprocess": result.preprocess_ms, "inference": result.inference_ms})
    return Run(list(rel_paths), np.array(scores), ms)


def compare(page: Run, edge: Run) -> dict:
    """Top-1 agreement (%), max and mean |score difference|, and median times per photo."""
    diff = np.abs(page.scores - edge.scores)
    med = lambda runs, key: float(np.median([m[key] for m in runs.ms]))  # noqa: E731
    return {
        "n": len(page.paths),
        "top1_agreement": 100.0 * float((page.top1 == edge.top1).mean()),
        "disagreements": [p for p, a, b in zip(page.paths, page.top1, edge.top1) if a != b],
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "page_ms": {k: med(page, k) for k in ("decode", "resize", "inference")},
        "page_total_ms": float(np.median([sum(m.values()) for m in page.ms])),
        "edge_ms": {k: med(edge, k) for k in ("preprocess", "inference")},
        "edge_total_ms": float(np.median([sum(m.values()) for m in edge.ms])),
    }


def wait_for(session, expression: str, timeout: float = 60) -> object:
    """Poll a page expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = session.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} stayed falsy for {timeout} s")
        time.sleep(0.2)
