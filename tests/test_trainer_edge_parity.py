"""The device agrees with the notebook: the edge CLI, starting from the photo files, gives the
probabilities the trainer computes with model.keras (same preprocessing), on the test split."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import run_cli


def test_edge_cli_float32_probabilities_equal_keras_on_the_test_split(converted, keras_test):
    paths, keras_probs = keras_test.paths, keras_test.probs

    result = run_cli("edge", "classify", str(converted / "model_float32.tflite"), *map(str, paths),
                     "--json", "--top-k", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    edge_probs = np.zeros_like(keras_probs)
    for i, row in enumerate(rows):
        edge_probs[i, row["indices"]] = row["scores"]
    assert np.abs(edge_probs - keras_probs).max() <= 1e-5
    assert (edge_probs.argmax(1) == keras_probs.argmax(1)).all()
