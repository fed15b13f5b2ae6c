"""A cluster worker that waits for its peers says so and gives up in bounded time, and SIGTERM or
SIGINT stop it at any stage (trainer.fit.signals): real `python -m trainer train` processes on
loopback ports, tiny settings (a few photos at 96 px)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.fine_tune_worker import saved
from tests.paths import REPO, SAMPLE_FLOWERS
from tests.test_cluster import _free_ports
from tests.test_train_cluster import _cache
from trainer.fit.cluster import Cluster
from trainer.fit.signals import _State, stop_line

FLAGS = ["--image-size", "96", "--seed", "7", "--fine-tune-from", "block_16_expand"]


def _photos(tmp_path, per_class: int = 12):
    """The first photos of each sample class: one fine-tuning step per epoch on two workers."""
    root = tmp_path / "photos"
    for folder in sorted(p for p in SAMPLE_FLOWERS.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:per_class]:
            shutil.copy(photo, root / folder.name / photo.name)
    return root


def _worker(index: int, hosts: list[str], tmp_path, *extra, env=()) -> subprocess.Popen:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "EDGE_TRANSFER_CACHE": str(tmp_path / "cache"),
               "EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S": "60", "TMPDIR": str(tmp_path / "tmp"), **dict(env),
               "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})}
    data = tmp_path / "photos" if (tmp_path / "photos").is_dir() else SAMPLE_FLOWERS
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", "--data", str(data), "--out",
                             str(tmp_path / "run"), *FLAGS, *extra], cwd=REPO, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_line(proc: subprocess.Popen, words: str, timeout: float = 120) -> list[str]:
    """stderr lines up to the first that holds ``words`` (the process must not end first)."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if words in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines[-20:])
    raise AssertionError(f"ended (exit {proc.wait()}) before {words!r}:\n" + "".join(lines[-20:]))


def _stopped_within(proc: subprocess.Popen, signum: int, seconds: float) -> tuple[float, str, str]:
    """Send ``signum``; the seconds until the process ended, its stdout and stderr."""
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=seconds + 30)
    return time.monotonic() - sent, out, err


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_the_stop_line_says_where_the_worker_was_and_how_to_go_on():
    cluster = Cluster(2, 1, ("10.0.0.1:2222", "10.0.0.2:2222"))
    waiting = _State(stage="waiting for the other workers to join")
    assert stop_line(signal.SIGTERM, waiting, cluster) == (
        "worker 1 of 2 (10.0.0.2:2222) interrupted by SIGTERM while waiting for the other workers to join: "
        "nothing was written; run the same command on every worker to start again")
    tuning = _State(stage="fine-tuning", saved="2 6", inputs="/runs/big")
    assert stop_line(signal.SIGINT, tuning, cluster) == (
        "worker 1 of 2 (10.0.0.2:2222) interrupted by SIGINT while fine-tuning: epoch 2 of 6 is saved; run the "
        "same command on every worker to resume (add --overwrite here: /runs/big holds this run's inputs)")
    evaluating = _State(stage="evaluating", saved="6 6")
    assert stop_line(signal.SIGTERM, evaluating, cluster).endswith(
        "while evaluating: fine-tuning (epoch 6 of 6) is saved; run the same command on every worker to resume")
    done = _State(stage="waiting for the other workers to finish", inputs="/runs/big", written="/runs/big")
    assert stop_line(signal.SIGTERM, done, cluster).endswith("finish: the run was written (/runs/big)")
    chief = Cluster(3, 0, ("c:1", "w:1", "w:2"), has_chief_job=True)
    assert (chief.name(0, of=True), chief.name(2)) == ("chief of 3 (c:1)", "worker 1 (w:2)")


def test_progress_names_the_peers_nothing_listens_for_and_only_a_cluster_command_is_supervised(monkeypatch):
    import socket

    from trainer.fit.signals import progress_line, wanted

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    up, down = f"127.0.0.1:{listening.getsockname()[1]}", f"127.0.0.1:{_free_ports(1)[0]}"
    try:
        three = Cluster(3, 0, ("127.0.0.1:1", up, down))
        assert progress_line(three, 15.2, 300) == (f"still waiting for worker 2 ({down}): nothing listens there "
                                                   "yet (15 s of 300 s)")
        pair = Cluster(2, 1, (up, "127.0.0.1:1"))
        assert progress_line(pair, 30, 300) == (f"still waiting: every other worker listens, registering with worker 0 "
                                                f"({up}) (30 s of 300 s)")
    finally:
        listening.close()
    state = _State()
    for line in ("stage waiting for the other workers to join", "stage joined", "stage fine-tuning", "saved 2 6"):
        state.update(line + "\n")
    assert (state.stage, state.saved, state.joined_after is not None) == ("fine-tuning", "2 6", True)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker"}}))
    assert wanted(["trainer", "train", "--data", "x"]) and not wanted(["pytest", "tests"])
    monkeypatch.setenv("TF_CONFIG", "{not json")  # the training process itself says what is wrong
    assert not wanted(["trainer", "train"])
    monkeypatch.delenv("TF_CONFIG")
    assert not wanted(["trainer", "train"])


@pytest.mark.slow
def test_a_lone_chief_says_whom_it_waits_for_and_gives_up_at_the_startup_timeout(tmp_path):
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    chief = _worker(0, hosts, tmp_path, env={"EDGE_TRANSFER_STARTUP_TIMEOUT_S": "16"})
    try:
        first = _wait_for_line(chief, "to join")
        waiting = time.monotonic()
        _, err = chief.communicate(timeout=60)
        seconds = time.monotonic() - waiting
    finally:
        _kill([chief])
    assert chief.returncode == 2, err[-3000:]
    assert f"worker 0 of 2 ({hosts[0]}): waiting for worker 1 ({hosts[1]}) to join; gives up after 16 s" in first[-1]
    assert f"still waiting for worker 1 ({hosts[1]}): nothing listens there yet (15 s of 16 s)" in err
    last = err.strip().splitlines()[-1]
    assert last == (f"error: worker 1 ({hosts[1]}) did not join within 16 s (EDGE_TRANSFER_STARTUP_TIMEOUT_S): "
                    "check that every worker is started with the same TF_CONFIG cluster and its own task index, "
                    "and that these addresses are reachable from this machine"), last
    assert 15 < seconds < 30, seconds
    assert not (tmp_path / "run").exists() and not list((tmp_path / "tmp").iterdir())


@pytest.mark.slow
def test_sigterm_and_sigint_stop_a_waiting_chief_at_once(tmp_path):
    chiefs = {signal.SIGTERM: None, signal.SIGINT: None}
    try:
        for signum in chiefs:
            hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
            (tmp_path / signum.name).mkdir()
            chiefs[signum] = _worker(0, hosts, tmp_path / signum.name)
        for proc in chiefs.values():
            _wait_for_line(proc, "to join")
        time.sleep(2)  # inside TensorFlow's start-up wait
        ended = {signum: _stopped_within(proc, signum, 10) for signum, proc in chiefs.items()}
    finally:
        _kill(chiefs.values())
    for signum, (seconds, _, err) in ended.items():
        assert chiefs[signum].returncode == 128 + signum, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert f"interrupted by {signum.name} while waiting for the other workers to join: nothing was written" in last
        assert seconds < 10, seconds
        assert not (tmp_path / signum.name / "run").exists()


@pytest.mark.slow
def test_sigterm_and_sigint_stop_fine_tuning_workers_and_the_same_command_resumes(tmp_path):
    """SIGTERM to worker 1 and SIGINT to the chief in fine-tuning epoch 2: both end within 10 s,
    nothing half-written, epoch 1 saved; the same command (the chief adds --overwrite: the stopped
    run's inputs are in --out) resumes after it on both."""
    _photos(tmp_path)
    cache = _cache(tmp_path, "cache")
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    epochs = ("--fine-tune-epochs", "2")
    procs = [_worker(i, hosts, tmp_path, *epochs) for i in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not any(saved(d, 1, workers=2) for d in (cache / "checkpoints").glob("*")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no epoch-1 checkpoints"
            time.sleep(0.05)
        stops = [signal.SIGINT, signal.SIGTERM]
        ended = [_stopped_within(p, s, 10) for p, s in zip(procs, stops)]
    finally:
        _kill(procs)
    for rank, (proc, signum, (seconds, _, err)) in enumerate(zip(procs, stops, ended)):
        assert proc.returncode == 128 + signum, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"worker {rank} of 2 ({hosts[rank]}) interrupted by {signum.name} while fine-tuning: "
                               "epoch 1 of 2 is saved; run the same command on every worker to resume"), last
        assert seconds < 10, (rank, seconds)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "labels.txt", "splits.json"]
    assert not list((tmp_path / "tmp").iterdir())  # the features' work folders are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    again = [_worker(i, hosts, tmp_path, *epochs, "--overwrite") for i in range(2)]
    try:
        results = [p.communicate(timeout=400) for p in again]
    finally:
        _kill(again)
    for proc, (out, err) in zip(again, results):
        assert proc.returncode == 0, err[-3000:]
        assert "resuming fine-tuning after epoch 1" in out and "fine-tune epoch 2/2" in out, out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["workers"] == 2 and report["stages"]["fine_tune"]["epochs"] == 2
    assert not list((cache / "checkpoints").rglob("*.index"))
