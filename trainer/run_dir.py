"""The run directory: where each artifact lives, what a run is, which parity results are current,
and which files belong to the model.keras beside them.

Everything that reads or writes RUN_DIR goes through here (no module rebuilds a path or rereads
labels on its own). Below every command: it imports no TensorFlow and no other trainer layer
except :mod:`trainer.data.dataset` (splits) and :mod:`trainer.atomic`. Where `train` writes (a
new runs/<name>, or a run replaced whole) is :mod:`trainer.run_dir` too: :class:`Output`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
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
RUN_MARKERS = (MODEL, CONFIG, REPORT, LABELS)  # any of these (or a model_*.tflite): the folder holds a run
VARIANT_GLOB = "model_*.tflite"
# made by convert and bench for one model.keras (parity.json last: it is what says which one)
DERIVED = (MODEL_CARD_MD, MODEL_CARD_JSON, BENCH_MD, BENCH_JSON, PARITY)
RUNS, LAST, LATEST, DEFAULT_NAME = Path("runs"), "LAST", "latest", "train"  # `train` without --out: runs/train2
OK, STALE, MISSING = "ok", "stale", "missing"  # `trainer check`, one per file
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

    def variant_files(self) -> list[Path]:
        """Every model_<mode>.tflite here, whatever the mode."""
        return sorted(self.path.glob(VARIANT_GLOB)) if self.path.is_dir() else []

    def variant(self, mode: str) -> Path:
        return self.path / variant_file(mode)

    @cached_property
    def labels(self) -> list[str]:
        return (self.path / LABELS).read_text(encoding="utf-8").splitlines()

    @cached_property
    def open_set(self) -> dict | None:
        """report.json's none-of-these class (label, threshold, its measurement), None without one."""
        value = self.read(REPORT).get("open_set")
        return value if isinstance(value, dict) and isinstance(value.get("label"), str) else None

    @property
    def output_labels(self) -> list[str]:
        """The model's outputs in order: the classes, then the none-of-these label when it has one."""
        return self.labels + ([self.open_set["label"]] if self.open_set else [])

    def open_set_metadata(self) -> dict | None:
        """What a .tflite carries about its none-of-these class (open_set.json in its metadata)."""
        o = self.open_set
        if o is None:
            return None
        return {"label": o["label"], "threshold": o.get("threshold"), "keep": o.get("keep"),
                "score": o.get("score"), "prototypes_per_class": o.get("prototypes_per_class")}

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

    def refuse_foreign_parity(self) -> None:
        """Raise DataError (one line) when parity.json, and so its variants, were made for another
        model.keras: no consumer reports or ships them as this model's."""
        if self.parity().foreign():
            raise DataError(f"{self / PARITY} and its variants were made for another model.keras (sha256 differs): "
                            f"run `python -m trainer convert {self.path}` again")

    def clear_foreign(self) -> list[str]:
        """Delete every variant and what convert and bench derived from them when parity.json says
        they were made for another model.keras (a newer model.keras must not sit beside an older
        model's files); parity.json goes last, so a kill meanwhile leaves the evidence. Returns the
        names deleted."""
        if not self.parity().foreign():
            return []
        doomed = self.variant_files() + [self / name for name in DERIVED if (self / name).is_file()]
        for path in doomed:
            path.unlink(missing_ok=True)
        return [p.name for p in doomed]

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

    def foreign(self) -> bool:
        """Made for a model.keras other than the one here (no model.keras: nothing to tell)."""
        return self.exists and (self.run / MODEL).is_file() and not self.for_current_model()

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


# --------------------------------------------------------------------------- does it belong?
@dataclass(frozen=True)
class FileState:
    """One line of `trainer check`: a file, whether it belongs to the model.keras beside it, why."""

    name: str
    state: str  # OK | STALE | MISSING
    note: str = ""
    required: bool = False

    @property
    def bad(self) -> bool:
        return self.state == STALE or (self.state == MISSING and self.required)


def _derived_state(run: RunDir, name: str, parity_ok: bool) -> FileState:
    """The model card and bench files were built from parity.json; bench.json also names its model."""
    if not (run / name).is_file():
        return FileState(name, MISSING, "not benchmarked" if name in (BENCH_MD, BENCH_JSON) else "not converted")
    keras_sha = (run.read(BENCH_JSON).get("keras") or {}).get("sha256") if name in (BENCH_MD, BENCH_JSON) else None
    if keras_sha and (run / MODEL).is_file():
        ok = keras_sha == run.model_digest
        return FileState(name, OK if ok else STALE, "" if ok else "benchmarked another model.keras")
    return FileState(name, OK) if parity_ok else FileState(name, STALE, "made from a parity.json that is stale or gone")


def check_files(run: RunDir, modes=()) -> list[FileState]:
    """Every file of the run against its model.keras: the trained ones must be there; a variant
    belongs when parity.json checked this very file (sha256) for this model.keras; parity.json
    when it names this model.keras; the model card and bench files follow them. ``modes``: the
    variants to list even when absent."""
    states = [FileState(n, OK if (run / n).is_file() else MISSING, required=True) for n in (*TRAINED, REPORT)]
    if states[0].state == OK:
        states[0] = FileState(MODEL, OK, f"sha256 {run.model_digest[:16]}", required=True)
    states.append(FileState(REPORT_HTML, OK if (run / REPORT_HTML).is_file() else MISSING))
    parity = run.parity()
    present = {p.name for p in run.variant_files()}
    for name in dict.fromkeys([variant_file(m) for m in modes] + sorted(present)):
        mode = name[len("model_"):-len(".tflite")]
        why = parity.staleness(mode) if name in present else None
        if name not in present:
            states.append(FileState(name, MISSING, "not converted"))
        elif why:
            states.append(FileState(name, STALE, why if parity.exists else "no parity.json: which model it was "
                                                                           "made for is unknown"))
        else:
            states.append(FileState(name, OK, "parity " + ("passed" if parity.entry(mode).get("passed") else "FAILED")))
    parity_ok = parity.for_current_model()
    if not (run / PARITY).is_file():
        states.append(FileState(PARITY, MISSING, "not converted"))
    else:
        states.append(FileState(PARITY, OK) if parity_ok else FileState(PARITY, STALE, "made for another model.keras"))
    return states + [_derived_state(run, n, parity_ok) for n in DERIVED if n != PARITY]


# --------------------------------------------------------------------------- where train writes
def holds_run(path: Path) -> list[str]:
    """The files that make ``path`` a run already; none: a new or empty folder, safe to train into."""
    if not Path(path).is_dir():
        return []
    return [n for n in RUN_MARKERS if (Path(path) / n).exists()] + [p.name for p in RunDir(Path(path)).variant_files()]


def next_run_dir(root: Path = RUNS, name: str = DEFAULT_NAME) -> Path:
    """Create root/name, else root/name2, name3, ... (the first free one; mkdir is the lock, so two
    trainings started together get two folders) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    for i in itertools.count(1):
        path = root / (name if i == 1 else f"{name}{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def record_last(run: Path, root: Path = RUNS) -> None:
    """root/LAST names the run (`make tflite`, `android`, `bench` read it); root/latest links to it
    (the README's paths) unless latest is a real folder an older version wrote there."""
    atomic.write_text(root / LAST, f"{run}\n")
    link, tmp = root / LATEST, root / f".{LATEST}.{os.getpid()}.link"
    if link.exists() and not link.is_symlink():
        return
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.name if run.parent == root else run.resolve(), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # no symlinks here: runs/LAST is the record
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Output:
    """Where `train` writes. ``final`` is the run folder once done. A run already there is replaced
    whole (``replace``): the new one is built in a hidden sibling (``.DIR.new-XXXXXXXX``) and
    swapped in at the end, so DIR never holds files of two models and a kill leaves one of them
    complete. ``named``: train chose runs/<name> itself and records it as the last run."""

    final: Path
    replace: bool = False
    named: bool = False

    @classmethod
    def choose(cls, out: Path | None, overwrite: bool = False, workers: int = 1, chief: bool = True,
               log=print) -> "Output":
        """Check --out before TensorFlow loads (one-line DataError); the chief first undoes what a
        killed replacement left. No --out: a new runs/<name>, made now."""
        if out is None:
            if workers > 1:
                raise DataError("several workers (TF_CONFIG) write one run: give every worker the same --out DIR")
            return cls(next_run_dir(), named=True)
        out = Path(out).resolve() if Path(out).is_symlink() else Path(out)  # a link: replace the run it names
        if chief:
            for line in atomic.recover(out):
                log(line)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out} is a file: give a folder")
        found = holds_run(out)
        if found and not overwrite:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise DataError(f"--out {out} already holds a run ({shown}): pass --overwrite to replace it whole, "
                            "or give another --out")
        return cls(out, replace=bool(found))

    def start(self) -> Path:
        """The chief's folder to write into: a fresh hidden sibling when a run is replaced, else final."""
        if self.replace:
            return atomic.staging_dir(self.final)
        self.final.mkdir(parents=True, exist_ok=True)
        RunDir(self.final).clean_stale_temps()
        return self.final

    def finish(self, build: Path) -> None:
        """The new run takes the final name (renames only); a named run becomes runs/LAST."""
        if Path(build) != self.final:
            atomic.swap_in(build, self.final)
        if self.named:
            record_last(self.final)

    def abandon(self) -> None:
        """A run that failed before writing anything leaves no empty runs/<name> behind."""
        if self.named:
            try:
                self.final.rmdir()
            except OSError:  # not empty (or gone): keep what it wrote
                pass
