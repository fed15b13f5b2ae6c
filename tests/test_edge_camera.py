"""The camera loop, headless, on small videos made from real photos: text, JSON and --save."""

import io
import json

import numpy as np
import pytest
from test_edge_support import AUTOML, FLOWERS, REPO, json_lines, run_edge

from edge.camera import (
    CameraError,
    FpsMeter,
    FrameResult,
    JsonRenderer,
    TextRenderer,
    VideoRenderer,
    describe,
    open_source,
    run,
)
from edge.postprocess import Category

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def rose_video(tmp_path_factory):
    """An MJPG .avi: 3 rose photos then 3 sunflower photos, 2 frames each, 320x240."""
    from edge.preprocess import load_rgb

    path = tmp_path_factory.mktemp("video") / "flowers.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    photos = [p for name in ("roses", "sunflowers") for p in sorted((FLOWERS / name).glob("*.jpg"))[1:4]]
    for photo in photos:
        frame = cv2.resize(cv2.cvtColor(load_rgb(photo), cv2.COLOR_RGB2BGR), (320, 240))
        writer.write(frame)
        writer.write(frame)
    writer.release()
    return path


class Recorder:
    """A stand-in classifier that records what it was given."""

    def __init__(self):
        self.shapes = []

    def classify_image(self, frame):
        self.shapes.append(frame.shape)
        return [Category(0, "x", float(frame.mean() / 255))]


def test_loop_reads_every_frame_as_rgb_and_stops_at_max_frames(rose_video):
    recorder, out = Recorder(), io.StringIO()
    assert run(recorder, open_source(str(rose_video)), headless=True, out=out) == 12
    assert recorder.shapes == [(240, 320, 3)] * 12
    assert out.getvalue().count("\n") == 12 and out.getvalue().startswith("frame 1: x ")
    assert run(Recorder(), open_source(str(rose_video)), headless=True, max_frames=5, out=io.StringIO()) == 5


def test_ctrl_c_ends_cleanly(rose_video):
    class Interrupting(Recorder):
        def classify_image(self, frame):
            if len(self.shapes) == 3:
                raise KeyboardInterrupt
            return super().classify_image(frame)

    assert run(Interrupting(), open_source(str(rose_video)), headless=True, out=io.StringIO()) == 3


def test_cli_camera_headless_classifies_the_video(rose_video):
    proc = run_edge("camera", AUTOML, "--source", rose_video, "--headless", "--top-k", "1", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 12 and all(line.startswith(f"frame {i + 1}: ") for i, line in enumerate(lines))
    labels = [line.split(": ")[1].split()[0] for line in lines]
    assert labels[6:].count("sunflowers") >= 4  # the sunflower half of the clip


def test_missing_video_is_one_line_exit_2(tmp_path):
    proc = run_edge("camera", AUTOML, "--source", tmp_path / "none.mp4", "--headless")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot open video source")


def test_fps_meter_and_text():
    meter = FpsMeter(window=3)
    assert meter.tick(0.0) == 0.0
    assert meter.tick(0.1) == pytest.approx(10.0)
    meter.tick(0.2)
    assert meter.tick(0.25) == pytest.approx(2 / 0.15)  # only the last 3 stamps count
    assert describe(4, [Category(1, "roses", 0.5)], 12.34) == "frame 4: roses 0.50  (12.3 fps)"
    renderer = TextRenderer(io.StringIO())
    assert renderer.show(np.zeros((2, 2, 3), np.uint8), FrameResult(1, ()))
    assert renderer.out.getvalue() == "frame 1: -  (0.0 fps)\n"


# ------------------------------------------------------------------------- --save and --json
FLOWER_MODEL = REPO / "android_assets" / "model.tflite"  # the shipped int8 model, labels in its metadata
# photos from data/sample_flowers that the shipped model gets right (scores >= 0.99)
CLIP = [("roses", "102501987_3cdb8e5394_n.jpg"), ("roses", "12240303_80d87f77a3_n.jpg"),
        ("sunflowers", "145303599_2627e23815_n.jpg"), ("sunflowers", "151898652_b5f1c70b98_n.jpg"),
        ("daisy", "102841525_bd6628ae3c.jpg"), ("daisy", "105806915_a9c13e2106_n.jpg")]
CLIP_LABELS = [label for label, _ in CLIP for _ in range(2)]


def read_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            capture.release()
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def flower_clip(tmp_path_factory):
    """An MJPG .avi: 2 roses, 2 sunflowers, 2 daisies from data/sample_flowers, 2 frames each, 320x240."""
    from edge.preprocess import load_rgb

    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for label, name in CLIP:
        frame = cv2.resize(cv2.cvtColor(load_rgb(REPO / "data" / "sample_flowers" / label / name), cv2.COLOR_RGB2BGR),
                           (320, 240))
        writer.write(frame)
        writer.write(frame)
    writer.release()
    return path


def test_cli_save_writes_every_frame_annotated(flower_clip, tmp_path):
    out = tmp_path / "annotated.mp4"
    proc = run_edge("camera", FLOWER_MODEL, "--source", flower_clip, "--headless", "--save", out, "--top-k", "2",
                    "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 12 and proc.stderr == f"12 frames, saved to {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4"]  # no temp file left behind
    assert out.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    capture = cv2.VideoCapture(str(out))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
    capture.release()
    assert fourcc in ("mp4v", "fmp4")  # MPEG-4 part 2 (FFmpeg reads it back as FMP4)
    source, saved = read_frames(flower_clip), read_frames(out)
    assert len(saved) == len(source) == 12
    assert {f.shape for f in saved} == {(240, 320, 3)}
    for before, after in zip(source, saved):
        changed = np.abs(before.astype(int) - after.astype(int)).max(axis=2) > 80
        assert changed[:80, :200].mean() > 0.03  # the FPS and 2 label lines, top left
        assert changed[100:].mean() < 0.002  # the rest is the frame, only re-encoded


def test_cli_json_is_one_object_per_frame_and_nothing_else(flower_clip):
    from edge.classifier import Result
    from edge.cli import format_result

    proc = run_edge("camera", FLOWER_MODEL, "--source", flower_clip, "--json", "--top-k", "2", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 12
    frames = json_lines(proc.stdout)  # every stdout line is JSON
    classify_keys = set(json.loads(format_result(Result("x.jpg", (Category(0, "a", 0.5),)), True)))
    assert all(set(f) == classify_keys | {"frame", "fps"} for f in frames)
    assert [f["frame"] for f in frames] == list(range(1, 13))
    assert [f["labels"][0] for f in frames] == CLIP_LABELS
    assert all(f["scores"][0] > 0.9 and len(f["labels"]) == 2 and f["path"] == str(flower_clip) for f in frames)
    assert frames[0]["fps"] == 0 and all(f["fps"] > 0 for f in frames[1:])


def test_json_renderer_matches_classify_rounding():
    out = io.StringIO()
    JsonRenderer("cam0", out).show(None, FrameResult(3, (Category(4, "tulips", 0.1234567),), 29.987, 1.23456, 2.5))
    assert json.loads(out.getvalue()) == {"frame": 3, "path": "cam0", "indices": [4], "labels": ["tulips"],
                                          "scores": [0.123457], "unknown": False, "none_score": None,
                                          "latency_ms": 2.5, "preprocess_ms": 1.235, "fps": 29.99}


class Watcher(Recorder):
    """Looks at the output folder while the loop runs; can stop it with Ctrl-C or an error."""

    def __init__(self, folder, final, stop_at=0, error=KeyboardInterrupt):
        super().__init__()
        self.folder, self.final, self.stop_at, self.error, self.seen = folder, final, stop_at, error, []

    def classify_image(self, frame):
        if len(self.shapes) == self.stop_at:
            raise self.error
        self.seen.append((self.final.exists(), sorted(p.name for p in self.folder.iterdir())))
        return super().classify_image(frame)


def test_save_is_atomic_and_ctrl_c_leaves_a_playable_video(rose_video, tmp_path):
    final = tmp_path / "out.mp4"
    watcher = Watcher(tmp_path, final, stop_at=5)
    assert run(watcher, open_source(str(rose_video)), renderers=[VideoRenderer(final, 10)]) == 5
    exists, names = watcher.seen[-1]
    assert not exists and len(names) == 1 and names[0].startswith(".out.mp4.")  # a hidden temp beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert len(read_frames(final)) == 5


def test_save_after_an_error_is_playable_and_no_frames_is_no_file(rose_video, tmp_path):
    final = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        run(Watcher(tmp_path, final, stop_at=3, error=RuntimeError("boom")), open_source(str(rose_video)),
            renderers=[VideoRenderer(final, 10)])
    assert len(read_frames(final)) == 3
    empty = tmp_path / "empty.mp4"
    run(Watcher(tmp_path, empty, stop_at=0), open_source(str(rose_video)), renderers=[VideoRenderer(empty, 10)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_save_into_a_missing_folder_is_one_line_exit_2(flower_clip, tmp_path):
    with pytest.raises(CameraError, match="cannot write"):
        VideoRenderer(tmp_path / "no" / "out.mp4")
    proc = run_edge("camera", FLOWER_MODEL, "--source", flower_clip, "--headless", "--save", tmp_path / "no" / "x.mp4")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"error: cannot write {tmp_path / 'no' / 'x.mp4'}: "
                                                                 "No such file or directory"]
    assert proc.stdout == ""


def test_a_name_opencv_cannot_encode_is_a_camera_error_and_leaves_nothing(rose_video, tmp_path):
    with pytest.raises(CameraError, match=r"as mp4v video \(use a \.mp4 name\)"):
        run(Recorder(), open_source(str(rose_video)), renderers=[VideoRenderer(tmp_path / "out.xyz", 10)])
    assert list(tmp_path.iterdir()) == []
