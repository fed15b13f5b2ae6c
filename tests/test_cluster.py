"""trainer.fit.cluster: TF_CONFIG parsing (one-line errors), work shares, the barrier, and real
2-worker MultiWorkerMirroredStrategy runs on loopback (identical weights; a killed worker fails
the other with one clear line in bounded time)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.fine_tune_worker import saved
from tests.paths import REPO
from trainer.fit.cluster import Cluster, ClusterError, parse, share

WORKER = REPO / "tests" / "fine_tune_worker.py"


def _config(cluster: dict, task_type: str = "worker", index=0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_no_tf_config_is_one_local_chief():
    for env in ({}, {"TF_CONFIG": ""}, {"TF_CONFIG": "  "}):
        cluster = Cluster.from_env(env)
        assert (cluster.workers, cluster.rank, cluster.is_chief) == (1, 0, True)


def test_workers_and_a_chief_job_get_ranks_in_order():
    hosts = ["a:1", "b:2", "c:3"]
    second = parse(_config({"worker": hosts}, "worker", 1))
    assert (second.workers, second.rank, second.is_chief, second.task) == (3, 1, False, ("worker", 1))
    assert second.spec() == {"worker": hosts}
    # a TFJob / Vertex AI "chief" is a training worker too: rank 0, workers follow it
    chief = parse(_config({"chief": ["c0:9"], "worker": hosts}, "chief", 0))
    assert (chief.workers, chief.rank, chief.is_chief, chief.task) == (4, 0, True, ("chief", 0))
    last = parse(_config({"chief": ["c0:9"], "worker": hosts}, "worker", 2))
    assert (last.rank, last.task, last.spec()) == (3, ("worker", 2), {"chief": ["c0:9"], "worker": hosts})


@pytest.mark.parametrize("text, words", [
    ("{not json", "not JSON"),
    ('["worker"]', '"cluster"'),
    (_config({}), '"cluster"'),
    (_config({"worker": ["a:1"], "ps": ["p:1"]}), "'ps' is not supported"),
    (_config({"worker": ["a:1"], "evaluator": ["e:1"]}), "'evaluator' is not supported"),
    (_config({"worker": "a:1,b:2"}), "list of \"host:port\""),
    (_config({"worker": ["a:1", "b"]}), "list of \"host:port\""),
    (_config({"worker": ["a:1", "b:99999"]}), "list of \"host:port\""),
    (_config({"chief": ["c:1", "d:1"], "worker": ["a:1"]}), 'one "chief"'),
    (_config({"worker": ["a:1", "a:1"]}), "twice"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), '"task"'),
    (_config({"worker": ["a:1"]}, "chief"), '"task"'),
    (_config({"worker": ["a:1", "b:2"]}, "worker", 2), "0..1"),
    (_config({"worker": ["a:1", "b:2"]}, "worker", "1"), "0..1"),
])
def test_malformed_tf_config_is_one_line(text, words):
    with pytest.raises(ClusterError) as err:
        parse(text)
    message = str(err.value)
    assert words in message and "TF_CONFIG" in message and "\n" not in message, message


def test_shares_are_deterministic_disjoint_and_complete():
    items = list(range(11))
    parts = [share(items, Cluster(3, r, ("a:1", "b:1", "c:1"))) for r in range(3)]
    assert parts[0] == [0, 3, 6, 9] and sorted(sum(parts, [])) == items
    assert share(np.arange(5), Cluster()).tolist() == [0, 1, 2, 3, 4]


def test_lost_worker_errors_become_one_line_naming_the_worker(monkeypatch):
    import tensorflow as tf

    from trainer.fit.cluster import TIMEOUT_ENV, cluster_errors

    monkeypatch.setenv(TIMEOUT_ENV, "7")
    cluster = Cluster(3, 0, ("a:1", "b:1", "c:1"))
    dead = ("Collective ops is aborted by: Error reported from /job:worker/task:2: The following tasks are "
            "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:2\nThe tasks have crashed.")
    with pytest.raises(ClusterError, match=r"^worker 2 lost \(stopped sending heartbeats.*rerun every worker"):
        with cluster_errors(cluster):
            raise tf.errors.UnavailableError(None, None, dead)
    pair = Cluster(2, 1, ("a:1", "b:1"))
    with pytest.raises(ClusterError, match=r"^worker 0 lost \(no answer within the 7 s collective timeout"):
        with cluster_errors(pair):
            raise tf.errors.DeadlineExceededError(None, None, "Collective has timed out during execution.")
    refused = ("Graph execution error:\n\nDetected at node CollectiveReduceV2\nfailed to connect to all addresses; "
               "ipv4:127.0.0.1:5: Failed to connect to remote host: Connection refused\n"
               "Additional GRPC error information from remote target /job:worker/replica:0/task:0")
    with pytest.raises(ClusterError, match=r"^worker 0 lost \(connection refused or closed"):
        with cluster_errors(pair):
            raise tf.errors.UnavailableError(None, None, refused)
    with pytest.raises(ClusterError, match=r"^a worker lost \(something new\); rerun"):
        with cluster_errors(cluster):
            raise tf.errors.UnavailableError(None, None, "Graph execution error:\nsomething new\nmore")
    with pytest.raises(tf.errors.UnavailableError):  # one worker: not a cluster problem, keep the traceback
        with cluster_errors(Cluster()):
            raise tf.errors.UnavailableError(None, None, dead)


def test_startup_failures_name_the_missing_workers_and_what_to_check(monkeypatch):
    import tensorflow as tf

    from trainer.fit.cluster import STARTUP_ENV, startup_message, startup_timeout

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    up = f"127.0.0.1:{listening.getsockname()[1]}"
    down = [f"127.0.0.1:{p}" for p in _free_ports(2)]  # nothing listens there
    try:
        leader = Cluster(3, 0, (down[0], up, down[1]))
        barrier = ("Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0.\n# of tasks that reached the "
                   "barrier: 2/3.\nThe first task at the barrier: /job:worker/replica:0/task:0. Some timed out task "
                   "names:\n/job:worker/replica:0/task:2\n")
        message = startup_message(tf.errors.DeadlineExceededError(None, None, barrier), leader, 300)
        assert message == (f"worker 2 ({down[1]}) did not join within 300 s ({STARTUP_ENV}): check that every "
                           "worker is started with the same TF_CONFIG cluster and its own task index, and that "
                           "these addresses are reachable from this machine")
        # a worker whose leader (the chief) never answered: TF says only "Deadline Exceeded"
        follower = Cluster(2, 1, (down[0], up), has_chief_job=True)
        silent = tf.errors.DeadlineExceededError(None, None, "Deadline Exceeded\nRPC: ...")
        message = startup_message(silent, follower, 9)
        assert message.startswith(f"chief ({down[0]}) did not join within 9 s"), message
        other = startup_message(tf.errors.UnavailableError(None, None, "\nsocket closed\nmore"), follower, 9)
        assert other == f"could not join the cluster as worker 0 ({up}): socket closed"
    finally:
        listening.close()
    monkeypatch.setenv(STARTUP_ENV, "soon")
    with pytest.raises(ClusterError, match=f"{STARTUP_ENV} must be a number of seconds, got 'soon'"):
        startup_timeout()
    monkeypatch.setenv(STARTUP_ENV, "0")
    with pytest.raises(ClusterError, match="must be positive"):
        startup_timeout()


def test_barrier_and_all_sum_on_one_worker():
    import tensorflow as tf

    from trainer.fit.cluster import all_sum, barrier

    strategy = tf.distribute.get_strategy()
    barrier(strategy)
    np.testing.assert_array_equal(all_sum(strategy, [1.5, 2.0]), [1.5, 2.0])


def test_gather_rows_puts_a_share_in_place_and_refuses_a_short_one():
    import tensorflow as tf

    from trainer.fit.cluster import gather_rows

    strategy = tf.distribute.get_strategy()
    rows = share(np.arange(5), Cluster(2, 1))
    got = gather_rows(strategy, 5, rows, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(got, [[0, 0], [1, 2], [0, 0], [3, 4], [0, 0]])
    with pytest.raises(ValueError, match="1 rows computed for a share of 2"):
        gather_rows(strategy, 5, rows, [[1.0, 2.0]])


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(out, *args, timeout_s: str = "60") -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for rank in range(2):
        env = {**os.environ, "TF_CONFIG": _config({"worker": hosts}, "worker", rank),
               "EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S": timeout_s, "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), *args], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _finish(procs, timeout: float) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *output) for p, output in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_workers_on_loopback_pass_the_barrier_and_end_with_identical_weights(tmp_path):
    procs = _start_workers(tmp_path, "--barrier", "--skew-head", "--checkpoint", str(tmp_path / "ckpt"))
    results = _finish(procs, timeout=300)
    for rank, (rc, out, err) in enumerate(results):
        assert rc == 0, err[-3000:]
        assert f"barrier passed by worker {rank}" in out
    histories = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert histories[0] == histories[1] and len(histories[0]["loss"]) == 1  # all-reduced metrics
    first, second = (np.load(tmp_path / f"weights_{r}.npz") for r in range(2))
    assert len(first.files) > 200
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    assert list((tmp_path / "ckpt").iterdir()) == []  # each worker's own folder, deleted after success


@pytest.mark.slow
def test_a_killed_worker_fails_the_other_with_one_line_in_bounded_time(tmp_path):
    procs = _start_workers(tmp_path, "--epochs", "20", timeout_s="300")  # the loss, not the timeout, must tell
    try:
        for line in procs[1].stdout:
            if line.startswith("training"):
                break
        time.sleep(3)  # inside the training loop
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        seconds = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    # heartbeats or a refused connection, whichever TensorFlow notices first: both name the worker
    assert last.startswith("error: worker 1 lost (") and "killed, crashed or unreachable" in last, last
    assert "rerun every worker" in last, last
    assert seconds < 90, seconds


@pytest.mark.slow
def test_two_workers_killed_together_resume_after_the_epoch_both_saved(tmp_path):
    checkpoint = tmp_path / "ckpt"
    args = ("--epochs", "3", "--train-per-class", "16", "--checkpoint", str(checkpoint))
    procs = _start_workers(tmp_path, *args)
    try:
        deadline = time.monotonic() + 240
        while not saved(checkpoint, 1, workers=2):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no epoch-1 checkpoints"
            time.sleep(0.05)
        for p in procs:  # the whole job preempted
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert not list(checkpoint.glob("worker_*/fine_tune-*/ckpt-2.index")), "killed too late: epoch 2 was saved"

    results = _finish(_start_workers(tmp_path, *args), timeout=300)

    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        assert "resuming fine-tuning after epoch 1" in out, err[-3000:]
        assert [len(v) for v in json.loads(out.strip().splitlines()[-1]).values()] == [3, 3, 3, 3]
    first, second = (np.load(tmp_path / f"weights_{r}.npz") for r in range(2))
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.slow
def test_a_hung_worker_fails_the_other_at_the_collective_timeout(tmp_path):
    procs = _start_workers(tmp_path, "--stall", "1:120", timeout_s="20")  # alive (heartbeating) but stuck
    try:
        for line in procs[0].stdout:
            if line.startswith("training"):
                break
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        seconds = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: worker 1 lost (no answer within the 20 s collective timeout"), last
    assert 20 <= seconds < 90, seconds
