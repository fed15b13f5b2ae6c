"""`train --exclude`: photos to leave out, from a list of paths or from a doctor.json.

``FILE``: one path a line (blank lines and ``#`` comments ignored), relative to the current
folder or to the data folder, or absolute. ``doctor.json:mislabeled,duplicates``: the findings
of `trainer doctor` to act on (``mislabeled``, ``duplicates``, ``outliers``, ``skipped``; a bare
doctor.json means ``mislabeled,duplicates``). From each duplicate group every photo but the first
is left out, and the whole group when its photos are filed under different classes (which label
is right is not known). The paths are resolved here, before training, to paths relative to the
data folder: config.json records those (so ``--config`` repeats the run exactly). Files are only
left out of the run: nothing on disk is moved, renamed or deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.data.dataset import DataError, Sample

FINDINGS = ("mislabeled", "duplicates", "outliers", "skipped")
DEFAULT_FINDINGS = ("mislabeled", "duplicates")


def _split_spec(spec: str) -> tuple[Path, tuple[str, ...] | None]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail and all(name.strip() in FINDINGS for name in tail.split(",")):
        return Path(head), tuple(name.strip() for name in tail.split(","))
    return Path(spec), None


def _from_doctor(doc: dict, findings: tuple[str, ...], source: Path) -> list[str]:
    base = Path(doc.get("cwd") or source.parent)
    paths: list[str] = []
    for name in findings:
        for item in doc.get(name, []):
            if name == "duplicates":
                members = list(item.get("paths", []))
                paths += members if len(set(item.get("classes", []))) > 1 else members[1:]
            else:
                paths.append(item["path"])
    return [str(p if Path(p).is_absolute() else base / p) for p in paths]


def read(spec: str) -> list[str]:
    """The paths a ``--exclude`` value names, as written (relative ones made absolute against
    the folder they were written in: the current one, or doctor.json's)."""
    path, findings = _split_spec(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"--exclude {spec}: cannot read {path}: {exc.strerror or exc}") from None
    doc = None
    if findings is not None or path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError:
            raise DataError(f"--exclude {spec}: {path} is not JSON (give a doctor.json, or a list of paths "
                            "one per line)") from None
        if not isinstance(doc, dict) or not any(k in doc for k in FINDINGS):
            raise DataError(f"--exclude {spec}: {path} is not a doctor.json (no {', '.join(FINDINGS)})")
        return _from_doctor(doc, findings or DEFAULT_FINDINGS, path)
    lines = [line.strip() for line in text.splitlines()]
    return [str(Path(line).absolute()) if not Path(line).is_absolute() and Path(line).exists() else line
            for line in lines if line and not line.startswith("#")]


def _key(path: Path) -> Path:
    """The folder resolved, the file name as is (a symlinked photo stays itself)."""
    return path.parent.resolve() / path.name


def relative(root: str | Path, paths: list[str]) -> tuple[list[str], list[str]]:
    """(paths relative to the data folder ``root``, sorted and unique; the ones not in it)."""
    root = Path(root).resolve()
    inside, outside = set(), []
    for p in paths:
        candidates = [Path(p)] if Path(p).is_absolute() else [Path(p).absolute(), root / p]
        for c in candidates:
            try:
                inside.add(_key(c).relative_to(root).as_posix())
                break
            except ValueError:
                continue
        else:
            outside.append(p)
    return sorted(inside), outside


def resolve(spec: str, root: str | Path) -> tuple[list[str], str | None]:
    """(the paths ``spec`` names relative to the data folder ``root``, a warning line or None)."""
    named = read(spec)
    inside, outside = relative(root, named)
    warning = (f"warning: --exclude {spec}: {len(outside)} of {len(named)} paths are not under {root} "
               f"(e.g. {outside[0]}): not left out") if outside else None
    return inside, warning


def apply(candidates: list[Sample], exclude) -> tuple[list[Sample], list[str]]:
    """The candidates not named in ``exclude`` (paths relative to the data folder), and the
    named ones that were there (what the run left out)."""
    doomed = set(exclude)
    kept = [s for s in candidates if s.path not in doomed]
    return kept, sorted(doomed & {s.path for s in candidates})
