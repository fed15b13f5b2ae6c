"""The camera loop, headless, on a small video made from real photos."""

import io

import numpy as np
import pytest

from edge.camera import FpsMeter, TextRenderer, describe, open_source, run
from edge.postprocess import Category
from test_edge_support import AUTOML, FLOWERS, run_edge

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
    assert renderer.show(1, np.zeros((2, 2, 3), np.uint8), [], 0.0)
    assert renderer.out.getvalue() == "frame 1: -  (0.0 fps)\n"
