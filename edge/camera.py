"""Live classification of camera or video frames: capture -> classify -> render, kept apart.

Capture is picamera2 on a Raspberry Pi camera when it is importable and the source is a camera
index, else OpenCV (USB cameras and video files). Rendering is either an OpenCV window with an
overlay or one text line per frame (``--headless``). Ctrl-C ends the loop cleanly.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from edge.postprocess import Category

WINDOW = "edge-transfer"


class CameraError(RuntimeError):
    """The frame source cannot be opened or the display is unavailable."""


# ------------------------------------------------------------------------------------ capture
class OpenCVSource:
    """Frames from cv2.VideoCapture (camera index or video file), as RGB uint8 arrays."""

    def __init__(self, source: int | str):
        import cv2

        self._cv2 = cv2
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            raise CameraError(f"cannot open video source {source!r}")

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return
            yield self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._capture.release()


class Picamera2Source:
    """Frames from a Raspberry Pi camera through picamera2, as RGB uint8 arrays."""

    def __init__(self, size: tuple[int, int] = (640, 480)):
        from picamera2 import Picamera2

        self._camera = Picamera2()
        # picamera2's "RGB888" is BGR in memory order; "BGR888" gives RGB arrays.
        self._camera.configure(self._camera.create_preview_configuration(main={"size": size, "format": "BGR888"}))
        self._camera.start()

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            yield self._camera.capture_array()

    def close(self) -> None:
        self._camera.stop()


def open_source(source: str):
    """A camera index ("0") or a video path -> a frame source with .frames() and .close()."""
    if not source.isdigit():
        return OpenCVSource(source)
    if importlib.util.find_spec("picamera2") is not None:  # only present on a Pi
        return Picamera2Source()
    return OpenCVSource(int(source))


# ------------------------------------------------------------------------------------ measure
@dataclass
class FpsMeter:
    """Frames per second over the last ``window`` frames."""

    window: int = 30
    _stamps: deque = field(default_factory=deque)

    def tick(self, now: float | None = None) -> float:
        """Record a frame; return the current rate (0 until two frames are seen)."""
        self._stamps.append(time.perf_counter() if now is None else now)
        while len(self._stamps) > self.window:
            self._stamps.popleft()
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0 else 0.0


# ------------------------------------------------------------------------------------ render
def describe(frame_number: int, categories: list[Category], fps: float) -> str:
    """The headless text line for one frame."""
    ranked = ", ".join(f"{c.label} {c.score:.2f}" for c in categories) or "-"
    return f"frame {frame_number}: {ranked}  ({fps:.1f} fps)"


def draw_overlay(frame_rgb: np.ndarray, categories: list[Category], fps: float) -> np.ndarray:
    """A BGR copy of the frame with the categories and FPS written on it, for cv2.imshow."""
    import cv2

    canvas = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    lines = [f"{fps:.1f} fps"] + [f"{c.label}: {c.score:.2f}" for c in categories]
    for i, text in enumerate(lines):
        y = 24 + 24 * i
        cv2.putText(canvas, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


class TextRenderer:
    """Headless rendering: one line a frame on a text stream."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out

    def show(self, frame_number: int, frame: np.ndarray, categories: list[Category], fps: float) -> bool:
        print(describe(frame_number, categories, fps), file=self.out, flush=True)
        return True

    def close(self) -> None:
        pass


class WindowRenderer:
    """An OpenCV window with an overlay; q or Esc asks to stop."""

    def __init__(self):
        import cv2

        self._cv2 = cv2
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise CameraError("this OpenCV build has no windows (opencv-python-headless?); use --headless") from None

    def show(self, frame_number: int, frame: np.ndarray, categories: list[Category], fps: float) -> bool:
        self._cv2.imshow(WINDOW, draw_overlay(frame, categories, fps))
        return self._cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        self._cv2.destroyAllWindows()


# ------------------------------------------------------------------------------------ loop
def run(classifier, source, headless: bool = False, max_frames: int = 0, out: TextIO = sys.stdout) -> int:
    """Capture, classify and render until the source ends, max_frames, q, or Ctrl-C.

    Returns the number of frames classified. ``classifier`` needs only ``classify_image``.
    """
    try:
        renderer = TextRenderer(out) if headless else WindowRenderer()
    except CameraError:
        source.close()
        raise
    meter = FpsMeter()
    count = 0
    try:
        for frame in source.frames():
            categories = classifier.classify_image(frame)
            count += 1
            if not renderer.show(count, frame, categories, meter.tick()):
                break
            if max_frames and count >= max_frames:
                break
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
        renderer.close()
    return count
