"""The single definition of how a photo becomes a model input.

Training, calibration, parity checks and the edge runtime all call these functions, so the
model on the device sees exactly the pixels the trained model saw. No TensorFlow here.

Contract: an image becomes an RGB uint8 array of the model's size. The resize is TFLite /
``tf.image.resize`` bilinear with half-pixel centres (no antialiasing), computed in float32
in the same order as TensorFlow's kernel so the result is bit-identical, then truncated to
uint8 the way libcoral's ``CopyResizedImage`` does. Normalization belongs to the model (the
trained Keras model and its TFLite files take 0-255 RGB); for foreign models it is read from
their metadata and applied by :func:`to_input_tensor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
RESIZE_METHODS = ("bilinear_half_pixel", "nearest")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, any-case extension, hidden files skipped), sorted:
    the one listing that training, evaluation, the CLI and the benchmarks all use."""
    return sorted(
        p for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


@dataclass(frozen=True)
class PreprocessSpec:
    """How photos are turned into input arrays; recorded in every run's config.

    size: (height, width) of the model input.
    resize: "bilinear_half_pixel" (TF/TFLite bilinear, half-pixel centres) or "nearest".
    mean/std: per-channel normalization the model expects of its input, (x - mean) / std.
        Our models normalize inside the graph, so their input is raw 0-255 RGB: mean 0, std 1.
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "bilinear_half_pixel"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) > 0, got {self.size!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            size=tuple(d["size"]),
            resize=d.get("resize", "bilinear_half_pixel"),
            mean=tuple(d.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(d.get("std", (1.0, 1.0, 1.0))),
        )


def load_rgb(source, draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a file (path, file object or PIL image) to an RGB uint8 array, EXIF-rotated.

    Every mode (palette, greyscale, CMYK, RGBA, 16-bit) becomes RGB; transparent pixels are
    composited on black so alpha never leaks into colour. Animated images use the first frame.
    ``draft_size`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (much
    faster for big photos), but only when that keeps both sides at least twice the target,
    so the final bilinear resize still sees more pixels than it outputs.
    """
    img = source if isinstance(source, Image.Image) else Image.open(source)
    if draft_size is not None and img.format == "JPEG":
        img.draft("RGB", (draft_size[1] * 2, draft_size[0] * 2))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and lerp per output position, as TF computes them (float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(pos)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return lower, upper, (pos - floor).astype(np.float32)


def _as_float32(a: np.ndarray) -> np.ndarray:
    """uint8 -> float32 (exact). np.copyto takes a vectorised cast path that is several times
    faster than astype for uint8 on numpy 2.x (measured, 0.26 vs 0.01 ms for 240x672)."""
    out = np.empty(a.shape, np.float32)
    np.copyto(out, a)
    return out


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel bilinear resize to (height, width), float32, bit-identical to tf.image.resize.

    TF's arithmetic in TF's order: each source row that is used gets its horizontal lerp once
    (top/bottom rows are shared between neighbouring outputs), then rows are blended."""
    out_h, out_w = size
    y0, y1, dy = _axis_weights(image.shape[0], out_h)
    x0, x1, dx = _axis_weights(image.shape[1], out_w)
    used = np.union1d(y0, y1)
    rows = image[used]
    left = _as_float32(np.take(rows, x0, axis=1))
    right = _as_float32(np.take(rows, x1, axis=1))
    right -= left
    right *= dx[None, :, None]
    left += right  # left now holds the horizontal lerp of every used source row
    where = np.searchsorted(used, y0), np.searchsorted(used, y1)
    top, bottom = left[where[0]], left[where[1]]
    bottom -= top
    bottom *= dy[:, None, None]
    top += bottom
    return top


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (half-pixel centres), as uint8."""
    out_h, out_w = size
    ys = np.minimum(((np.arange(out_h) + 0.5) * image.shape[0] / out_h).astype(np.int64), image.shape[0] - 1)
    xs = np.minimum(((np.arange(out_w) + 0.5) * image.shape[1] / out_w).astype(np.int64), image.shape[1] - 1)
    return image[ys][:, xs]


def resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize an RGB uint8 array to the spec's size; returns uint8 (truncated, like libcoral)."""
    if image.shape[:2] == tuple(spec.size):
        return image
    if spec.resize == "nearest":
        return resize_nearest(image, spec.size)
    return resize_bilinear(image, spec.size).astype(np.uint8)


def prepare(source, spec: PreprocessSpec, fast_decode: bool = True) -> np.ndarray:
    """Photo -> RGB uint8 array of the model's size: the one path training and edge share."""
    return resize(load_rgb(source, spec.size if fast_decode else None), spec)


def to_input_tensor(
    image: np.ndarray,
    dtype: np.dtype,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    quantization: tuple[float, int] = (0.0, 0),
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> one-image batch for a model input of ``dtype``.

    Float inputs get (x - mean) / std. Integer inputs get the normalized value quantized with
    the tensor's (scale, zero_point); for Google's quantized models and ours that mapping is
    the identity, so the raw pixels go in unchanged.
    """
    dtype = np.dtype(dtype)
    scale, zero_point = quantization
    if dtype.kind != "f" and scale == 0:  # an unquantized integer input takes the raw pixels
        return image[None].astype(dtype)
    normalized = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if dtype.kind == "f":
        return normalized[None].astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(normalized / np.float32(scale) + np.float32(zero_point))
    return np.clip(q, info.min, info.max).astype(dtype)[None]
