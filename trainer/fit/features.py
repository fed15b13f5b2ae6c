"""Stage-1 features: the frozen base runs once per photo, streaming, through the feature cache.

Photos go through in chunks (read, hash, look up, decode only the misses, extract), so memory
does not grow with the dataset; the vectors land in the persistent cache (trainer.data.feature_cache)
and in an (N, D) float32 table on disk for the run (trainer.data.rows). The base is converted once to a float32
TFLite file (kept in the cache, keyed by its weights) and run with XNNPACK on every core: 4.6-6.7x
the images/s of Keras `predict` on a 2-core CPU (benchmarks/bench_train.py). Falls back to Keras
when a base cannot convert.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.preprocess import PreprocessSpec, prepare
from trainer import atomic
from trainer.data.feature_cache import EXTRACTORS_DIR, FeatureCache, content_digest, entry_key
from trainer.data.rows import Rows
from trainer.data.twins import cached_phash
from trainer.export.tflite import ConversionError, run_converter

CHUNK = 64  # photos read and decoded ahead while the previous chunk runs through the base
VIEWS = ("plain", "mirrored")


class Extractor:
    """The frozen base as a function: uint8 images (n, H, W, 3) -> pooled features (n, D)."""

    def __init__(self, feature_model, cache: FeatureCache, threads: int | None = None):
        import tensorflow as tf

        from trainer.model.backbones import weights_digest

        self.model = feature_model
        self.id = f"{feature_model.name}-{weights_digest(feature_model)}-tf{tf.__version__}"
        self.path = cache.root / EXTRACTORS_DIR / f"{self.id}.tflite"
        self.threads = threads or os.cpu_count() or 1
        self._run: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._run is None:  # converted or loaded on the first miss only: a warm run never needs it
            self._run = self._tflite() or self._keras
        return self._run(images)

    def _keras(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(images.astype(np.float32), batch_size=32, verbose=0), np.float32)

    def _tflite(self):
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        if not self.path.exists():
            try:
                atomic.write_bytes(self.path, run_converter(tf.lite.TFLiteConverter.from_keras_model(self.model)))
            except ConversionError as exc:  # a base TFLite cannot express: Keras predict still works
                print(f"note: feature extractor did not convert to TFLite ({type(exc).__name__}); using Keras predict")
                return None
        interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]

        def run(images: np.ndarray) -> np.ndarray:
            rows = []
            for image in images:
                interpreter.set_tensor(inp, image[None].astype(np.float32))
                interpreter.invoke()
                rows.append(interpreter.get_tensor(out)[0].copy())
            return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

        return run


@dataclass(frozen=True)
class FeatureTable:
    """Features of a list of photos in its order: row i of ``rows`` (a table on disk) is valid
    where ``ok[i]``; ``errors`` maps row -> why that photo could not be read."""

    rows: Rows | None
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    hits: int = 0
    digests: list[str | None] = field(default_factory=list)  # sha256 of each photo's bytes (None: unread)
    phashes: np.ndarray | None = None  # uint64 pHash per photo (trainer.data.twins), with ``fingerprints``
    phash_ok: np.ndarray | None = None  # where ``phashes`` holds one

    def array(self) -> np.ndarray:
        """Every row in memory: for small tables (tests) only; stages use ``rows`` / ``gather``."""
        return self.rows.read_all() if self.rows is not None else np.zeros((len(self.ok), 0), np.float32)

    def gather(self, rows: np.ndarray, out: Path) -> Rows:
        return self.rows.gather(rows, out)


@dataclass
class _Chunk:
    rows: list[int]
    keys: list[str]
    found: list[np.ndarray | str | None]
    images: dict[int, np.ndarray | str]  # position in chunk -> decoded image, or its error
    digests: list[str | None] = field(default_factory=list)
    phashes: list[int | str | None] = field(default_factory=list)


def _read(paths: Sequence[Path], rows: list[int], spec: PreprocessSpec, cache: FeatureCache, extractor_id: str,
          view: str, pool: ThreadPoolExecutor, fingerprints: bool = False) -> _Chunk:
    """Read and hash a chunk's files, look each up, decode only the misses (in the pool); with
    ``fingerprints`` also each photo's pHash (cached by content, like the features)."""
    def one(row: int):
        try:
            raw = Path(paths[row]).read_bytes()
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200], None, None, None
        digest = content_digest(raw)
        key = entry_key(digest, extractor_id, spec.to_dict(), view)
        found = cache.get(key)
        image = None
        if found is None:
            try:
                image = prepare(io.BytesIO(raw), spec)
            except Exception as exc:  # any decoder failure means "skip this photo", reported by reason
                image = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return key, found, image, digest, cached_phash(raw, digest, cache) if fingerprints else None

    results = list(pool.map(one, rows))
    chunk = _Chunk(rows, [], [], {})
    for i, (key, found, image, digest, phash) in enumerate(results):
        chunk.keys.append(key)
        chunk.digests.append(digest)
        chunk.phashes.append(phash)
        chunk.found.append(found if key is not None else image)  # an unreadable file: its error
        if key is not None and found is None:
            chunk.images[i] = image
    return chunk


def extract(paths: Sequence[Path], spec: PreprocessSpec, extractor: Extractor, cache: FeatureCache,
            out: Path | None, view: str = "plain", rows: Sequence[int] | None = None,
            progress: str | None = "features", fingerprints: bool = False) -> FeatureTable:
    """Features of ``paths[rows]`` (default: all) through the cache; written to the table ``out``
    (None: only fill the cache, e.g. a worker's share). Misses are computed and cached. Every
    photo's sha256 comes back in ``digests``; with ``fingerprints`` its pHash in ``phashes``."""
    from tqdm.auto import tqdm

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    rows = list(range(len(paths))) if rows is None else list(rows)
    ok = np.zeros(len(paths), bool)
    errors: dict[int, str] = {}
    digests: list[str | None] = [None] * len(paths)
    phashes = np.zeros(len(paths), np.uint64) if fingerprints else None
    phash_ok = np.zeros(len(paths), bool) if fingerprints else None
    table = None
    hits = 0
    bar = tqdm(total=len(rows), desc=progress, unit="img", disable=progress is None, mininterval=0.5)
    starts = range(0, len(rows), CHUNK)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool, ThreadPoolExecutor(1) as ahead:
        read = lambda s: _read(paths, rows[s:s + CHUNK], spec, cache, extractor.id, view, pool,  # noqa: E731
                               fingerprints)
        pending = ahead.submit(read, starts[0]) if len(rows) else None
        for k in range(len(starts)):
            chunk = pending.result()
            pending = ahead.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
            todo = [i for i, image in chunk.images.items() if not isinstance(image, str)]
            if todo:
                images = np.stack([chunk.images[i] for i in todo])
                vectors = extractor(np.ascontiguousarray(images[:, :, ::-1]) if view == "mirrored" else images)
                for i, vector in zip(todo, vectors):
                    chunk.found[i] = vector
            for i, image in chunk.images.items():
                if isinstance(image, str):
                    chunk.found[i] = image
                cache.put(chunk.keys[i], chunk.found[i])
            hits += len(chunk.rows) - len(chunk.images)
            good = []
            for row, value, digest, phash in zip(chunk.rows, chunk.found, chunk.digests, chunk.phashes):
                digests[row] = digest
                if isinstance(phash, int):
                    phashes[row], phash_ok[row] = phash, True
                if isinstance(value, str):
                    errors[row] = value
                else:
                    ok[row] = True
                    good.append((row, value))
            if out is not None and good:
                if table is None:
                    table = Rows.create(out, len(paths), len(good[0][1]))
                _write(table, good)
            bar.update(len(chunk.rows))
            bar.set_postfix(cached=hits, refresh=False)
    bar.close()
    return FeatureTable(table, ok, errors, hits, digests, phashes, phash_ok)


def _write(table: Rows, good: list[tuple[int, np.ndarray]]) -> None:
    """A chunk's vectors at their rows: one write when the rows are consecutive (the usual case)."""
    rows = [row for row, _ in good]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        table.write(rows[0], np.stack([v for _, v in good]))
    else:
        for row, value in good:
            table.write(row, value[None])
