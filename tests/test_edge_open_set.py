"""The "none of these" (open-set) class on the device: open_set.json read from the model's
metadata, the verdict (the reject class ranks first, or the user's --threshold rule), and how
`edge classify` and `edge camera` report it. One tiny hand-built float model, no TensorFlow:
the mean colour of the photo picks the class, and grey photos are "none of these"."""

from __future__ import annotations

import io
import json
import zipfile

import flatbuffers
import numpy as np
import pytest
from PIL import Image
from test_edge_support import json_lines, run_edge

from edge import schema
from edge.camera import FrameResult, describe, frame_json, run
from edge.classifier import Classifier, ClassifierOptions, Result
from edge.cli import app, format_result
from edge.metadata import OpenSet, metadata_dict, read_metadata
from edge.postprocess import Category, best_known, is_none_of_these

LABELS = ["daisy", "roses", "tulips", "unknown"]  # red, green, blue; the last is the reject class
OPEN_SET = {"label": "unknown", "threshold": 0.61, "keep": 0.95, "score": "prototype_cosine", "prototypes_per_class": 8}
COLOURS = {"red": (255, 0, 0), "grey": (128, 128, 128), "pinkish": (255, 128, 128), "pale": (255, 92, 92)}


# --------------------------------------------------------------------------- the tiny model
def tiny_model() -> bytes:
    """[1, 4, 4, 3] float32 RGB 0..255 -> MEAN over the pixels -> FULLY_CONNECTED -> SOFTMAX [1, 4].

    Known class k: 8 * (2 x_k - x_r - x_g - x_b) / 255 (its colour against the rest); the
    reject class: a constant 2. A saturated colour is its class; grey is the reject class."""
    from ai_edge_litert import schema_py_generated as tfl

    weights = np.zeros((4, 3), np.float32)
    weights[:3] = 8 / 255 * (2 * np.eye(3) - 1)
    bias = np.array([0, 0, 0, 2], np.float32)

    def buffer(data: bytes = b""):
        b = tfl.BufferT()
        b.data = np.frombuffer(data, np.uint8) if data else None
        return b

    def tensor(name, shape, buffer_index, dtype=schema.FLOAT32):
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), dtype, buffer_index
        return t

    def operator(code, inputs, outputs, kind, options):
        op = tfl.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, np.array(inputs, np.int32), np.array(outputs, np.int32)
        op.builtinOptionsType, op.builtinOptions = kind, options
        return op

    codes = []
    for builtin in ("MEAN", "FULLY_CONNECTED", "SOFTMAX"):
        code = tfl.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BUILTIN_OPS.index(builtin)
        code.version = 1
        codes.append(code)
    reducer, fc, softmax = tfl.ReducerOptionsT(), tfl.FullyConnectedOptionsT(), tfl.SoftmaxOptionsT()
    reducer.keepDims, softmax.beta = False, 1.0
    sg = tfl.SubGraphT()
    sg.tensors = [tensor("image", [1, 4, 4, 3], 0), tensor("axes", [2], 1, schema.INT32), tensor("mean", [1, 3], 0),
                  tensor("weights", [4, 3], 2), tensor("bias", [4], 3), tensor("logits", [1, 4], 0),
                  tensor("probability", [1, 4], 0)]
    sg.inputs, sg.outputs = np.array([0], np.int32), np.array([6], np.int32)
    sg.operators = [operator(0, [0, 1], [2], tfl.BuiltinOptions.ReducerOptions, reducer),
                    operator(1, [2, 3, 4], [5], tfl.BuiltinOptions.FullyConnectedOptions, fc),
                    operator(2, [5], [6], tfl.BuiltinOptions.SoftmaxOptions, softmax)]
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, codes, [sg]
    model.buffers = [buffer(), buffer(np.array([1, 2], np.int32).tobytes()), buffer(weights.tobytes()),
                     buffer(bias.tobytes())]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_metadata(open_set: dict | None = OPEN_SET, labels=LABELS) -> bytes:
    from trainer.export.metadata import MetadataInfo, add_metadata

    info = MetadataInfo("Open set", "test", "1", "edge-transfer tests", "Apache-2.0", list(labels), open_set=open_set)
    return add_metadata(tiny_model(), info)


def with_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with its associated-file zip replaced by ``files`` (offsets from the file start)."""
    out = io.BytesIO()
    out.write(model[: model.index(b"PK\x03\x04")])
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


LABELS_TXT = ("\n".join(LABELS) + "\n").encode()
DAMAGED = {
    "bad json": b'{"label": "unknown", ',
    "no label": b'{"threshold": 0.61}',
    "not the last label": b'{"label": "daisy", "threshold": 0.61}',
    "threshold not a number": b'{"label": "unknown", "threshold": "high"}',
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The models (open set, no open set, each damage) and one PNG per colour, 8x8."""
    folder = tmp_path_factory.mktemp("open_set")
    paths = {"open": folder / "open.tflite", "closed": folder / "closed.tflite"}
    paths["open"].write_bytes(with_metadata())
    paths["closed"].write_bytes(with_metadata(open_set=None))
    for i, raw in enumerate(DAMAGED.values()):
        paths[f"damaged{i}"] = folder / f"damaged{i}.tflite"
        paths[f"damaged{i}"].write_bytes(with_files(with_metadata(), {"labels.txt": LABELS_TXT, "open_set.json": raw}))
    for name, rgb in COLOURS.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (8, 8), rgb).save(paths[name])
    return paths


def classify(capsys, model, *args) -> tuple[int, list[str], list[str]]:
    """`edge classify MODEL ARGS` in-process: (exit code, stdout lines, stderr lines)."""
    capsys.readouterr()
    code = app(["classify", str(model), *map(str, args), "--threads", "1"], standalone_mode=False)
    out, err = capsys.readouterr()
    return code or 0, out.splitlines(), [line for line in err.splitlines() if line.strip() and not line.startswith("INFO")]


# --------------------------------------------------------------------------- metadata
def test_open_set_json_is_read_from_the_metadata(files):
    meta = read_metadata(files["open"])
    assert meta.labels == LABELS and meta.warnings == ()
    assert meta.open_set == OpenSet("unknown", 0.61, 0.95)
    assert metadata_dict(meta)["open_set"] == {"label": "unknown", "threshold": 0.61, "keep": 0.95}
    closed = read_metadata(files["closed"])
    assert closed.open_set is None and closed.warnings == () and "open_set" not in metadata_dict(closed)
    assert "open_set.json" not in closed.associated_files


@pytest.mark.parametrize("index,damage", list(enumerate(DAMAGED)))
def test_a_damaged_open_set_json_is_one_warning_and_no_reject_class(files, index, damage):
    meta = read_metadata(files[f"damaged{index}"])
    assert meta.open_set is None and meta.labels == LABELS
    (warning,) = meta.warnings
    assert warning.startswith("open_set.json ") and warning.endswith("no none-of-these class") and "\n" not in warning
    assert Classifier(ClassifierOptions(files[f"damaged{index}"], num_threads=1)).reject_label is None


def test_a_damaged_open_set_json_warns_once_and_classifies_without_it(files, capsys):
    code, out, err = classify(capsys, files["damaged2"], files["grey"], "--json")
    warning = f"warning: {files['damaged2']}: open_set.json names 'daisy' but the last label is 'unknown'"
    assert code == 0 and err == [f"{warning}; no none-of-these class"]
    (line,) = [json.loads(x) for x in out]
    assert line["labels"][0] == "unknown" and line["unknown"] is False and line["none_score"] is None


# --------------------------------------------------------------------------- the verdict
def test_the_decision_rule_on_score_vectors():
    scores = np.array([0.115, 0.002, 0.002, 0.881], np.float32)
    assert is_none_of_these(scores, 3)  # the reject class ranks first
    assert not is_none_of_these(scores, None)  # no reject class: never, without a threshold
    assert not is_none_of_these(scores, 3, threshold=0.1)  # the user accepts daisy at 0.115
    assert is_none_of_these(scores, 3, threshold=0.2)
    known = np.array([0.556, 0.0, 0.0, 0.443], np.float32)
    assert not is_none_of_these(known, 3) and is_none_of_these(known, 3, threshold=0.6)
    assert is_none_of_these(known, None, threshold=0.6) and not is_none_of_these(known, None, threshold=0.5)
    assert not is_none_of_these([0.5, 0.5], 1) and is_none_of_these([0.5, 0.5], 0)  # ties: lower index first
    assert best_known(scores, LABELS, 3) == Category(0, "daisy", pytest.approx(0.115))
    assert best_known(scores, LABELS, 3, deny=("daisy",)).label in ("roses", "tulips")
    assert best_known([1.0], ["unknown"], 0) is None


def test_classifier_fills_the_verdict(files):
    clf = Classifier(ClassifierOptions(files["open"], num_threads=1, top_k=2))
    assert clf.reject_label == "unknown" and clf.reject_index == 3
    names = ["red", "grey", "pinkish", "pale"]
    results = {n: r for n, r in zip(names, clf.classify_paths([files[n] for n in names]))}
    assert [results[n].unknown for n in names] == [False, True, True, False]
    assert results["red"].categories[0].label == "daisy" and results["red"].none_score < 0.01
    grey = results["grey"]
    assert grey.categories[0].label == "unknown" and grey.none_score == pytest.approx(grey.categories[0].score)
    assert grey.none_score > 0.95 and grey.best.label in ("daisy", "roses", "tulips")
    assert results["pinkish"].best.label == "daisy" and 0.1 < results["pinkish"].best.score < 0.2
    assert 0.5 < results["pale"].categories[0].score < 0.6  # daisy, just above the reject class
    closed = Classifier(ClassifierOptions(files["closed"], num_threads=1))
    assert closed.reject_label is None and closed.reject_index is None
    (r,) = closed.classify_paths([files["grey"]])
    assert r.categories[0].label == "unknown" and not r.unknown and r.none_score is None  # just a label


# --------------------------------------------------------------------------- edge classify
def test_classify_json_carries_unknown_and_none_score(files, capsys):
    code, out, err = classify(capsys, files["open"], files["red"], files["grey"], files["pinkish"], "--json")
    assert code == 0 and err == []
    red, grey, pinkish = [json.loads(x) for x in out]
    assert set(red) == {"path", "indices", "labels", "scores", "unknown", "none_score", "latency_ms", "preprocess_ms"}
    assert red["labels"][0] == "daisy" and red["unknown"] is False and 0 < red["none_score"] < 0.01
    assert grey["labels"][0] == "unknown" and grey["indices"][0] == 3 and grey["unknown"] is True
    assert grey["none_score"] == grey["scores"][0] > 0.95
    assert pinkish["labels"][:2] == ["unknown", "daisy"] and pinkish["unknown"] is True


def test_threshold_overrides_the_models_decision_both_ways(files, capsys):
    # pinkish: the reject class ranks first (0.88), daisy 0.115 >= 0.1: the user says daisy
    _, out, _ = classify(capsys, files["open"], files["pinkish"], files["grey"], "--json", "--threshold", "0.1")
    pinkish, grey = [json.loads(x) for x in out]
    assert pinkish["unknown"] is False and pinkish["labels"] == ["unknown", "daisy"]  # the ranking as before
    assert grey["unknown"] is True
    # pale: daisy ranks first (0.556) but under 0.6: none of these for the user
    _, out, _ = classify(capsys, files["open"], files["pale"], files["red"], "--json", "--threshold", "0.6")
    pale, red = [json.loads(x) for x in out]
    assert pale["unknown"] is True and pale["labels"] == [] and 0.4 < pale["none_score"] < 0.5
    assert red["unknown"] is False and red["labels"] == ["daisy"]
    _, out, _ = classify(capsys, files["open"], files["pale"], "--json")
    assert json.loads(out[0])["unknown"] is False  # without --threshold the model's rule names daisy


def test_a_model_without_open_set_json(files, capsys):
    code, out, _ = classify(capsys, files["closed"], files["grey"], files["pale"], "--json")
    grey, pale = [json.loads(x) for x in out]
    assert code == 0 and grey["labels"][0] == "unknown"
    assert (grey["unknown"], grey["none_score"], pale["unknown"], pale["none_score"]) == (False, None, False, None)
    _, out, _ = classify(capsys, files["closed"], files["pale"], files["red"], "--json", "--threshold", "0.6")
    pale, red = [json.loads(x) for x in out]
    assert (pale["unknown"], pale["none_score"], red["unknown"]) == (True, None, False)  # the user's rule works too


def test_classify_text_lines(files, capsys):
    _, out, _ = classify(capsys, files["open"], files["grey"], files["red"])
    grey, red = out
    assert grey.startswith(f"{files['grey']}: none of these (unknown 0.9") and "; best: " in grey and grey.endswith(" ms]")
    assert red.startswith(f"{files['red']}: daisy (0.99") and "none of these" not in red
    _, out, _ = classify(capsys, files["closed"], files["pale"], "--threshold", "0.6")
    assert out[0].startswith(f"{files['pale']}: none of these (best: daisy 0.56)  [")
    result = Result("p.jpg", (Category(3, "unknown", 0.87), Category(2, "roses", 0.1)), 1.0, 2.0,
                    unknown=True, none_score=0.87, best=Category(2, "roses", 0.1), reject_label="unknown")
    assert format_result(result, False) == "p.jpg: none of these (unknown 0.87; best: roses 0.10)  [2.0 ms]"
    assert json.loads(format_result(result, True))["labels"] == ["unknown", "roses"]


def test_classify_subprocess_end_to_end(files):
    proc = run_edge("classify", files["open"], files["grey"], files["red"], "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert [(x["unknown"], x["labels"][0]) for x in json_lines(proc.stdout)] == [(True, "unknown"), (False, "daisy")]


# --------------------------------------------------------------------------- edge camera
class Frames:
    """A frame source of solid colours."""

    def __init__(self, *colours):
        self.colours = colours

    def frames(self):
        for c in self.colours:
            yield np.full((24, 32, 3), COLOURS[c], np.uint8)

    def close(self):
        pass


class Keep:
    """A renderer that keeps every FrameResult."""

    def __init__(self):
        self.results = []

    def show(self, frame, result):
        self.results.append(result)
        return True

    def close(self):
        pass


def test_camera_frames_carry_the_verdict(files):
    keep = Keep()
    assert run(Classifier(ClassifierOptions(files["open"], num_threads=1, top_k=2)), Frames("grey", "red"),
               renderers=[keep]) == 2
    grey, red = keep.results
    assert grey.unknown and grey.reject_label == "unknown" and grey.none_score > 0.95 and not red.unknown
    js = frame_json(grey, "cam0")
    assert js["unknown"] is True and js["none_score"] == round(grey.none_score, 6) and js["labels"][0] == "unknown"
    assert frame_json(red, "cam0")["unknown"] is False
    assert describe(1, grey.categories, 30.0, grey).startswith("frame 1: none of these (unknown 0.9")
    assert describe(2, red.categories, 30.0, red).startswith("frame 2: daisy 1.00, unknown 0.00")
    line = describe(5, [Category(3, "unknown", 0.87)], 9.0,
                    FrameResult(5, (), unknown=True, none_score=0.87, best=Category(2, "roses", 0.1),
                                reject_label="unknown"))
    assert line == "frame 5: none of these (unknown 0.87; best: roses 0.10)  (9.0 fps)"
    closed = Keep()
    run(Classifier(ClassifierOptions(files["closed"], num_threads=1)), Frames("grey"), renderers=[closed])
    assert frame_json(closed.results[0], "cam0")["unknown"] is False
    assert frame_json(closed.results[0], "cam0")["none_score"] is None


def test_the_overlay_says_none_of_these(files):
    cv2 = pytest.importorskip("cv2")
    from edge.camera import draw_overlay

    frame = np.zeros((120, 240, 3), np.uint8)
    verdict = FrameResult(1, (Category(3, "unknown", 0.9),), unknown=True, none_score=0.9, reject_label="unknown")
    plain = draw_overlay(frame, list(verdict.categories), 10.0)
    marked = draw_overlay(frame, list(verdict.categories), 10.0, verdict)
    assert plain.shape == marked.shape == (120, 240, 3) and cv2 is not None
    assert plain[58:80].max() == 0 and marked[58:80].max() > 0  # one line more: "none of these: 0.90"
