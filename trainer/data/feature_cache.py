"""The persistent feature cache: one small file per (photo content, extractor, preprocessing, view).

Shared by every run and dataset under ``EDGE_TRANSFER_CACHE`` (default ~/.cache/edge-transfer),
and by every worker of a cluster when that folder is on shared storage. Keyed by content, not
path, so a renamed or copied photo is a hit and an edited one is a miss. Entries are written
atomically (temp file + rename: concurrent writers of one key write the same bytes) and carry
a CRC32, so a truncated or damaged entry reads as a miss, is deleted, and is computed again.
An unreadable photo is cached too (as its error), so a second run does not decode it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import atomic

MAGIC = b"ETF1"
_HEADER = struct.Struct("<4scII")  # magic, kind (b"F" features | b"E" error), payload bytes, crc32
FEATURES_DIR = "features"  # entries: features/<2 hex>/<62 hex>
EXTRACTORS_DIR = "extractors"  # float32 TFLite copies of the frozen bases (trainer.fit.features)


def cache_root() -> Path:
    root = os.environ.get("EDGE_TRANSFER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "edge-transfer"
    return Path(root).expanduser()


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_key(content: str, extractor: str, spec: dict, view: str) -> str:
    """Everything that decides a feature vector: the photo's bytes, the network that read it
    (name, weights digest, TF version), the preprocessing and the view ("plain", "mirrored")."""
    text = json.dumps([content, extractor, spec, view], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: int
    errors: int
    bytes: int
    extractors: int
    hashes: int = 0  # photo hashes (trainer.data.twins: 8 bytes each), beside the feature entries

    def lines(self) -> list[str]:
        return [f"cache: {self.root}",
                f"feature entries: {self.entries} ({self.errors} unreadable photos), {self.bytes / 1e6:.1f} MB",
                f"photo hashes: {self.hashes}", f"extractors: {self.extractors}"]


@dataclass(frozen=True)
class FeatureCache:
    root: Path

    @classmethod
    def default(cls) -> "FeatureCache":
        return cls(cache_root())

    def path(self, key: str) -> Path:
        return self.root / FEATURES_DIR / key[:2] / key[2:]

    def get(self, key: str) -> np.ndarray | str | None:
        """The cached vector (float32), the photo's decode error (str), or None: absent or damaged
        (a damaged entry is deleted, so the caller computes and writes it again)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        entry = _decode(raw)
        if entry is None:
            path.unlink(missing_ok=True)
        return entry

    def put(self, key: str, value: np.ndarray | str) -> None:
        if isinstance(value, str):
            kind, payload = b"E", value.encode("utf-8")
        else:
            kind, payload = b"F", np.ascontiguousarray(value, np.float32).tobytes()
        raw = _HEADER.pack(MAGIC, kind, len(payload), zlib.crc32(payload)) + payload
        with atomic.atomic_path(self.path(key), suffix="") as tmp:
            tmp.write_bytes(raw)  # no fsync per entry: a lost entry after a power cut is only a miss

    def info(self) -> CacheInfo:
        entries = errors = size = hashes = 0
        for path in _entry_files(self.root / FEATURES_DIR):
            size += path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
            if len(head) == _HEADER.size and head[4:5] == b"F" and _HEADER.unpack(head)[2] == 8:
                hashes += 1  # a pHash: 8 bytes (trainer.data.twins.cached_phash)
                continue
            entries += 1
            errors += head[4:5] == b"E"
        extractors = sum(1 for _ in (self.root / EXTRACTORS_DIR).glob("*.tflite"))
        return CacheInfo(self.root, entries, errors, size, extractors, hashes)

    def clear(self) -> CacheInfo:
        """Delete every feature entry and extractor (nothing else under the root); returns what was there."""
        before = self.info()
        for name in (FEATURES_DIR, EXTRACTORS_DIR):
            shutil.rmtree(self.root / name, ignore_errors=True)
        return before


def _entry_files(folder: Path):
    if folder.is_dir():
        for sub in folder.iterdir():
            if sub.is_dir():
                yield from (p for p in sub.iterdir() if not atomic.is_temp_name(p.name))


def _decode(raw: bytes) -> np.ndarray | str | None:
    if len(raw) < _HEADER.size:
        return None
    magic, kind, length, crc = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size:]
    if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    if kind == b"E":
        return payload.decode("utf-8", "replace")
    if kind != b"F" or length % 4:
        return None
    return np.frombuffer(payload, np.float32)
