"""The edge CLI as a user meets it: inputs, bad files, exit codes, no TensorFlow, light imports."""

import json
import shutil
import subprocess
import sys

import pytest
from test_edge_support import AUTOML, CORAL_V2, FLOWERS, REPO, run_edge, stderr_lines

# what the device does not have: importing any of these from edge/ is a defect
NOT_ON_DEVICE = ("tensorflow", "keras", "tf_keras", "flatbuffers", "trainer", "tflite_support", "mediapipe")
NO_TENSORFLOW = f"""
import importlib, json, pkgutil, sys
BLOCKED = {NOT_ON_DEVICE!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"edge imported {{name}}")

sys.meta_path.insert(0, Blocker())
import edge
modules = sorted(m.name for m in pkgutil.iter_modules(edge.__path__, "edge."))
for name in modules:
    importlib.import_module(name)
print(json.dumps(modules))
sys.argv = ["edge", "classify", "--json", *sys.argv[1:]]
from edge.cli import main
main()
"""


@pytest.fixture()
def photo_dir(tmp_path):
    """Two real photos (one with an upper-case extension, one nested), a corrupt one, a text file."""
    daisy, rose = sorted((FLOWERS / "daisy").glob("*.jpg"))[0], sorted((FLOWERS / "roses").glob("*.jpg"))[0]
    (tmp_path / "nested").mkdir()
    shutil.copy(daisy, tmp_path / "a_daisy.JPG")
    shutil.copy(rose, tmp_path / "nested" / "c_rose.jpeg")
    (tmp_path / "b_corrupt.jpg").write_bytes(daisy.read_bytes()[:200])
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_corrupt_image_is_reported_and_the_rest_go_on(photo_dir):
    proc = run_edge("classify", AUTOML, photo_dir)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    expected = [photo_dir / "a_daisy.JPG", photo_dir / "nested" / "c_rose.jpeg"]
    assert [line.split(":")[0] for line in out] == [str(p) for p in expected]
    assert "daisy" in out[0].split(":", 1)[1] and "roses" in out[1].split(":", 1)[1]
    (err,) = stderr_lines(proc)
    assert err.startswith(f"{photo_dir / 'b_corrupt.jpg'}: error:") and "Traceback" not in proc.stderr


def test_json_mode_reports_errors_as_objects(photo_dir):
    proc = run_edge("classify", "--json", "-k", "2", AUTOML, photo_dir / "a_daisy.JPG", photo_dir / "b_corrupt.jpg",
                    photo_dir / "missing.jpg")
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(rows[0]) == {"path", "indices", "labels", "scores", "unknown", "none_score", "latency_ms", "preprocess_ms"}
    assert len(rows[0]["labels"]) == 2 and rows[0]["labels"][0] == "daisy"
    assert rows[0]["unknown"] is False and rows[0]["none_score"] is None  # no open-set class in this model
    assert [set(r) for r in rows[1:]] == [{"path", "error"}] * 2


def test_globs_and_label_filters(photo_dir):
    proc = run_edge("classify", "--deny", "daisy", "--allow", "daisy", "--allow", "tulips", "-k", "3", AUTOML,
                    str(photo_dir / "*.JPG"))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(str(photo_dir / "a_daisy.JPG")) and "tulips" in line and "daisy (" not in line


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "missing", "directory"])
def test_bad_model_is_one_line_exit_2(tmp_path, kind):
    model = tmp_path / "model.tflite"
    if kind == "truncated":
        model.write_bytes(CORAL_V2.read_bytes()[:1_000_000])
    elif kind == "text":
        model.write_text("labels, not a model\n" * 50)
    elif kind == "empty":
        model.write_bytes(b"")
    elif kind == "directory":
        model.mkdir()
    proc = run_edge("classify", model, FLOWERS / "daisy")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ")


def test_missing_labels_file_is_exit_2(tmp_path):
    proc = run_edge("classify", "--labels", tmp_path / "nope.txt", AUTOML, FLOWERS / "daisy")
    assert proc.returncode == 2 and len(stderr_lines(proc)) == 1 and "Traceback" not in proc.stderr


def test_every_edge_module_imports_and_classifies_where_tensorflow_cannot_be_imported():
    """An import hook makes tensorflow, keras, flatbuffers and trainer unimportable; every edge
    module (found, not listed) still imports, and the classify command still names the flower."""
    photo = sorted((FLOWERS / "tulips").glob("*.jpg"))[0]
    proc = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(AUTOML), str(photo)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules_line, result_line = proc.stdout.splitlines()
    assert {"edge.cli", "edge.runtime", "edge.metadata", "edge.classifier", "edge.camera"} <= set(json.loads(modules_line))
    assert json.loads(result_line)["labels"][0] == "tulips"


def test_cli_import_is_light_so_help_is_instant():
    script = (
        "import sys, edge.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'PIL', 'ai_edge_litert', 'tflite_runtime',"
        " 'cv2', 'tensorflow', 'rich', 'pydantic'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr
    help_proc = run_edge("--help")
    assert help_proc.returncode == 0 and all(cmd in help_proc.stdout for cmd in ("classify", "camera", "bench"))


def test_bench_command_prints_percentiles():
    proc = run_edge("bench", "--json", "--runs", "5", "--warmup", "1", "--threads", "1", AUTOML)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["runs"] == 5 and 0 < row["p50_ms"] <= row["p90_ms"] and row["images_per_s"] > 0
