"""A run folder is one model (issue 29): `train` without --out makes a new runs/<name>, an
existing run is refused without --overwrite and replaced whole with it (a kill at any moment
leaves one complete run), convert drops the variants of an older model.keras, every consumer
refuses files made for another model.keras, and artifacts get the modes of any new file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.paths import REPO, SAMPLE_FLOWERS
from trainer import atomic
from trainer.data.dataset import DataError
from trainer.run_dir import Output, RunDir, check_files, holds_run, next_run_dir, record_last

FAST = ("--data", str(SAMPLE_FLOWERS), "--image-size", "96")  # head only, 96 px: seconds with a warm cache
TRAINED = ["config.json", "labels.txt", "model.keras", "report.json", "splits.json"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(folder: Path) -> dict[str, str] | None:
    """Every file under ``folder`` -> content hash and mode (None: no folder)."""
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): f"{sha(p.read_bytes())} {stat.S_IMODE(p.stat().st_mode):o}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(path: Path, model: bytes = b"model B", parity_for: bytes | None = None,
             variants=("float32", "int8")) -> Path:
    """A run folder of small fake files; parity.json records ``parity_for``'s sha256 (default: the
    model.keras here) and the sha256 of each variant file, as convert writes it."""
    path.mkdir(parents=True)
    (path / "model.keras").write_bytes(model)
    for name in ("labels.txt", "config.json", "splits.json"):
        (path / name).write_text("{}\n" if name.endswith(".json") else "daisy\nroses\n")
    (path / "report.json").write_text(json.dumps({"splits": {"test": {"n": 40, "accuracy": 0.9}}}))
    entries = {}
    for mode in variants:
        data = f"{mode} made from {model.decode()}".encode()
        (path / f"model_{mode}.tflite").write_bytes(data)
        entries[mode] = {"file": f"model_{mode}.tflite", "sha256": sha(data), "n": 40, "passed": True}
    parity = {"split": "test", "n": 40, "keras_accuracy": 0.9, "keras_sha256": sha(parity_for or model),
              "passed": True, "variants": entries}
    (path / "parity.json").write_text(json.dumps(parity))
    (path / "model_card.json").write_text(json.dumps({"name": "card", "variants": {}}))
    (path / "model_card.md").write_text("# card\n")
    (path / "bench.json").write_text(json.dumps({"keras": {"sha256": sha(parity_for or model)}, "variants": []}))
    (path / "bench.md").write_text("| bench |\n")
    return path


# --------------------------------------------------------------------------- where train writes
def test_train_without_out_names_a_new_folder_each_time_and_records_it(tmp_path):
    root = tmp_path / "runs"
    made = [next_run_dir(root) for _ in range(3)]
    assert [p.name for p in made] == ["train", "train2", "train3"]
    made[1].rmdir()
    assert next_run_dir(root).name == "train2"  # the first free name
    record_last(made[2], root)
    assert (root / "LAST").read_text() == f"{made[2]}\n"
    assert os.readlink(root / "latest") == "train3" and (root / "latest").resolve() == made[2].resolve()
    record_last(made[0], root)  # the link moves with the last run
    assert os.readlink(root / "latest") == "train"
    (root / "latest").unlink()
    (root / "latest").mkdir()  # an older version's runs/latest folder is never replaced
    record_last(made[2], root)
    assert (root / "latest").is_dir() and not (root / "latest").is_symlink()
    assert (root / "LAST").read_text() == f"{made[2]}\n"


def test_output_default_is_runs_of_the_current_folder_and_one_that_fails_early_leaves_nothing(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = Output.choose(None)
    assert (first.final, first.named, first.replace) == (Path("runs/train"), True, False)
    assert Output.choose(None).final == Path("runs/train2")
    first.abandon()  # failed before writing: no empty runs/train stays
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["train2"]
    with pytest.raises(DataError, match="same --out DIR"):  # several workers must agree on one folder
        Output.choose(None, workers=2)


@pytest.mark.parametrize("marker", ["model.keras", "config.json", "report.json", "labels.txt", "model_int8.tflite"])
def test_a_folder_holding_a_run_needs_overwrite(tmp_path, marker):
    out = tmp_path / "run"
    out.mkdir()
    (out / marker).write_bytes(b"x")
    assert holds_run(out) == [marker]
    with pytest.raises(DataError) as info:
        Output.choose(out)
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)
    assert Output.choose(out, overwrite=True).replace


def test_an_empty_or_new_folder_is_trained_into_directly(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("mine")  # not a run file
    for name in ("empty", "notes", "new/deep"):
        target = Output.choose(tmp_path / name, overwrite=True)
        assert not target.replace and target.start() == tmp_path / name
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        Output.choose(tmp_path / "file")


def test_overwrite_builds_beside_and_swaps_in_whole(tmp_path):
    old = fake_run(tmp_path / "run", model=b"model A")
    target = Output.choose(old, overwrite=True)
    build = target.start()
    assert build.parent == tmp_path and build.name.startswith(".run.new-")
    assert stat.S_IMODE(build.stat().st_mode) == atomic.dir_mode()
    assert atomic.final_name(build) == "run"  # what report.html calls it while it is built
    (build / "model.keras").write_bytes(b"model C")
    (build / "config.json").write_text("{}")
    assert (old / "model_int8.tflite").is_file()  # the old run is whole until the very end
    target.finish(build)
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "model.keras"]  # no variant of model A
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_cli_refuses_a_run_in_out_in_one_line_before_tensorflow_loads(tmp_path):
    out = fake_run(tmp_path / "run")
    before = tree(out)
    code = ("import sys\nfrom trainer.cli import main\ntry:\n    main()\nfinally:\n"
            "    print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, "train", *FAST, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --out {out} already holds a run (model.keras, config.json, "
                                                  "report.json, ...): pass --overwrite to replace it whole, or give "
                                                  "another --out"]
    assert result.stdout.strip() == "False"  # refused before TensorFlow was imported
    assert tree(out) == before


# --------------------------------------------------------------------------- the swap, killed at each step
def _old_and_new(tmp_path: Path) -> tuple[Path, Path]:
    dest = fake_run(tmp_path / "run", model=b"model A")
    build = atomic.staging_dir(dest)
    for name in TRAINED:
        (build / name).write_text(f"new {name}")
    return dest, build


@pytest.mark.parametrize("steps", [0, 1, 2, 3, "2, then part of the old one deleted"])
def test_a_kill_at_any_step_of_the_swap_leaves_one_whole_run(tmp_path, steps):
    """Each step boundary of swap_steps is a moment a SIGKILL can hit; the next run's recover()
    then finds the old run whole (before the new one took the name) or the new one."""
    dest, build = _old_and_new(tmp_path)
    old, new = tree(dest), tree(build)
    n = steps if isinstance(steps, int) else 2
    swap = atomic.swap_steps(build, dest)
    assert [next(swap) for _ in range(n)] == ["moved aside", "swapped", "done"][:n]
    swap.close()  # killed here: nothing after this step runs
    on_disk = {p.name: tree(p) for p in tmp_path.iterdir()}
    assert old in on_disk.values() or n >= 2  # the old run is complete somewhere until the new one is in place
    assert tree(dest) in ((old, None) if n < 2 else (new,))
    if not isinstance(steps, int):  # the kill hit rmtree of the old folder half way
        aside = next(p for p in tmp_path.iterdir() if atomic.OLD_MARK in p.name)
        (aside / "model.keras").unlink()
    done = atomic.recover(dest)
    assert tree(dest) == (old if n < 2 else new)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert bool(done) == (n < 3) and (n != 1 or done[0].startswith(f"restored {dest}"))


def test_a_failed_rename_puts_the_old_run_back_at_once(tmp_path, monkeypatch):
    dest, build = _old_and_new(tmp_path)
    old, real = tree(dest), os.rename

    def rename(src, dst):
        if Path(src) == build:
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        atomic.swap_in(build, dest)
    assert tree(dest) == old and build.is_dir()


def test_train_restores_a_run_whose_replacement_was_killed_mid_swap(tmp_path):
    dest, build = _old_and_new(tmp_path)
    old = tree(dest)
    swap = atomic.swap_steps(build, dest)
    next(swap)
    swap.close()  # dest is missing now, the old run is at .run.old-*
    lines = []
    with pytest.raises(DataError, match="--overwrite"):  # restored first, so still a run to protect
        Output.choose(dest, log=lines.append)
    assert tree(dest) == old and [p.name for p in tmp_path.iterdir()] == ["run"]
    assert len(lines) == 2 and lines[0].startswith("restored") and "removed .run.new-" in lines[1]


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
@pytest.mark.parametrize("proc", [True, False], ids=["proc", "umask-call"])
def test_artifacts_get_the_modes_the_umask_gives_any_new_file(tmp_path, monkeypatch, mask, file_mode, dir_mode,
                                                              proc):
    if not proc:  # no /proc: the umask is read by setting and restoring it
        monkeypatch.setattr(atomic, "_STATUS", str(tmp_path / "no-proc"))
    previous = os.umask(mask)
    try:
        assert atomic.umask() == mask and os.umask(mask) == mask
        written = [atomic.write_bytes(tmp_path / "a" / "model_int8.tflite", b"x"),
                   atomic.write_json(tmp_path / "a" / "parity.json", {})]
        with atomic.atomic_path(tmp_path / "a" / "model.keras") as tmp:
            tmp.write_bytes(b"k")  # a writer given the temp path (Keras' save)
        written.append(tmp_path / "a" / "model.keras")
        folders = [atomic.staging_dir(tmp_path / "run"), next_run_dir(tmp_path / "runs")]
    finally:
        os.umask(previous)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: oct(file_mode) for p in written}
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in folders] == [oct(dir_mode)] * 2


# --------------------------------------------------------------------------- files that belong together
def test_convert_first_deletes_every_file_made_for_another_model(tmp_path, monkeypatch):
    from trainer import workflow

    run = fake_run(tmp_path / "run", model=b"model B", parity_for=b"model A")
    (run / "notes.txt").write_text("mine")

    class Loaded(Exception):
        """convert got as far as loading model.keras (the fake one cannot load)"""

    def load(path):
        raise Loaded()

    monkeypatch.setattr(workflow, "load_keras", load)
    lines = []
    with pytest.raises(Loaded):
        workflow.convert_run(run, ["int8"], log=lines.append)
    assert sorted(p.name for p in run.iterdir()) == sorted(TRAINED + ["notes.txt"])
    assert lines == ["removed model_float32.tflite, model_int8.tflite, model_card.md, model_card.json, bench.md, "
                     "bench.json, parity.json: made for another model.keras"]


def test_variants_of_this_model_are_kept(tmp_path):
    run = RunDir(fake_run(tmp_path / "run"))
    before = tree(run.path)
    assert run.clear_foreign() == [] and tree(run.path) == before


def test_check_lists_every_file_and_passes_a_run_that_belongs_together(tmp_path):
    run = fake_run(tmp_path / "run")
    states = {s.name: (s.state, s.note) for s in check_files(RunDir(run), ["float32", "int8", "dynamic"])}
    assert states["model.keras"][0] == "ok" and states["model.keras"][1].startswith("sha256 ")
    assert states["model_int8.tflite"] == ("ok", "parity passed")
    assert states["model_dynamic.tflite"] == ("missing", "not converted")
    assert {n for n, (state, _) in states.items() if state != "ok"} == {"report.html", "model_dynamic.tflite"}
    result = run_cli("trainer", "check", str(run), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ok       model_int8.tflite  parity passed" in lines and "ok       parity.json" in lines
    assert len(lines) == 16 and result.stderr == ""  # 6 trained files, 5 variants, parity, 2 cards, 2 bench


def test_check_and_bench_refuse_a_run_with_another_models_files(tmp_path):
    run = fake_run(tmp_path / "run", model=b"model B", parity_for=b"model A")
    result = run_cli("trainer", "check", str(run), timeout=120)
    assert result.returncode == 2
    stale = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("stale")]
    assert stale == ["model_float32.tflite", "model_int8.tflite", "parity.json", "model_card.md", "model_card.json",
                     "bench.md", "bench.json"]
    assert "parity stale (model.keras changed)" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: {run}: {', '.join(stale)} do not belong to its model.keras: run `python -m trainer convert {run}` "
        "again"]
    result = run_cli("trainer", "bench", str(run), "--runs", "1", timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "made for another model.keras" in result.stderr and not (run / "bench.md").read_text().startswith("Bench")


def test_check_calls_a_variant_parity_never_saw_stale_and_an_incomplete_run_missing(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "model_full_int8.tflite").write_bytes(b"copied in by hand")
    (run / "model_int8.tflite").write_bytes(b"replaced after the parity check")
    states = {s.name: (s.state, s.note) for s in check_files(RunDir(run))}
    assert states["model_full_int8.tflite"] == ("stale", "no parity")
    assert states["model_int8.tflite"] == ("stale", "parity stale (file changed)")
    (run / "splits.json").unlink()
    result = run_cli("trainer", "check", str(run), timeout=120)
    assert result.returncode == 2 and "missing  splits.json" in result.stdout
    assert result.stderr.strip() == f"error: {run} is not a complete training run: splits.json missing"


def test_report_html_never_shows_another_models_parity_as_current(tmp_path):
    from trainer.report import page

    current = page.render(fake_run(tmp_path / "current"))
    assert "TFLite parity" in current
    stale = page.render(fake_run(tmp_path / "stale", parity_for=b"model A"))
    assert "TFLite parity" not in stale and "made for another model.keras" in stale
    assert "Model card" not in stale and "Benchmark" not in stale


# --------------------------------------------------------------------------- real `train` runs (slow)
def _train(cwd: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m trainer train` from ``cwd``; output to a file (a pipe nobody reads could block it)."""
    sink = open(log or os.devnull, "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", *FAST, *args], cwd=cwd, env=env,
                            stdout=sink, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; it must still have been running."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_two_trains_in_a_row_leave_two_intact_runs_with_readable_files(tmp_path):
    for seed in ("1", "2"):
        _finish(_train(tmp_path, "--seed", seed, log=tmp_path / f"log{seed}"), tmp_path / f"log{seed}")
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["LAST", "latest", "train", "train2"]
    assert (runs / "LAST").read_text() == "runs/train2\n" and os.readlink(runs / "latest") == "train2"
    for name, seed in (("train", 1), ("train2", 2)):
        run = runs / name
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        assert not [s for s in check_files(RunDir(run)) if s.bad]
        assert stat.S_IMODE(run.stat().st_mode) == 0o777 & ~atomic.umask()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
        assert "model.keras" in modes and "report.html" in modes and "predictions.png" in modes
        assert set(modes.values()) == {0o666 & ~atomic.umask()}, modes  # 0644 under umask 022
    assert "Training report: train2" in (runs / "train2" / "report.html").read_text()


@pytest.mark.slow
def test_killed_overwrites_leave_the_old_run_whole_and_the_next_one_cleans_up(tmp_path):
    """SIGKILL early (the new run's folder just made) and mid-training (its inputs written, the head
    being fitted): the old run is untouched each time; the next run removes what the killed one
    left, and the last --overwrite replaces the old run whole."""
    run = tmp_path / "run"
    _finish(_train(tmp_path, "--out", str(run), "--seed", "1", log=tmp_path / "log1"), tmp_path / "log1")
    (run / "model_int8.tflite").write_bytes(b"a variant of the first model")
    old = tree(run)
    refused = run_cli("trainer", "train", *FAST, "--out", str(run), timeout=120)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and tree(run) == old

    def staged(name: str | None = None):
        return lambda: any(name is None or (p / name).is_file() for p in tmp_path.glob(".run.new-*"))

    for moment in (staged(), staged("labels.txt")):
        _kill_when(_train(tmp_path, "--out", str(run), "--overwrite", "--seed", "2"), moment)
        assert tree(run) == old
        assert len(list(tmp_path.glob(".run.new-*"))) == 1  # its own; the one before it was cleaned
    out = _finish(_train(tmp_path, "--out", str(run), "--overwrite", "--seed", "2", log=tmp_path / "log2"),
                  tmp_path / "log2")
    assert out.count("(left by a killed run)") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log1", "log2", "run"]
    assert json.loads((run / "config.json").read_text())["seed"] == 2
    assert not (run / "model_int8.tflite").exists()  # nothing of the first model stays
    assert not [s for s in check_files(RunDir(run)) if s.bad]
    assert "Training report: run<" in (run / "report.html").read_text()
