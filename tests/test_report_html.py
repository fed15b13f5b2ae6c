"""RUN_DIR/report.html: built from the run directory's files only, self-contained, and it
renders in headless Chromium with every image loaded, no console error and no request other
than the page itself and its data: URIs."""

from __future__ import annotations

import html.parser
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import PreprocessSpec
from tests import browser
from tests.conftest import run_cli
from tests.paths import SAMPLE_FLOWERS
from trainer import atomic
from trainer.data import dataset
from trainer.report import metrics, page, plots

SAMPLE = SAMPLE_FLOWERS


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def make_run(run, parity_fail: bool = True):
    """A run directory with every input file report.html reads, made by the real writers
    (scan, split, metrics, plots) on the shipped sample photos and random probabilities."""
    classes, samples = dataset.scan(SAMPLE)
    train, val, test = dataset.stratified_split(samples, len(classes), 0.1, 0.2, 0)
    skipped = [{"path": "roses/broken.jpg", "reason": "cannot identify image file"}]
    splits = dataset.Splits(str(SAMPLE), classes, train, val, test, skipped)
    rng = np.random.default_rng(0)
    probs = {p: rng.dirichlet(np.ones(len(classes)) * 0.3, len(splits.part(p))) for p in ("train", "val", "test")}
    paths = [s.path for s in test]
    mistakes = metrics.mistakes("test", paths, splits.targets("test"), probs["test"], classes)
    mistakes.insert(0, {"split": "test", "path": "daisy/gone.jpg", "label": "daisy", "predicted": "roses",
                        "confidence": 0.99})
    history = {"head": {"loss": [1.0, 0.6, 0.4], "accuracy": [0.4, 0.7, 0.8], "val_loss": [1.1, 0.8, 0.7],
                        "val_accuracy": [0.3, 0.6, 0.7]}}
    report = {"labels": classes, "counts": {p: len(splits.part(p)) for p in ("train", "val", "test")},
              "splits": {p: metrics.classification_report(splits.targets(p), probs[p], classes) for p in probs},
              "skipped": skipped, "timings": {"total_s": 12.3}, "history": history, "mistakes": mistakes,
              "open_set": open_set()}
    run.mkdir()
    atomic.write_json(run / "report.json", report)
    atomic.write_json(run / "splits.json", splits.to_dict())
    atomic.write_json(run / "config.json", {"data": {"dir": str(SAMPLE)}, "backbone": {"name": "mobilenet_v2"},
                                            "preprocess": PreprocessSpec().to_dict()})
    atomic.write_text(run / "labels.txt", "\n".join(classes) + "\n")
    plots.training_curves(history, run / "training_curves.png")
    variant = {"file": "model_int8.tflite", "n": 40, "accuracy": 0.75, "delta_acc": -2.5, "agreement": 92.5,
               "strict_agreement": 92.5, "max_abs_dp": 0.31, "mean_abs_dp": 0.02,
               "failures": ["agreement 92.5 < 97.0"] if parity_fail else [], "passed": not parity_fail}
    atomic.write_json(run / "parity.json", {"split": "test", "n": 40, "keras_accuracy": 0.775, "passed": not parity_fail,
                                            "variants": {"int8": variant}})
    atomic.write_json(run / "bench.json", {"settings": {"threads": [1, 2], "runs": 50, "warmup": 5},
                                           "machine": {"backend": "ai-edge-litert", "cpu_count": 2, "machine": "x86_64"},
                                           "variants": [{"variant": "int8", "status": "parity FAILED", "size_mb": 2.75,
                                                         "input_dtype": "uint8", "accuracy": 0.75, "delta_acc": -2.5,
                                                         "latency": {"1": {"p50_ms": 1.234, "p90_ms": 1.5,
                                                                           "images_per_s": 789.1}}}]})
    atomic.write_json(run / "model_card.json", {"name": "edge-transfer mobilenet_v2 classifier", "intended_use": "photos",
                                                "preprocessing": {"input": "RGB 224x224"}, "limitations": ["a <b> limit"],
                                                "variants": {"int8": {"size_mb": 2.75, "input": "uint8", "output": "uint8",
                                                                      "min_runtime_version": "1.14.0"}}})
    return report


def test_wilson_interval_closed_forms():
    z2 = 1.959963984540054 ** 2
    assert metrics.wilson(0.0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert metrics.wilson(1.0, 10) == pytest.approx((10 / (10 + z2), 1.0))
    lo, hi = metrics.wilson(0.75, 40)  # 30 of 40: the textbook [0.598, 0.858]
    assert (round(lo, 3), round(hi, 3)) == (0.598, 0.858)
    lo, hi = metrics.wilson(0.5, 10_000)  # large n: the normal interval
    assert hi - 0.5 == pytest.approx(1.96 * math.sqrt(0.25 / 10_000), rel=1e-3)


def test_page_is_self_contained_and_shows_every_section(tmp_path):
    report = make_run(tmp_path / "run")
    path = page.write(tmp_path / "run")
    html = path.read_text(encoding="utf-8")
    assert path == tmp_path / "run" / "report.html"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # atomic: no temp file left
    tags = _tags(html)
    assert not [t for t, a in tags if t in ("script", "link", "iframe", "object", "embed")]
    urls = [a.get(k) for _, a in tags for k in ("src", "href") if a.get(k)]
    assert urls and all(u.startswith("data:image/") for u in urls), urls[:3]
    images = [a["src"] for t, a in tags if t == "img"]
    mistakes = report["mistakes"]
    assert len(images) == 1 + len(mistakes) - 1  # curves + every mistake but the missing photo
    assert html.count('class="missing"') == 1 and "daisy/gone.jpg" in html
    for section in ("Dataset", "Metrics (model.keras)", "Per class (test)", "Confusion matrix", "Training curves",
                    "Photos it got wrong", "TFLite parity", "Benchmark", "Model card", "Configuration",
                    "None of these"):
        assert section in html, section
    for label in report["labels"]:
        assert f"<td>{label}</td>" in html
    test = report["splits"]["test"]
    lo, hi = metrics.wilson(test["accuracy"], test["n"])
    assert f"{test['accuracy']:.4f} <span class=muted>[{lo:.3f}, {hi:.3f}]</span>" in html
    assert "roses/broken.jpg" in html and "cannot identify image file" in html
    assert "FAIL" in html and "<b>int8</b>: agreement 92.5 &lt; 97.0" in html and "1.23 / 1.50 <span class=muted>·</span> 789" in html
    assert "a &lt;b&gt; limit" in html  # text is escaped


def test_thumbnail_is_the_photo_as_the_model_saw_it(tmp_path):
    photo = sorted((SAMPLE / "daisy").glob("*.jpg"))[0]
    uri = page.thumbnail(photo, PreprocessSpec())
    import base64
    import io

    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (96, 96)
    assert page.thumbnail(tmp_path / "nothing.jpg", PreprocessSpec()) is None
    (tmp_path / "text.jpg").write_text("not a photo")
    assert page.thumbnail(tmp_path / "text.jpg", PreprocessSpec()) is None


def test_only_report_json_is_required(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(dataset.DataError, match="report.json"):
        page.write(tmp_path)
    assert page.refresh(tmp_path) is None and not (tmp_path / "report.html").exists()
    run.mkdir()
    atomic.write_json(run / "report.json", {"splits": {"test": {"n": 0, "accuracy": None}}})
    html = page.write(run).read_text()
    assert "Training report" in html and "TFLite parity" not in html and "<img" not in html


def open_set(split: str = "test", loco: bool = True) -> dict:
    """report.json's open_set as `train` writes it (the numbers of a real tf_flowers run; one class
    name needs escaping)."""
    rows = [{"left_out": "daisy", "known_photos": 486, "left_out_photos": 101, "auroc": 0.7067,
             "auroc_max_probability": 0.8212, "rejected": 0.1584, "rejected_max_probability": 0.2376,
             "known_kept": 0.9218, "known_accuracy": 0.9177, "known_accuracy_with_rejections": 0.8642},
            {"left_out": "sun<flowers>", "known_photos": 475, "left_out_photos": 112, "auroc": 0.5894,
             "auroc_max_probability": 0.7968, "rejected": 0.0625, "rejected_max_probability": 0.2143,
             "known_kept": 0.9221, "known_accuracy": 0.9053, "known_accuracy_with_rejections": 0.8526}]
    mean = {"auroc": 0.7505, "auroc_max_probability": 0.7614, "rejected": 0.2692, "rejected_max_probability": 0.2114,
            "known_kept": 0.9247, "known_accuracy": 0.9135, "known_accuracy_with_rejections": 0.8608}
    return {"label": "unknown", "score": "prototype_cosine", "threshold": 0.629686, "keep": 0.95,
            "prototypes_per_class": 8, "prototypes": 40, "sharpness": 25.0,
            split: {"photos": 587, "rejected": 0.0767, "accuracy": 0.9012, "accuracy_with_rejections": 0.8501},
            "calibration": {"temperature": 0.9057, "ece_before": 0.0365, "ece_after": 0.031, "photos": 587},
            "leave_one_class_out": {"classes": rows, "mean": mean, "keep": 0.95} if loco else None}


def _page_with(run, extra: dict) -> str:
    run.mkdir()
    atomic.write_json(run / "report.json", {"splits": {"test": {"n": 587, "accuracy": 0.9012}}, **extra})
    return page.render(run)


def _cells(html: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    row = html.split(f"<tr><td>{first}</td>", 1)[1].split("</tr>", 1)[0]
    return [c.split(">", 1)[1] for c in row.split("</td>")[:-1]]


def test_open_set_section_shows_threshold_split_calibration_and_leave_one_class_out(tmp_path):
    html = _page_with(tmp_path / "run", {"open_set": open_set()})
    section = html.split("<h2>None of these (<code>unknown</code>)</h2>", 1)[1].split("</section>", 1)[0]
    assert "threshold <b>0.6297</b> gets <code>unknown</code>" in section
    assert "keeps 95 % of the val photos" in section
    assert "40 class prototypes (8 per class)" in section
    assert ("<b>test</b> (587 photos): 7.7 % answered <code>unknown</code>; accuracy 0.9012 without rejections, "
            "0.8501 with each rejection counted as wrong") in section
    assert "temperature 0.9057" in section and "on 587 test photos 0.0365 → 0.0310" in section
    assert "Leave one class out (threshold keeping 95 % of val)" in section
    # left out, photos, AUROC ours / max probability, rejected ours / max probability, known kept,
    # known accuracy without / with rejections
    assert _cells(section, "daisy") == ["101 / 486", "0.707", "0.821", "15.8 %", "23.8 %", "92.2 %", "0.9177",
                                        "0.8642"]
    assert _cells(section, "sun&lt;flowers&gt;")[1:3] == ["0.589", "0.797"]  # escaped, never raw
    assert "sun<flowers>" not in html
    assert _cells(section, "<b>mean</b>") == ["", "<b>0.750</b>", "<b>0.761</b>", "<b>26.9 %</b>", "<b>21.1 %</b>",
                                              "<b>92.5 %</b>", "<b>0.9135</b>", "<b>0.8608</b>"]
    assert section.count("<tr><td>") == 3  # one row per class and the mean
    assert html.index("Metrics (model.keras)") < html.index("None of these")  # right after the metrics


def test_open_set_section_on_val_and_without_leave_one_class_out(tmp_path):
    html = _page_with(tmp_path / "run", {"open_set": open_set(split="val", loco=False)})
    assert "<b>val</b> (587 photos): 7.7 %" in html and "on 587 val photos 0.0365 → 0.0310" in html
    assert "Leave one class out: not measured" in html and "AUROC" not in html


def test_no_open_set_no_section(tmp_path):
    plain = _page_with(tmp_path / "plain", {})
    assert "None of these" not in plain and "AUROC" not in plain and "unknown" not in plain
    older = _page_with(tmp_path / "older", {"open_set": None})  # --no-open-set / an older run
    assert older.replace("older", "plain") == plain


@pytest.mark.browser
def test_browser_check_catches_broken_images_console_errors_and_network(tmp_path):
    """The negative control: the Chromium check below can fail."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
                   "<script>console.error('boom')</script></body></html>")
    load = browser.load(bad.as_uri())
    assert [i["naturalWidth"] for i in load.images] == [0, 0]
    assert any("boom" in e for e in load.errors) and any("load failed" in e or "ERR_" in e for e in load.errors)
    assert "http://127.0.0.1:9/x.png" in load.requests


@pytest.mark.browser
def test_page_renders_in_chromium(tmp_path):
    make_run(tmp_path / "run")
    written = page.write(tmp_path / "run")
    load = browser.load(written.as_uri(), screenshot=tmp_path / "report.png")
    assert load.errors == []
    assert len(load.images) >= 2 and all(i["complete"] and i["naturalWidth"] > 0 for i in load.images), load.images
    assert all(u == written.as_uri() or u.startswith("data:") for u in load.requests), load.requests
    shot = Image.open(load.screenshot)
    assert shot.width == 1200 and shot.height > 2000  # the whole page, not just the viewport
    assert len(np.unique(np.asarray(shot.convert("L")))) > 50  # rendered content, not a blank canvas


@pytest.mark.slow
@pytest.mark.browser
def test_train_convert_and_bench_write_the_page(converted, tmp_path):
    """The session's real run: train recorded its mistakes and wrote the page, convert added the
    parity table and model card, bench adds its table; Chromium renders the result cleanly."""
    report = json.loads((converted / "report.json").read_text())
    splits = dataset.read_splits(converted)
    mistakes = report["mistakes"]
    test_paths = {s.path for s in splits.test}
    assert 0 < len(mistakes) <= 48
    assert all(m["split"] == "test" and m["path"] in test_paths and m["label"] != m["predicted"] for m in mistakes)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    wrong = report["splits"]["test"]["n"] - round(report["splits"]["test"]["accuracy"] * report["splits"]["test"]["n"])
    assert len(mistakes) == min(48, wrong)
    html = (converted / "report.html").read_text()
    assert "TFLite parity" in html and "Model card" in html and "Benchmark" not in html
    assert "none of these %" in html.split("TFLite parity")[1]  # the reject decision's own agreement
    run = shutil.copytree(converted, tmp_path / "run")
    result = run_cli("trainer", "bench", str(run), "--threads", "1", "--runs", "3", "--warmup", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    written = run / "report.html"
    assert "Benchmark" in written.read_text()
    load = browser.load(written.as_uri(), screenshot=tmp_path / "report.png")
    assert load.errors == [] and all(i["naturalWidth"] > 0 for i in load.images)
    check = report["data_check"]  # "Check your data": the top photos of each finding
    checked = (len(check["mislabeled"]["top"]) + len(check["outliers"]["top"])
               + sum(min(4, len(g["paths"])) for g in check["duplicates"]["top"]))
    assert "Check your data" in written.read_text()
    assert len(load.images) == 1 + len(mistakes) + checked


def test_mistakes_are_the_wrong_photos_most_confident_first():
    labels = ["a", "b", "c"]
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.05, 0.9, 0.05]])
    y = np.array([0, 0, 2, 1, 2])  # rows 1, 3, 4 are wrong
    got = metrics.mistakes("val", ["p0", "p1", "p2", "p3", "p4"], y, probs, labels)
    assert [(m["path"], m["label"], m["predicted"], m["confidence"]) for m in got] == [
        ("p4", "c", "b", 0.9), ("p1", "a", "b", 0.7), ("p3", "b", "a", 0.5)]
    assert {m["split"] for m in got} == {"val"}
    assert len(metrics.mistakes("val", ["p0", "p1", "p2", "p3", "p4"], y, probs, labels, limit=2)) == 2
