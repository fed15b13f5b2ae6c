"""trainer.fit.fine_tune: the custom tf.distribute loop on real photos streamed from files, with the
shipped backbone: what it trains and what it must not touch, and a killed run that resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.fine_tune_worker import SIZE, build_model, sample_photos, saved
from tests.paths import REPO, SAMPLE_FLOWERS

WORKER = REPO / "tests" / "fine_tune_worker.py"


@pytest.mark.slow
def test_one_epoch_trains_the_top_and_keeps_batchnorm_and_the_frozen_base(tmp_path, capsys):
    import tensorflow as tf

    from edge.preprocess import PreprocessSpec
    from trainer.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
    from trainer.fit.fine_tune import KEYS, PREFIX, fine_tune

    n_classes, train, val = sample_photos(PreprocessSpec(size=(SIZE, SIZE)))
    backbone, model = build_model(n_classes, seed=3)
    base = backbone.base
    watched = ["block_16_project", "block_15_project", "block_16_expand_BN", "block_16_project_BN", "Conv_1_bn"]
    before = {name: [w.copy() for w in base.get_layer(name).get_weights()] for name in watched}
    head_before = model.get_layer("probabilities").get_weights()[0].copy()
    stale = tmp_path / "ckpt" / f"{PREFIX}0123456789abcdef"  # another configuration's checkpoint
    stale.mkdir(parents=True)
    cfg = RunConfig(DataConfig(str(SAMPLE_FLOWERS)), BackboneConfig(image_size=SIZE),
                    TrainConfig(fine_tune_from="block_16_expand", fine_tune_epochs=1, fine_tune_learning_rate=1e-3,
                                fine_tune_batch_size=8, label_smoothing=0.1), seed=3)

    history = fine_tune(cfg, backbone, model, train, val, n_classes, tf.distribute.get_strategy(),
                        checkpoint_dir=tmp_path / "ckpt", logdir=tmp_path / "tb")

    assert set(history) == set(KEYS) and all(len(v) == 1 and np.isfinite(v[0]) for v in history.values())
    assert not base.trainable  # frozen again for whatever comes next
    assert not np.array_equal(base.get_layer("block_16_project").get_weights()[0], before["block_16_project"][0])
    assert not np.array_equal(model.get_layer("probabilities").get_weights()[0], head_before)
    np.testing.assert_array_equal(base.get_layer("block_15_project").get_weights()[0], before["block_15_project"][0])
    for name in watched[2:]:  # gamma, beta and the moving statistics of every BatchNorm
        for now, then in zip(base.get_layer(name).get_weights(), before[name]):
            np.testing.assert_array_equal(now, then)
    out = capsys.readouterr().out
    assert "from another configuration; starting fresh" in out and re.search(r"fine-tune epoch 1/1: loss \d", out)
    assert not (tmp_path / "ckpt").exists()  # deleted after a successful finish
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def _run(out, checkpoint, **popen):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), "--epochs", "3", "--checkpoint", str(checkpoint),
                             "--train-per-class", "24"], cwd=REPO, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.slow
def test_a_killed_fine_tune_resumes_after_its_last_saved_epoch(tmp_path):
    checkpoint = tmp_path / "ckpt"
    first = _run(tmp_path, checkpoint)
    try:
        deadline = time.monotonic() + 240
        while not saved(checkpoint, 1) and first.poll() is None:
            assert time.monotonic() < deadline, "no epoch-1 checkpoint"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        killed_out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert not list(checkpoint.glob("worker_0/fine_tune-*/ckpt-2.index")), "killed too late: epoch 2 was saved"
    epoch_1 = re.search(r"fine-tune epoch 1/3: loss (\S+)", killed_out).group(1)

    out, err = _run(tmp_path, checkpoint).communicate(timeout=300)

    assert "resuming fine-tuning after epoch 1" in out, err[-3000:]
    assert "fine-tune epoch 1/3" not in out and "fine-tune epoch 3/3" in out
    history = json.loads(out.strip().splitlines()[-1])
    assert [len(v) for v in history.values()] == [3, 3, 3, 3]
    assert f"{history['loss'][0]:.4f}" == epoch_1  # the killed run's epoch, restored from the checkpoint
    assert not (checkpoint / "worker_0").exists()


def test_cosine_schedule_warms_up_over_the_first_epoch_and_decays_to_zero():
    from trainer.config import TrainConfig
    from trainer.fit.fine_tune import learning_rate
    from trainer.model.backbones import BackboneError

    assert learning_rate(TrainConfig(fine_tune_learning_rate=1e-4), 10) == 1e-4
    schedule = learning_rate(TrainConfig(fine_tune_learning_rate=1e-4, fine_tune_epochs=4,
                                         fine_tune_schedule="cosine"), 10)
    lr = [float(schedule(step)) for step in range(41)]
    assert lr[0] == 0.0 and lr[5] == pytest.approx(5e-5) and lr[10] == pytest.approx(1e-4)
    assert all(b < a for a, b in zip(lr[10:40], lr[11:41])) and lr[40] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(BackboneError, match="--fine-tune-schedule must be one of constant, cosine"):
        learning_rate(TrainConfig(fine_tune_schedule="linear"), 10)


def test_an_unknown_schedule_is_refused_before_any_work():
    from trainer.config import train_config

    with pytest.raises(ValueError, match="--fine-tune-schedule must be one of constant, cosine, got 'linear'"):
        train_config("best", fine_tune_schedule="linear")


def test_a_zoom_that_would_crop_everything_is_refused():
    from trainer.config import train_config

    with pytest.raises(ValueError, match="--fine-tune-zoom must be at least 0 and below 1, got 1.0"):
        train_config("best", fine_tune_zoom=1.0)
