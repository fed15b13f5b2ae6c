"""The parity gate: parity.json numbers (recomputed independently), the tie rule, thresholds,
the non-zero exit, the val fallback, and the model card built from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_run, run_cli
from trainer.report.parity import Thresholds, compare, default_thresholds

MODES = ["float32", "float16", "dynamic", "int8", "full_int8"]


@pytest.fixture()
def fake_model(tmp_path) -> Path:
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(b"not a model, only hashed")
    return path


# --------------------------------------------------------------------------- pure numbers
def test_tie_rule_counts_keras_top1_among_tied_tflite_maxima(fake_model):
    keras = np.array([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.5, 0.1, 0.4]], np.float32)
    tflite = np.array([[0.5, 0.5, 0.0],    # tie 0/1; Keras says 1: agrees by the tie rule only
                       [0.7, 0.2, 0.1],    # clear agreement
                       [0.5, 0.0, 0.5],    # tie 0/2; Keras says 2: agrees by the tie rule only
                       [0.1, 0.8, 0.1]],   # clear disagreement
                      np.float32)
    y = np.array([1, 0, 0, 0])
    p = compare("int8", fake_model, keras, tflite, y, Thresholds())
    assert p.agreement == 75.0 and p.strict_agreement == 25.0 and p.ties == 2
    # accuracy is the edge runtime's top-1 (lowest index on a tie): rows 0 -> 0, 1 -> 0, 2 -> 0, 3 -> 1
    assert p.accuracy == 0.5 and p.delta_acc == -25.0  # Keras gets rows 0, 1 and 3 right
    assert p.max_abs_dp == pytest.approx(0.7) and p.mean_abs_dp == pytest.approx(np.abs(tflite - keras).mean())
    assert p.n == 4 and p.passed


def test_thresholds_fail_only_on_evidence(fake_model):
    """max |dp| is a bound on every photo; one flip in four is no evidence of agreement < 75.1 %,
    while flipping every photo is (tests/test_gate_evidence.py has the statistics)."""
    keras = np.eye(4, dtype=np.float32)
    tflite = keras.copy()
    tflite[3] = [0.0, 0.0, 0.9, 0.1]  # one of four flips: agreement 75%, accuracy -25 points
    y = np.arange(4)
    tight = Thresholds(max_abs_dp=0.89, min_delta_acc=-24.9, min_agreement=75.1)
    p = compare("int8", fake_model, keras, tflite, y, tight)
    assert p.failures == ["max |dp| 0.9 > 0.89"] and p.decision == "fail"
    loose = compare("int8", fake_model, keras, tflite, y, Thresholds(min_delta_acc=-24.9, min_agreement=75.1))
    assert loose.passed and loose.decision == "undecided" and loose.evidence["agreement"]["point"] == 75.0
    all_wrong = compare("int8", fake_model, keras, np.roll(keras, 1, axis=1), y, Thresholds(min_agreement=60.0))
    assert all_wrong.decision == "fail" and all_wrong.failures[0].startswith("agreement 0.00%")


def test_default_thresholds_match_the_documented_gate():
    t = default_thresholds()
    assert t["float32"] == Thresholds(max_abs_dp=1e-4) and t["float16"] == Thresholds(max_abs_dp=0.05)
    assert t["int8"] == Thresholds(min_delta_acc=-0.3, min_agreement=99.0, min_none_agreement=97.0)
    assert t["dynamic"] == Thresholds(min_delta_acc=-1.0, min_agreement=97.0, min_none_agreement=97.0)
    assert t["full_int8"] == Thresholds(min_delta_acc=-1.0, min_agreement=97.0,  # all-integer: looser
                                        min_none_agreement=97.0)
    given = default_thresholds(min_agreement=90.0)
    assert given["int8"] == Thresholds(min_delta_acc=-0.3, min_agreement=90.0, min_none_agreement=97.0)
    assert given["full_int8"].min_agreement == 90.0 and given["float32"] == t["float32"]


# --------------------------------------------------------------------------- on the real run
def test_parity_json_has_every_variant_and_its_fields(converted):
    report = json.loads((converted / "parity.json").read_text())
    assert report["split"] == "test" and report["n"] == 40 and report["passed"] is True
    assert set(report["definitions"]) >= {"agreement", "delta_acc", "max_abs_dp"}
    assert list(report["variants"]) == MODES
    for mode, v in report["variants"].items():
        assert v["file"] == f"model_{mode}.tflite" and v["n"] == 40 and v["passed"] is True
        assert {"accuracy", "delta_acc", "agreement", "strict_agreement", "ties", "max_abs_dp", "mean_abs_dp",
                "thresholds", "failures", "sha256"} <= set(v)
    assert report["variants"]["int8"]["thresholds"] == {"min_delta_acc": -5.0, "min_agreement": 90.0,
                                                        "min_none_agreement": 97.0}
    assert report["variants"]["float32"]["thresholds"] == {"max_abs_dp": 1e-4}


def test_float32_matches_keras_probabilities(converted):
    v = json.loads((converted / "parity.json").read_text())["variants"]
    assert v["float32"]["max_abs_dp"] <= 1e-4  # the real number is ~1e-6
    assert v["float32"]["agreement"] == 100.0 and v["float32"]["delta_acc"] == 0.0
    assert v["float16"]["max_abs_dp"] <= 0.05


def test_parity_numbers_match_an_independent_recomputation(converted, keras_test):
    """Keras and the raw ai_edge_litert interpreter, without edge.classifier or trainer.report.parity."""
    from ai_edge_litert.interpreter import Interpreter

    images, y, kp = keras_test.images, keras_test.y, keras_test.probs
    interpreter = Interpreter(model_path=str(converted / "model_full_int8.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    raw = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        raw.append(interpreter.get_tensor(out["index"])[0].copy())
    probs = np.array(raw, np.float64) / 256.0
    report = json.loads((converted / "parity.json").read_text())
    v = report["variants"]["full_int8"]
    assert v["max_abs_dp"] == pytest.approx(np.abs(probs - kp).max(), abs=1e-6)
    # over the 5 classes (the 6th output, none of these, is judged on its own)
    reject_keras, reject_edge = kp.argmax(1) == 5, probs.argmax(1) == 5
    assert v["none_of_these"]["agreement"] == pytest.approx(np.mean(reject_keras == reject_edge) * 100, abs=1e-3)
    kp, probs = kp[:, :5], probs[:, :5]
    assert report["keras_accuracy"] == pytest.approx(np.mean(kp.argmax(1) == y), abs=1e-4)
    agree = np.mean(probs[np.arange(len(y)), kp.argmax(1)] == probs.max(1)) * 100
    assert v["agreement"] == pytest.approx(agree, abs=1e-3)


@pytest.mark.slow
def test_gate_exits_1_when_a_threshold_is_impossibly_tight(converted, tmp_path):
    run = copy_run(converted, tmp_path / "run")
    before = json.loads((run / "parity.json").read_text())
    result = run_cli("trainer", "convert", str(run), "--mode", "dynamic", "--min-agreement", "100.5")
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "parity gate failed: dynamic" in result.stderr and "FAIL: agreement" in result.stdout
    after = json.loads((run / "parity.json").read_text())
    assert after["passed"] is False and after["variants"]["dynamic"]["passed"] is False
    assert after["variants"]["dynamic"]["failures"][0].startswith("agreement")
    # the other variants' entries are still current (same model.keras, same files): kept
    assert after["variants"]["int8"] == before["variants"]["int8"]
    assert list(after["variants"]) == MODES


def test_parity_falls_back_to_val_when_there_is_no_test_split(converted, tmp_path):
    from trainer.report.parity import held_out
    from trainer.run_dir import RunDir

    run = copy_run(converted, tmp_path / "run")
    splits = json.loads((run / "splits.json").read_text())
    (run / "splits.json").write_text(json.dumps({**splits, "test": []}))
    name, photos = held_out(RunDir.open(run))
    assert name == "val" and len(photos) == len(photos.labels) == len(splits["val"]) == 20


def test_model_card_describes_data_metrics_and_every_variant(converted):
    card = json.loads((converted / "model_card.json").read_text())
    report = json.loads((converted / "report.json").read_text())
    assert card["classes"] == (converted / "labels.txt").read_text().splitlines()
    assert card["data"]["photos"] == 200 and card["splits"]["test"]["n"] == 40
    assert card["metrics"]["test"]["accuracy"] == report["splits"]["test"]["accuracy"]
    assert list(card["variants"]) == MODES
    int8 = card["variants"]["int8"]
    assert int8["input"] == "uint8" and int8["output"] == "float32" and int8["input_quantization"] == [1.0, 0]
    assert card["variants"]["full_int8"]["output"] == "uint8"
    assert int8["size_bytes"] == (converted / "model_int8.tflite").stat().st_size
    assert int8["parity"]["passed"] is True and int8["min_runtime_version"]
    assert card["intended_use"] and card["limitations"]
    md = (converted / "model_card.md").read_text()
    headings = ("Intended use", "Data", "Preprocessing", "Metrics", "TFLite variants", "Limitations")
    assert all(f"## {heading}" in md for heading in headings)
    assert all(f"| {mode} | " in md for mode in MODES)
    o = report["open_set"]  # the session's run has the none-of-these output (train's default)
    assert card["outputs"] == [*card["classes"], o["label"]] and card["open_set"]["threshold"] == o["threshold"]
    assert [r["left_out"] for r in card["open_set"]["leave_one_class_out"]["classes"]] == card["classes"]
    assert "## None of these" in md and all(f"| {c} | " in md.split("## None of these")[1] for c in card["classes"])
    parity = json.loads((converted / "parity.json").read_text())
    none = parity["variants"]["int8"]["none_of_these"]  # the reject decision, judged apart from the classes
    assert int8["parity"]["none_of_these"] == none and f"int8 {none['agreement']:.2f} %" in md


def _card_run(tmp_path, open_set: dict | None) -> Path:
    """The files model_card.build reads, no model: three classes, report.json with or without open_set."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"")
    (run / "labels.txt").write_text("a\nb\nc\n")
    splits = {"data_dir": "/d", "labels": ["a", "b", "c"], "train": [{"path": "a/1.jpg", "label": 0}], "val": [],
              "test": [{"path": "b/1.jpg", "label": 1}, {"path": "c/1.jpg", "label": 2}], "skipped": []}
    (run / "splits.json").write_text(json.dumps(splits))
    (run / "config.json").write_text(json.dumps({"data": {"dir": "/d"}}))
    report = {"splits": {"test": {"n": 2, "accuracy": 0.5, "macro_f1": 0.33}}}
    (run / "report.json").write_text(json.dumps({**report, **({"open_set": open_set} if open_set else {})}))
    return run


def test_model_card_describes_the_none_of_these_output(tmp_path):
    from tests.test_report_html import open_set
    from trainer.report import model_card

    card = model_card.build(_card_run(tmp_path, open_set()))
    assert card["classes"] == ["a", "b", "c"] and card["outputs"] == ["a", "b", "c", "unknown"]
    o = card["open_set"]
    assert (o["label"], o["output_index"], o["threshold"], o["keep"]) == ("unknown", 3, 0.629686, 0.95)
    assert o["held_out"] == {"split": "test", "photos": 587, "rejected": 0.0767, "accuracy": 0.9012,
                             "accuracy_with_rejections": 0.8501}
    assert o["calibration"] == {"temperature": 0.9057, "ece_before": 0.0365, "ece_after": 0.031, "photos": 587}
    loco = o["leave_one_class_out"]
    assert loco["mean"]["auroc"] == 0.7505 and [r["left_out"] for r in loco["classes"]] == ["daisy", "sun<flowers>"]
    assert loco["classes"][0]["auroc_max_probability"] == 0.8212
    assert "unknown" in card["limitations"][0] and "26.9 %" in card["limitations"][0]
    md = model_card.render_markdown(card)
    assert "- one more output after them, `unknown` (index 3)" in md
    section = md.split("## None of these\n", 1)[1].split("\n## ", 1)[0]
    assert "below 0.6297 gets `unknown`" in section and "keeps 95 % of the val photos" in section
    assert "- test: 587 photos, 7.7 % answered `unknown`; accuracy 0.9012 without rejections, 0.8501" in section
    assert "temperature 0.9057" in section and "0.0365 -> 0.0310" in section
    assert "| daisy | 101 / 486 | 0.707 | 0.821 | 15.8 % | 23.8 % | 92.2 % | 0.9177 | 0.8642 |" in section
    assert "| **mean** |  | 0.750 | 0.761 | 26.9 % | 21.1 % | 92.5 % | 0.9135 | 0.8608 |" in section
    assert section.count("\n| ") == 4  # header, daisy, sun<flowers>, mean


def test_model_card_without_open_set_has_no_section(tmp_path):
    from tests.test_report_html import open_set
    from trainer.report import model_card

    card = model_card.build(_card_run(tmp_path, None))
    assert card["open_set"] is None and card["outputs"] == card["classes"] == ["a", "b", "c"]
    assert card["limitations"] == model_card.LIMITS and "None of these" not in model_card.render_markdown(card)
    small = model_card.build(_card_run(tmp_path / "small", open_set(split="val", loco=False)))
    assert small["open_set"]["held_out"]["split"] == "val" and small["open_set"]["leave_one_class_out"] is None
    assert "- leave one class out: not measured" in model_card.render_markdown(small)
