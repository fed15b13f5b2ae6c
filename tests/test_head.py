"""The head is solved, not trained: the optimum of its convex objective, whatever the chunking,
the memory layout or the run; L2 chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.config import DataConfig, RunConfig, TrainConfig
from trainer.fit import head as head_module
from trainer.fit.head import train_head


def _problem(seed=0, n=300, d=24, c=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 1.2
    y = rng.integers(0, c, n)
    x = (centres[y] + rng.normal(size=(n, d)) + 3.0).astype(np.float32)  # offset: like ReLU6 features
    return x, y


def _cfg(**train):
    return RunConfig(DataConfig("unused"), train=TrainConfig(**train))


def _objective_gradient(head, x, y, l2, n_classes, weights=None, smoothing=0.0):
    """Gradient of mean weighted cross-entropy + l2 |W|^2, computed independently in float64."""
    w = np.ones(len(y)) if weights is None else weights
    z = x.astype(np.float64) @ head.kernel + head.bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = np.full((len(y), n_classes), smoothing / n_classes)
    t[np.arange(len(y)), y] += 1 - smoothing
    dz = (p - t) * w[:, None] / len(y)
    return x.T.astype(np.float64) @ dz + 2 * l2 * head.kernel, dz.sum(0)


def test_the_head_is_the_optimum_of_its_objective():
    x, y = _problem()
    head, history = train_head(_cfg(l2_grid=(1e-2,), class_weights=False), x[:200], y[:200], np.zeros((0, 24)),
                               np.zeros(0, np.int64), 3)
    g_kernel, g_bias = _objective_gradient(head, x[:200], y[:200], 1e-2, 3)
    assert np.abs(g_kernel).max() < 1e-4 and np.abs(g_bias).max() < 1e-4
    assert history["loss"][-1] < history["loss"][0]


def test_class_weights_and_label_smoothing_are_in_the_objective():
    x, y = _problem(seed=1)
    y[:150] = 0  # imbalanced
    cfg = _cfg(l2_grid=(1e-2,), label_smoothing=0.1)
    head, _ = train_head(cfg, x, y, np.zeros((0, 24)), np.zeros(0, np.int64), 3)
    counts = np.bincount(y, minlength=3)
    weights = (len(y) / (3 * counts))[y]
    g_kernel, g_bias = _objective_gradient(head, x, y, 1e-2, 3, weights, 0.1)
    assert np.abs(g_kernel).max() < 1e-4 and np.abs(g_bias).max() < 1e-4


def test_chunks_and_memory_maps_give_the_same_head(tmp_path, monkeypatch):
    x, y = _problem(seed=2)
    cfg = _cfg(l2_grid=(1e-3, 1e-2, 1e-1))
    in_ram, _ = train_head(cfg, x[:200], y[:200], x[200:], y[200:], 3)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    monkeypatch.setattr(head_module, "CHUNK", 37)  # passes cross chunk boundaries
    streamed, _ = train_head(cfg, mapped[:200], y[:200], mapped[200:], y[200:], 3)
    assert streamed.l2 == in_ram.l2
    np.testing.assert_allclose(streamed.probabilities(x), in_ram.probabilities(x), atol=1e-4)


def test_l2_is_chosen_on_validation_and_the_run_repeats():
    x, y = _problem(seed=3, n=120, d=60)  # few photos, many features: needs regularisation
    cfg = _cfg(l2_grid=(1e-5, 1e-3, 1e-1, 10.0))
    first, history = train_head(cfg, x[:60], y[:60], x[60:], y[60:], 3)
    again, _ = train_head(cfg, x[:60], y[:60], x[60:], y[60:], 3)
    np.testing.assert_array_equal(first.kernel, again.kernel)
    assert history["l2"] == [first.l2] and len(history["val_loss"]) == len(history["loss"])
    nll = {}
    for l2 in cfg.train.l2_grid:
        h, _ = train_head(_cfg(l2_grid=(l2,)), x[:60], y[:60], np.zeros((0, 60)), np.zeros(0, np.int64), 3)
        p = h.probabilities(x[60:])
        nll[l2] = -np.mean(np.log(p[np.arange(60), y[60:]]))
    assert first.l2 == min(nll, key=nll.get)


def test_iterations_do_not_grow_with_the_photos():
    """The cost is linear in the photos: L-BFGS needs about as many passes at 4x the data."""
    x, y = _problem(seed=4, n=4000, d=32)
    cfg = _cfg(l2_grid=(1e-3,))
    _, small = train_head(cfg, x[:1000], y[:1000], np.zeros((0, 32)), np.zeros(0, np.int64), 3)
    _, large = train_head(cfg, x, y, np.zeros((0, 32)), np.zeros(0, np.int64), 3)
    assert len(large["loss"]) <= 1.5 * len(small["loss"]) + 5


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probabilities_match_a_keras_dense_softmax(smoothing):
    import keras

    x, y = _problem(seed=5)
    head, _ = train_head(_cfg(l2_grid=(1e-2,), label_smoothing=smoothing), x, y, np.zeros((0, 24)),
                         np.zeros(0, np.int64), 3)
    dense = keras.layers.Dense(3, activation="softmax")
    dense.build((None, 24))
    dense.set_weights([head.kernel, head.bias])
    np.testing.assert_allclose(np.asarray(dense(x)), head.probabilities(x), atol=1e-5)
