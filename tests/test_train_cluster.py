"""`python -m trainer train` on two loopback workers (TF_CONFIG, MultiWorkerMirroredStrategy),
against the same command in one process: the same features, the same split, close accuracy;
only the chief writes the run directory. And a killed run resumes its fine-tuning."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.paths import REPO, SAMPLE_FLOWERS
from tests.test_cluster import _free_ports
from trainer.data.photos import Photos
from trainer.model.model_io import load_keras, photo_probabilities
from trainer.report import metrics
from trainer.run_dir import RunDir

FLAGS = ["--data", str(SAMPLE_FLOWERS), "--seed", "7", "--fine-tune-from", "block_16_expand",
         "--fine-tune-epochs", "1", "--no-open-set"]  # model.keras's softmax is then the report's, compared below


def _cache(tmp_path, name):
    """A fresh feature cache that already holds the converted extractor (skips a conversion)."""
    root = tmp_path / name
    shared = REPO / ".cache" / "edge-transfer" / "extractors"
    if shared.is_dir():
        shutil.copytree(shared, root / "extractors")
    return root


def _train(out, cache, tf_config=None, extra=()):
    env = {**os.environ, "EDGE_TRANSFER_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2",
           "EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S": "120"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", *FLAGS, *extra, "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


PHASH_ENTRY = 13 + 8  # header + 8 bytes: a photo's pHash (trainer.data.twins), cached beside its features


def _entries(cache):
    """The feature entries (not the pHashes `train` caches beside them)."""
    return {p.relative_to(cache): p.read_bytes() for p in (cache / "features").rglob("*")
            if p.is_file() and p.stat().st_size != PHASH_ENTRY}


@pytest.mark.slow
def test_two_loopback_workers_match_one_process(tmp_path):
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    shared_cache = _cache(tmp_path, "cache_2w")
    workers = [_train(tmp_path / "run_2w", shared_cache,
                      {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (stdout, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr[-3000:]
    assert "worker done" in outputs[1][0] and "test accuracy" in outputs[0][0]
    single_cache = _cache(tmp_path, "cache_1")
    single = _train(tmp_path / "run_1", single_cache)
    stdout, stderr = single.communicate(timeout=600)
    assert single.returncode == 0, stderr[-3000:]

    # extraction was split between the workers, and gave exactly the one-process features
    assert _entries(shared_cache) == _entries(single_cache) and len(_entries(single_cache)) == 200
    two, one = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("run_2w", "run_1"))
    assert two["workers"] == 2 and one["workers"] == 1
    assert (tmp_path / "run_2w" / "splits.json").read_text() == (tmp_path / "run_1" / "splits.json").read_text()
    assert two["history"]["head"] == one["history"]["head"]  # the same head, solved on the same features
    assert two["stages"]["fine_tune"]["epochs"] == one["stages"]["fine_tune"]["epochs"] == 1
    # one epoch of data-parallel fine-tuning (global batch 2x32) vs one process: close, not equal
    assert abs(two["splits"]["test"]["accuracy"] - one["splits"]["test"]["accuracy"]) <= 0.1
    assert two["splits"]["test"]["accuracy"] >= 0.7
    # every worker's checkpoints are gone after success
    assert not list((shared_cache / "checkpoints").rglob("*.index"))
    # each worker evaluated its share of the fine-tuned model; the chief's report has them in place
    run = RunDir(tmp_path / "run_2w")
    model = load_keras(run.path / "model.keras")
    for split in ("val", "test"):
        probs = photo_probabilities(model, Photos.of(run.splits, split, run.spec))
        assert two["splits"][split] == metrics.classification_report(run.splits.targets(split), probs, run.labels)


@pytest.mark.slow
def test_a_killed_train_resumes_fine_tuning_when_the_same_command_runs_again(tmp_path):
    """SIGKILL after the first fine-tuning epoch is saved; the same command then goes on from it
    (with --overwrite: the killed run left its inputs in the folder, and a run is never mixed)."""
    from tests.fine_tune_worker import saved

    cache = _cache(tmp_path, "cache")
    flags = ["--image-size", "96", "--fine-tune-epochs", "3"]
    first = _train(tmp_path / "run", cache, extra=flags)
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and not any(saved(d, 1) for d in (cache / "checkpoints").glob("*")):
            assert time.monotonic() < deadline, "no epoch-1 checkpoint"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL and not (tmp_path / "run" / "model.keras").exists()
    again = _train(tmp_path / "run", cache, extra=[*flags, "--overwrite"])
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert "resuming fine-tuning after epoch 1" in stdout + stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"]["fine_tune"]["epochs"] == 3 and report["feature_cache"]["hits"] == 200
    assert not list((cache / "checkpoints").rglob("*.index"))


@pytest.mark.slow
def test_two_loopback_workers_head_only(tmp_path):
    """Without fine-tuning the second worker only extracts its share and waits for the chief."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    cache = _cache(tmp_path, "cache")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(EDGE_TRANSFER_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2", EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S="120")
    workers = [subprocess.Popen([sys.executable, "-m", "trainer", "train", "--data", str(SAMPLE_FLOWERS), "--out",
                                 str(tmp_path / "run"), "--image-size", "96"], cwd=REPO, text=True,
                                env={**env, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                                     "task": {"type": "worker", "index": i}})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["workers"] == 2 and report["splits"]["test"]["accuracy"] >= 0.6
    assert len(_entries(cache)) == 200 and report["feature_cache"]["hits"] == 200  # both shares, then read
