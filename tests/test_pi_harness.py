"""The judging logic of `make test-pi` (scripts/pi/), in-process and fast: the emulated run itself is
`make test-pi`, a step of `make test`. A judge that cannot fail would prove nothing on the Pi."""

import importlib
import json
import sys

import pytest
from test_edge_support import REPO


@pytest.fixture(scope="module")
def pi():
    sys.path.insert(0, str(REPO / "scripts" / "pi"))
    try:
        yield importlib.import_module("run"), importlib.import_module("preflight")
    finally:
        sys.path.remove(str(REPO / "scripts" / "pi"))


def row(indices, scores, path="data/p.jpg"):
    return {"path": path, "indices": indices, "labels": [str(i) for i in indices], "scores": scores}


def test_compare_catches_top1_and_score_differences(pi):
    run, _ = pi
    x86 = [row([0, 1, 2], [0.7, 0.2, 0.1]), row([2, 0, 1], [0.5, 0.3, 0.2])]
    assert run.compare(x86, x86) == (2, 0.0)
    # same ranking, one score 2e-5 off: over ai-edge-litert's 1e-5 tolerance
    same, worst = run.compare([x86[0], row([2, 0, 1], [0.5, 0.30002, 0.2])], x86)
    assert same == 2 and run.INSTALLS[0].tolerance < worst < 3e-5
    # top-1 swapped
    assert run.compare([x86[0], row([0, 2, 1], [0.5, 0.3, 0.2])], x86)[0] == 1
    # a class missing or a photo missing is never a pass
    assert run.compare([x86[0], row([2, 0], [0.5, 0.3])], x86)[1] == float("inf")
    assert run.compare(x86[:1], x86) == (0, float("inf"))
    assert run.compare([x86[0], {**x86[1], "path": "other.jpg"}], x86) == (0, float("inf"))


def judged(run, inst, **change):
    res = {"probe": {"machine": "aarch64", "python": "3.11.2", "edge_file": "/home/pi/venvs/x/edge/__init__.py",
                     "backend_auto": inst.backend, "backend_model": inst.backend, "numpy": "1.26.4",
                     "sve": False, "cpu_model": "Raspberry Pi 4", "tensorflow_loaded": False},
           "packages": {"numpy": "1.26.4", inst.backend.replace("_", "-"): "2"},
           "tests": {"passed": 3, "failed": 0, "skipped": 0, "failed_names": [], "rc": 0, "tail": ""},
           "classify": [row([0, 1], [0.9, 0.1])], "classify_rc": 0, "classify_stderr": "", "install": "fresh venv",
           "timings": {"install_s": 1, "tests_s": 1, "classify_s": 1}}
    for key, value in change.items():
        section, _, field = key.partition("__")
        res[section] = {**res[section], field: value} if field else value
    return run.judge(inst, res, ("x86", [row([0, 1], [0.9, 0.1])]))[1]


def test_judge_passes_a_good_run_and_flags_each_defect(pi):
    run, _ = pi
    legacy = next(i for i in run.INSTALLS if i.backend == "tflite_runtime")
    assert judged(run, legacy) == []
    assert judged(run, legacy, probe__machine="x86_64")
    assert judged(run, legacy, probe__backend_model="ai_edge_litert")
    assert judged(run, legacy, probe__sve=True)
    assert judged(run, legacy, probe__tensorflow_loaded=True)
    assert judged(run, legacy, probe__edge_file="/mnt/checkout/edge/__init__.py")
    for pkg in ("tensorflow", "opencv-python-headless", "picamera2", "ai-edge-litert"):
        assert judged(run, legacy, packages__numpy="1.26.4", **{f"packages__{pkg}": "1"}), pkg
    assert judged(run, legacy, packages__numpy="2.4.6")
    assert judged(run, legacy, tests__failed=1)
    assert judged(run, legacy, tests__passed=0)
    assert judged(run, legacy, tests__rc=4)  # e.g. a test file that moved: pytest usage error
    assert judged(run, legacy, classify=[row([0, 1], [0.86, 0.14])]) == []  # 10 steps of 1/256: its ARM kernels
    assert judged(run, legacy, classify=[row([0, 1], [0.8, 0.2])])
    assert judged(run, legacy, classify=[row([1, 0], [0.5, 0.5])])
    edge = next(i for i in run.INSTALLS if i.backend == "ai_edge_litert")
    assert judged(run, edge) == []
    assert judged(run, edge, classify=[row([0, 1], [0.89, 0.11])])


def test_not_root_is_one_line_with_the_apt_command(pi, monkeypatch):
    _, preflight = pi
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "_missing_packages", lambda: ["debootstrap"])
    with pytest.raises(preflight.PiUnavailable) as err:
        preflight.ensure_host()
    (line,) = str(err.value).splitlines()
    assert "needs root" in line and "apt-get install -y qemu-user-static debootstrap binfmt-support" in line


def test_photos_are_spread_over_the_classes(pi):
    run, _ = pi
    photos = run.pick_photos(20)
    assert len(set(photos)) == 20 and all((REPO / p).is_file() for p in photos)
    assert sorted({p.parent.name for p in photos}) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def test_only_a_rootfs_with_the_current_recipe_marker_is_reused(pi, tmp_path):
    rootfs = importlib.import_module("rootfs")
    assert rootfs._complete(tmp_path) is None  # debootstrap never finished: no marker
    marker = tmp_path / rootfs.MARKER
    marker.write_text("{half")
    assert rootfs._complete(tmp_path) is None
    marker.write_text(json.dumps({"recipe": {**rootfs.RECIPE, "suite": "bullseye"}, "python": "3.9.2"}))
    assert rootfs._complete(tmp_path) is None
    marker.write_text(json.dumps({"recipe": rootfs.RECIPE, "python": "3.11.2"}))
    assert rootfs._complete(tmp_path)["python"] == "3.11.2"
