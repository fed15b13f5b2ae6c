"""The run directory: where each artifact lives, what a run is, and which parity results are current.

Everything that reads or writes RUN_DIR goes through here (no module rebuilds a path or rereads
labels on its own). Below every command: it imports no TensorFlow and no other trainer layer
except :mod:`trainer.data.dataset` (splits) and :mod:`trainer.atomic`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edge.preprocess import PreprocessSpec
from trainer import atomic
from trainer.data.dataset import DataError, Splits, read_splits

MODEL = "model.keras"
LABELS = "labels.txt"
CONFIG = "config.json"
SPLITS = "splits.json"
REPORT = "report.json"
PARITY = "parity.json"
MODEL_CARD_MD, MODEL_CARD_JSON = "model_card.md", "model_card.json"
BENCH_MD, BENCH_JSON = "bench.md", "bench.json"
REPORT_HTML = "report.html"
TRAINED = (MODEL, LABELS, CONFIG, SPLITS)
STALE_TEMP_AGE_S = 60.0  # a temp file this old was left by a killed run (live writes take seconds)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (optional artifacts)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def variant_file(mode: str) -> str:
    return f"model_{mode}.tflite"


@dataclass(frozen=True)
class RunDir:
    """A training run directory. ``RunDir.open(path)`` checks it is one; the rest is read lazily."""

    path: Path

    @classmethod
    def open(cls, path: str | Path, require: tuple[str, ...] = TRAINED) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path} is not a directory: give a training run directory")
        for name in require:
            if not (path / name).is_file():
                raise DataError(f"{path / name} not found: is {path} a training run directory?")
        return cls(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def variant(self, mode: str) -> Path:
        return self.path / variant_file(mode)

    @cached_property
    def labels(self) -> list[str]:
        return (self.path / LABELS).read_text(encoding="utf-8").splitlines()

    @cached_property
    def config(self) -> dict:
        return json.loads((self.path / CONFIG).read_text())

    @cached_property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.config["preprocess"])

    @cached_property
    def splits(self) -> Splits:
        return read_splits(self.path)

    @cached_property
    def model_digest(self) -> str:
        return sha256_file(self.path / MODEL)

    def read(self, name: str) -> dict:
        return read_json(self.path / name)

    def parity(self) -> "ParityFile":
        return ParityFile(self.read(PARITY), self)

    def clean_stale_temps(self, older_than_s: float = STALE_TEMP_AGE_S) -> list[Path]:
        """Delete the hidden temp files (``.name.<random>``) a killed run left behind."""
        removed = []
        if not self.path.is_dir():
            return removed
        now = time.time()
        for p in self.path.iterdir():
            if atomic.is_temp_name(p.name) and p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed


@dataclass(frozen=True)
class ParityFile:
    """parity.json as read, and which of its entries still describe the files on disk."""

    data: dict
    run: RunDir

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def entry(self, mode: str) -> dict | None:
        return (self.data.get("variants") or {}).get(mode)

    def for_current_model(self) -> bool:
        """Was it computed for the model.keras now in the run directory?"""
        keras_sha = self.data.get("keras_sha256")
        return bool(keras_sha) and (self.run / MODEL).is_file() and keras_sha == self.run.model_digest

    def staleness(self, mode: str, file_sha: str | None = None) -> str | None:
        """None when the entry for ``mode`` describes the file now on disk (same sha256) and the
        current model.keras; else why not, in a few words."""
        entry = self.entry(mode)
        if not entry:
            return "no parity"
        path = self.run.variant(mode)
        if not path.is_file():
            return "file missing"
        if entry.get("sha256") != (file_sha or sha256_file(path)):
            return "parity stale (file changed)"
        if not self.for_current_model():
            return "parity stale (model.keras changed)"
        return None

    def current(self, mode: str, file_sha: str | None = None) -> dict | None:
        return None if self.staleness(mode, file_sha) else self.entry(mode)
