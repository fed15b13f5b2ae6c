"""The data doctor on tf_flowers/train, in one run (ratios are what to compare: the machine is shared).

  timing       a cold default `trainer train` (fresh feature cache), `trainer doctor` cold (its own
               fresh cache) and warm (on the cache that train filled): wall times and their ratios
  top 20       the untouched folder: the 20 most suspicious photos (given / suggested label), the twin
               groups; the contact sheet is the cold doctor run's doctor.html
  flips        40 labels flipped on purpose (a photo linked into another class folder of a symlink
               copy of the tree), 3 draws: how many land in the lowest 100 out-of-sample
               probabilities of the doctor (k-fold heads over 3 seeds + neighbour vote) and of one
               5-fold linear probe on the raw features (the issue's baseline, sklearn's C=1 L2)
  copies       10 photos copied resized to 85 % and re-encoded at JPEG quality 75 into the folder:
               `trainer doctor` (the CLI): how many copies are found as a twin of their original,
               and the twin groups that are neither a copy nor one of the folder's own groups

Writes benchmarks/results/bench_doctor.json and the evidence text (--evidence).
Usage: python benchmarks/bench_doctor.py [--data DIR] [--work DIR] [--evidence FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.paths import SHARED_DATA  # noqa: E402

FLIPS, DRAWS, TOP, COPIES = 40, 3, 100, 10


def cli(args: list[str], cache: Path, log: Path) -> float:
    """Wall seconds of `python -m trainer ARGS` with its own feature cache; fails loudly."""
    env = {**os.environ, "EDGE_TRANSFER_CACHE": str(cache)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"trainer {args[0]} failed (exit {proc.returncode}): see {log}")
    return time.perf_counter() - t0


def link_tree(src: Path, dst: Path, moves: dict[str, str] | None = None) -> None:
    """dst mirrors src with one symlink per photo; ``moves``: rel path -> class folder to file it under."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        target = dst / (f"{moves[rel]}/{path.name}" if moves and rel in moves else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, target)


def features_of(root: Path, cache: Path):
    """(labels, photos, features of the readable ones, their labels) through the cache (all hits)."""
    os.environ["EDGE_TRANSFER_CACHE"] = str(cache)
    from edge.preprocess import PreprocessSpec
    from trainer.config import BackboneConfig
    from trainer.data.feature_cache import FeatureCache
    from trainer.doctor import examine
    from trainer.fit import features
    from trainer.model.backbones import build_backbone, resolved

    labels, photos = examine.scan([str(root)])
    store = FeatureCache.default()
    extractor = features.Extractor(build_backbone(resolved(BackboneConfig())).feature_model(), store)
    with tempfile.TemporaryDirectory() as work:
        table = features.extract([Path(p.path) for p in photos], PreprocessSpec(), extractor, store,
                                 Path(work) / "f.f32", progress=None)
        rows = np.flatnonzero(table.ok)
        x = table.rows.read_all()[rows]
    return labels, [photos[r] for r in rows], x, np.array([photos[r].label for r in rows], np.int64), table.hits


def baseline_probe(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """One 5-fold linear probe on the raw features: out-of-fold probabilities (L2 as sklearn's C=1)."""
    from trainer.fit import checks

    fold = checks.folds_of(y, n_classes, 5, 0)
    probs = np.zeros((len(y), n_classes))
    with checks.one_blas_thread():
        for k in range(5):
            held = fold == k
            kernel, bias = checks.fit_softmax(x[~held], y[~held], n_classes, l2=0.5 / np.sum(~held), max_iter=500)
            probs[held] = checks._softmax(x[held] @ kernel + bias)
    return probs


def flips(data: Path, work: Path, cache: Path) -> list[dict]:
    from trainer.doctor import labels as label_check

    rows = []
    for draw in range(DRAWS):
        rng = np.random.default_rng(2800 + draw)
        classes = sorted(p.name for p in data.iterdir() if p.is_dir())
        photos = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
        chosen = rng.choice(len(photos), FLIPS, replace=False)
        moves = {}
        for i in chosen:  # to another class folder that has no file of that name
            own, name = photos[i].split("/")[0], Path(photos[i]).name
            moves[photos[i]] = str(rng.choice([c for c in classes if c != own and not (data / c / name).exists()]))
        root = work / f"flipped{draw}"
        link_tree(data, root, moves)
        labels, kept, x, y, hits = features_of(root, cache)
        truth = {f"{moves[p]}/{Path(p).name}": p.split("/")[0] for p in moves}  # flipped path -> its class
        is_flip = np.array([p.rel in truth for p in kept])
        t0 = time.perf_counter()
        reduced = label_check.reduce(x, y, len(labels))
        probs = label_check.probabilities(reduced, y, len(labels), progress=None)
        doctor_s = time.perf_counter() - t0
        flagged = label_check.mislabeled(probs, y, labels, lambda k: kept[k].rel)
        base = baseline_probe(x, y, len(labels))
        row = {"draw": draw, "photos": len(y), "cache_hits": hits,
               "doctor_top100": int(is_flip[label_check.ranking(probs, y)[:TOP]].sum()),
               "baseline_top100": int(is_flip[np.argsort(base[np.arange(len(y)), y])[:TOP]].sum()),
               "flagged": len(flagged), "flips_flagged": sum(m["path"] in truth for m in flagged),
               "flips_flagged_with_true_class": sum(truth.get(m["path"]) == m["suggested"] for m in flagged),
               "doctor_labels_s": round(doctor_s, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(root)
    return rows


def copies(data: Path, work: Path, cache: Path, own_groups: list[list[str]]) -> dict:
    from PIL import Image

    rng = np.random.default_rng(28)
    root = work / "copies"
    link_tree(data, root)
    photos = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    made = {}
    for i in rng.choice(len(photos), COPIES, replace=False):
        rel = photos[i]
        im = Image.open(data / rel).convert("RGB")
        im = im.resize((round(im.width * 0.85), round(im.height * 0.85)), Image.Resampling.BILINEAR)
        copy = f"{rel.rsplit('.', 1)[0]}_copy85q75.jpg"
        im.save(root / copy, "JPEG", quality=75)
        made[copy] = rel
    out = work / "doctor_copies"
    seconds = cli(["doctor", str(root), "--out", str(out)], cache, work / "doctor_copies.log")
    found = json.loads((out / "doctor.json").read_text())
    groups = [sorted(Path(p).relative_to(root).as_posix() for p in d["paths"]) for d in found["duplicates"]]
    hit = sum(sorted([c, o]) in groups for c, o in made.items())
    own = [sorted(g) for g in own_groups]
    other = [g for g in groups if g not in own and not any(sorted([c, o]) == g for c, o in made.items())]
    return {"copies": COPIES, "found": hit, "groups": len(groups), "own_groups": len(own),
            "false_groups": len(other), "false_group_paths": other, "doctor_s": round(seconds, 1),
            "copy_paths": made}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "tf_flowers" / "train")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, deleted)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_doctor.json")
    ap.add_argument("--evidence", type=Path, default=Path("/tmp/work/issue28_evidence.txt"))
    ap.add_argument("--sheet", type=Path, default=Path("/tmp/work/issue28_doctor"),
                    help="where the untouched folder's doctor.html / doctor.json are kept")
    args = ap.parse_args()
    data = args.data.resolve()
    keep = args.work is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_doctor."))
    work.mkdir(parents=True, exist_ok=True)
    train_cache, doctor_cache = work / "cache_train", work / "cache_doctor"
    try:
        t_train = cli(["train", "--data", str(data), "--out", str(work / "run")], train_cache, work / "train.log")
        report = json.loads((work / "run" / "report.json").read_text())
        shutil.rmtree(args.sheet, ignore_errors=True)
        t_cold = cli(["doctor", str(data), "--out", str(args.sheet)], doctor_cache, work / "doctor_cold.log")
        t_warm = cli(["doctor", str(data), "--out", str(work / "doctor_warm")], train_cache, work / "doctor_warm.log")
        untouched = json.loads((args.sheet / "doctor.json").read_text())
        rel = lambda p: Path(p).relative_to(data).as_posix()  # noqa: E731
        own_groups = [[rel(p) for p in d["paths"]] for d in untouched["duplicates"]]
        flip_rows = flips(data, work, train_cache)
        copy_row = copies(data, work, train_cache, own_groups)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "data": str(data), "cpus": os.cpu_count(),
        "timing": {"train_cold_s": round(t_train, 1), "doctor_cold_s": round(t_cold, 1), "doctor_warm_s": round(t_warm, 1),
                   "doctor_cold_over_train_cold": round(t_cold / t_train, 3),
                   "doctor_warm_over_train_cold": round(t_warm / t_train, 3),
                   "train_timings": report["timings"], "doctor_cold_timings": untouched["timings"]},
        "train_data_check": {k: report["data_check"][k] for k in ("photos", "skipped", "excluded")} | {
            "mislabeled": report["data_check"]["mislabeled"]["count"], "outliers": report["data_check"]["outliers"]["count"],
            "duplicates": {k: v for k, v in report["data_check"]["duplicates"].items() if k != "top"}},
        "untouched": {"photos": untouched["photos"], "mislabeled": len(untouched["mislabeled"]),
                      "top20": [{"path": rel(m["path"]), "label": m["label"], "suggested": m["suggested"],
                                 "score": m["score"]} for m in untouched["mislabeled"][:20]],
                      "duplicates": [{"paths": [rel(p) for p in d["paths"]], "kind": d["kind"], "classes": d["classes"]}
                                     for d in untouched["duplicates"]],
                      "outliers": len(untouched["outliers"]), "skipped": len(untouched["skipped"]),
                      "sheet": str(args.sheet / "doctor.html")},
        "flips": flip_rows, "copies": copy_row,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.evidence.parent.mkdir(parents=True, exist_ok=True)
    args.evidence.write_text(evidence(result))
    print(evidence(result))


def evidence(r: dict) -> str:
    t, u, c = r["timing"], r["untouched"], r["copies"]
    lines = [f"bench_doctor on {r['data']} ({u['photos']} photos), {r['cpus']} CPUs (shared machine: compare ratios)",
             "", "## Timing (wall, whole process, each with its own feature cache state)",
             f"cold default train:            {t['train_cold_s']:.1f} s (its data check: "
             f"{t['train_timings'].get('data_check_s')} s of {t['train_timings'].get('total_s')} s total)",
             f"doctor cold (fresh cache):     {t['doctor_cold_s']:.1f} s = {t['doctor_cold_over_train_cold']:.2f}x the cold train",
             f"doctor warm (after the train): {t['doctor_warm_s']:.1f} s = {t['doctor_warm_over_train_cold']:.2f}x the cold train",
             "", f"## {FLIPS} labels flipped on purpose, {DRAWS} draws: flips among the {TOP} lowest p(given label)",
             "draw  doctor  linear probe (5-fold, raw features)  | doctor.json flagged: n, flips in it (suggested = true class)"]
    for f in r["flips"]:
        lines.append(f"{f['draw']:>4}  {f['doctor_top100']:>4}/{FLIPS}  {f['baseline_top100']:>4}/{FLIPS}"
                     f"                            | {f['flagged']}, {f['flips_flagged']} ({f['flips_flagged_with_true_class']})")
    lines += ["", f"## {c['copies']} copies resized to 85 % and re-encoded at JPEG quality 75 (trainer doctor CLI, "
                  f"{c['doctor_s']} s)",
              f"found as a twin of their original: {c['found']}/{c['copies']}; twin groups in all: {c['groups']} "
              f"(the folder's own: {c['own_groups']}); false twin groups: {c['false_groups']}",
              "", f"## Untouched folder: {u['mislabeled']} flagged as mislabeled, {len(u['duplicates'])} twin groups, "
                  f"{u['outliers']} of no class, {u['skipped']} unreadable; contact sheet: {u['sheet']}",
              "top 20 (path: given -> suggested, p(given)):"]
    lines += [f"{i + 1:>2}. {m['path']}: {m['label']} -> {m['suggested']} ({m['score']})" for i, m in enumerate(u["top20"])]
    lines += ["", "twin groups of the untouched folder:"]
    lines += [f"  {d['kind']:<5} {', '.join(d['classes']):<20} {'  '.join(d['paths'])}" for d in u["duplicates"]]
    d = r["train_data_check"]
    lines += ["", f"train's own data check (report.json data_check): {d['mislabeled']} look mislabeled, "
                  f"{d['duplicates']['groups']} twin groups ({d['duplicates']['rejoined']} straddled the split and were "
                  f"brought together), {d['outliers']} of no class, {d['skipped']} unreadable"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
