"""edge.postprocess on plain arrays: dequantization, the softmax rule, ranking, filters, labels."""

import numpy as np
import pytest

from edge.postprocess import (
    Category,
    dequantize,
    is_probabilities,
    parse_labels,
    rank,
    softmax,
    to_scores,
    top_categories,
)

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def test_automl_uint8_softmax_output_is_read_as_probabilities():
    # tflite-support's postprocessing case: uint8 output, scale 1/256, zero point 0.
    raw = np.array([0, 64, 255, 32, 128], dtype=np.uint8)
    scores = to_scores(raw, (1 / 256, 0))
    cats = top_categories(scores, FLOWERS, top_k=None)
    assert [(c.label, c.score) for c in cats] == [
        ("roses", 0.99609375), ("tulips", 0.5), ("dandelion", 0.25), ("sunflowers", 0.125), ("daisy", 0.0)
    ]


def test_dequantize_subtracts_zero_point_without_wrapping():
    q = np.array([0, 255], dtype=np.uint8)
    assert dequantize(q, 0.5, 128).tolist() == [-64.0, 63.5]
    q8 = np.array([-128, 127], dtype=np.int8)
    assert dequantize(q8, 1.0, -128).tolist() == [0.0, 255.0]


def test_int8_softmax_encoding_is_probabilities():
    q = np.array([-128, 127, -64], dtype=np.int8)  # zero point -128: probabilities 0, .996, .25
    assert to_scores(q, (1 / 256, -128)).tolist() == [0.0, 0.99609375, 0.25]


def test_quantized_logits_get_a_softmax():
    q = np.array([58, 158, 8], dtype=np.uint8)  # like mobilenet_v2 nometadata: logits, scale .0989
    scores = to_scores(q, (0.09889253973960876, 58))
    assert scores.sum() == pytest.approx(1.0, abs=1e-6)
    assert scores.argmax() == 1


def test_float_probabilities_pass_through_and_logits_do_not():
    probs = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    assert np.array_equal(to_scores(probs), probs)
    logits = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    assert np.allclose(to_scores(logits), softmax(logits))
    assert not is_probabilities(np.array([0.9, 0.9]))  # in [0, 1] but not a distribution


def test_exact_ties_rank_lower_index_first():
    scores = np.array([0.25, 0.5, 0.25, 0.5], dtype=np.float32)
    assert rank(scores).tolist() == [1, 3, 0, 2]
    assert [c.index for c in top_categories(scores, top_k=3)] == [1, 3, 0]


def test_threshold_top_k_and_index_labels():
    scores = np.array([0.05, 0.6, 0.3, 0.05], dtype=np.float32)
    assert top_categories(scores, top_k=5, threshold=0.3) == [Category(1, "1", pytest.approx(0.6)),
                                                              Category(2, "2", pytest.approx(0.3))]
    assert len(top_categories(scores, top_k=0)) == 4


def test_allow_and_deny_apply_before_top_k():
    scores = np.array([0.1, 0.2, 0.3, 0.15, 0.25], dtype=np.float32)
    assert [c.label for c in top_categories(scores, FLOWERS, top_k=2, deny=["roses"])] == ["tulips", "dandelion"]
    assert [c.label for c in top_categories(scores, FLOWERS, top_k=3, allow=["daisy", "sunflowers"])] == [
        "sunflowers", "daisy"]


def test_label_files_plain_and_indexed():
    assert parse_labels("background\ncat\n\ndog\n\n") == ["background", "cat", "", "dog"]
    assert parse_labels("0  background\n2  dog\n1  cat\n") == ["background", "cat", "dog"]
    assert parse_labels("1 to 2 apples\nbanana\n") == ["1 to 2 apples", "banana"]  # not every line indexed
