"""Google's own expectations (libcoral, tflite-support Task Library) through our CLI.

See ../shared/data/REFERENCE_EXPECTATIONS.md. Each case runs `python -m edge classify --json`
as a subprocess, so it covers the whole device path: model load, metadata, the shared
half-pixel bilinear preprocessing, dequantization and ranking.
"""

import pytest
from test_edge_support import AUTOML, CORAL, FLOWER_NAMES, FLOWERS, SUPPORT, json_lines, run_edge

CORAL_LABELS = CORAL / "imagenet_labels.txt"


def classify_json(model, *paths, args=()):
    proc = run_edge("classify", "--json", *args, model, *paths)
    assert proc.returncode == 0, proc.stderr
    return json_lines(proc.stdout)


@pytest.mark.parametrize(
    "model, index, min_score",
    [
        ("mobilenet_v2_1.0_224_quant.tflite", 286, 0.70),
        ("tf2_mobilenet_v2_1.0_224_ptq.tflite", 286, 0.60),
        ("mobilenet_v1_0.25_128_quant.tflite", 283, 0.25),
    ],
)
def test_libcoral_cat_cases(model, index, min_score):
    """libcoral model_test_cases: expected label in the top 3 with at least the given score."""
    (row,) = classify_json(CORAL / model, CORAL / "cat.bmp", args=("--top-k", "3", "--labels", CORAL_LABELS))
    assert index in row["indices"], row
    assert row["scores"][row["indices"].index(index)] >= min_score, row
    assert row["labels"][row["indices"].index(index)] in ("Egyptian cat", "tiger cat")


def test_task_library_burger_jpg_uses_labels_from_metadata():
    (row,) = classify_json(SUPPORT / "mobilenet_v1_0.25_224_quant.tflite", SUPPORT / "burger.jpg",
                           args=("--top-k", "1", "--threshold", "0.5"))
    assert row["indices"] == [934] and row["labels"] == ["cheeseburger"]
    assert row["scores"][0] == pytest.approx(0.96, abs=0.01)


def test_task_library_burger_224_png():
    (row,) = classify_json(SUPPORT / "mobilenet_v1_0.25_224_quant.tflite", SUPPORT / "burger-224.png")
    assert row["labels"][0] == "cheeseburger" and row["scores"][0] >= 0.90


def test_automl_flower_names_from_metadata():
    photos = [sorted((FLOWERS / name).glob("*.jpg"))[0] for name in ("daisy", "roses")]
    rows = classify_json(AUTOML, *photos, args=("--top-k", "5"))
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for row, expected in zip(rows, ("daisy", "roses")):
        assert sorted(row["labels"]) == FLOWER_NAMES
        assert row["labels"][0] == expected, row
        assert row["latency_ms"] > 0
