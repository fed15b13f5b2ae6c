"""Live classification of camera or video frames: capture -> classify -> render, kept apart.

Capture is picamera2 on a Raspberry Pi camera when it is importable and the source is a camera
index, else OpenCV (USB cameras and video files). Renderers: an OpenCV window with an overlay,
one text line per frame (``--headless``), one JSON object per frame (``--json``), and the
annotated frames written to a video file (``--save``, alongside any of the others). Ctrl-C
ends the loop cleanly, and a saved video is then still complete up to that frame.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.postprocess import Category, Verdict, result_fields, verdict_text

WINDOW = "edge-transfer"
DEFAULT_SAVE_FPS = 30.0  # a --save video's frame rate when the source does not report one (cameras)


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
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)  # 0: unknown (many cameras)

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

    fps = 0.0  # unknown: the camera delivers as fast as it can

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


@dataclass(frozen=True)
class FrameResult:
    """What the loop learned about one frame; every renderer gets the same one."""

    number: int
    categories: tuple[Category, ...]
    fps: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    unknown: bool = False  # none of the classes (edge.postprocess.Verdict)
    none_score: float | None = None  # the reject class's probability; None without one
    best: Category | None = None  # the best known class
    reject_label: str | None = None


def classify_timed(classifier, frame: np.ndarray) -> tuple[Verdict, float, float]:
    """(verdict, preprocess_ms, inference_ms), split as `edge classify --json` reports them:
    resize + quantize, then invoke + rank. A stand-in with only ``classify_image`` counts it all
    as inference and never says "none of these"."""
    start = time.perf_counter()
    if hasattr(classifier, "input_tensor"):  # edge.classifier.Classifier
        tensor = classifier.input_tensor(frame)
        middle = time.perf_counter()
        verdict = classifier.judge(classifier.run(tensor))
    else:
        middle = start
        verdict = Verdict(tuple(classifier.classify_image(frame)))
    end = time.perf_counter()
    return verdict, (middle - start) * 1000, (end - middle) * 1000


# ------------------------------------------------------------------------------------ render
def describe(frame_number: int, categories: list[Category], fps: float, verdict=None) -> str:
    """The headless text line for one frame; ``verdict`` (a Verdict or FrameResult) that says
    "none of these" turns the ranking into "none of these (unknown 0.87; best: roses 0.10)"."""
    ranked = ", ".join(f"{c.label} {c.score:.2f}" for c in categories) or "-"
    text = verdict_text(verdict, ranked) if verdict is not None else ranked
    return f"frame {frame_number}: {text}  ({fps:.1f} fps)"


def draw_overlay(frame_rgb: np.ndarray, categories: list[Category], fps: float, verdict=None) -> np.ndarray:
    """A BGR copy of the frame with the categories and FPS written on it, for cv2.imshow; a
    "none of these" line (with the reject class's score) above them when ``verdict`` says so."""
    import cv2

    canvas = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    lines = [f"{fps:.1f} fps"] + [f"{c.label}: {c.score:.2f}" for c in categories]
    if verdict is not None and verdict.unknown:
        none = "" if verdict.none_score is None else f": {verdict.none_score:.2f}"
        lines.insert(1, f"none of these{none}")
    for i, text in enumerate(lines):
        y = 24 + 24 * i
        cv2.putText(canvas, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


class TextRenderer:
    """Headless rendering: one line a frame on a text stream."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out

    def show(self, frame: np.ndarray, result: FrameResult) -> bool:
        print(describe(result.number, result.categories, result.fps, result), file=self.out, flush=True)
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

    def show(self, frame: np.ndarray, result: FrameResult) -> bool:
        self._cv2.imshow(WINDOW, draw_overlay(frame, result.categories, result.fps, result))
        return self._cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        self._cv2.destroyAllWindows()


def frame_json(result: FrameResult, source: str) -> dict:
    """One frame as `edge classify --json` reports one image ("path" is the source, with
    "unknown" and "none_score"), plus the frame number and the FPS."""
    return {"frame": result.number, "path": source, **result_fields(result), "fps": round(result.fps, 2)}


class JsonRenderer:
    """One JSON object a line per frame, and nothing else, on a text stream."""

    def __init__(self, source: str, out: TextIO = sys.stdout):
        self.source, self.out = source, out

    def show(self, frame: np.ndarray, result: FrameResult) -> bool:
        print(json.dumps(frame_json(result, self.source)), file=self.out, flush=True)
        return True

    def close(self) -> None:
        pass


class VideoRenderer:
    """The annotated frames (draw_overlay) into a video file, OpenCV VideoWriter, mp4v.

    Written to a hidden temp file in the same folder and renamed over ``path`` in close(), which
    the loop calls on every exit (end, q, Ctrl-C, error): the final path holds a finished,
    playable video or nothing, never a half-written one. No frames: no file.
    """

    FOURCC = "mp4v"

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_SAVE_FPS):
        import cv2

        self._cv2 = cv2
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else DEFAULT_SAVE_FPS
        self.frames = 0
        self._writer = None
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix,
                                        dir=self.path.parent)
        except OSError as exc:
            raise CameraError(f"cannot write {self.path}: {exc.strerror}") from None
        os.close(fd)
        self._temp = Path(temp)

    def show(self, frame: np.ndarray, result: FrameResult) -> bool:
        canvas = draw_overlay(frame, result.categories, result.fps, result)
        if self._writer is None:
            height, width = canvas.shape[:2]
            self._writer = self._cv2.VideoWriter(str(self._temp), self._cv2.VideoWriter_fourcc(*self.FOURCC),
                                                 self.fps, (width, height))
            if not self._writer.isOpened():
                raise CameraError(f"cannot write {self.path} as {self.FOURCC} video (use a .mp4 name)")
        self._writer.write(canvas)
        self.frames += 1
        return True

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.release()  # writes the index: the file is playable from here on
            if self.frames:
                os.chmod(self._temp, 0o644)  # mkstemp made it 0600
                os.replace(self._temp, self.path)
        finally:
            self._temp.unlink(missing_ok=True)


def make_renderers(headless: bool = False, as_json: bool = False, save: str | os.PathLike | None = None,
                   source: str = "", fps: float = 0.0, out: TextIO = sys.stdout) -> list:
    """--json: JSON lines only (no window); --headless: text lines; else a window. --save adds
    the video file to any of them (``fps``: the source's rate, 0 if unknown)."""
    renderers: list = []
    try:
        if as_json:
            renderers.append(JsonRenderer(source, out))
        elif headless:
            renderers.append(TextRenderer(out))
        else:
            renderers.append(WindowRenderer())
        if save is not None:
            renderers.append(VideoRenderer(save, fps))
    except CameraError:
        close_all(renderers)
        raise
    return renderers


def close_all(closeables) -> None:
    """Close each one even if an earlier close raises (the first error is re-raised)."""
    error = None
    for item in closeables:
        try:
            item.close()
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error


# ------------------------------------------------------------------------------------ loop
def run(classifier, source, headless: bool = False, max_frames: int = 0, out: TextIO = sys.stdout,
        renderers: list | None = None) -> int:
    """Capture, classify and render until the source ends, max_frames, q, or Ctrl-C.

    Returns the number of frames classified. ``classifier`` needs only ``classify_image``.
    ``renderers`` (see make_renderers) default to text lines (headless) or a window. The
    source and every renderer are closed on the way out, whatever the reason.
    """
    if renderers is None:
        try:
            renderers = make_renderers(headless=headless, out=out)
        except CameraError:
            source.close()
            raise
    meter = FpsMeter()
    count = 0
    try:
        for frame in source.frames():
            v, preprocess_ms, inference_ms = classify_timed(classifier, frame)
            count += 1
            result = FrameResult(count, v.categories, meter.tick(), preprocess_ms, inference_ms,
                                 v.unknown, v.none_score, v.best, v.reject_label)
            if not all([renderer.show(frame, result) for renderer in renderers]):  # each one sees it
                break
            if max_frames and count >= max_frames:
                break
    except KeyboardInterrupt:
        pass
    finally:
        close_all([source, *renderers])
    return count
