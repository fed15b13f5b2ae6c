"""Classify one image with MediaPipe Tasks ``ImageClassifier``: the engine Android apps use.

Usage (inside the mediapipe client venv, see tests/client_venvs.py):

    python mediapipe_classify.py MODEL.tflite IMAGE [--max-results K]

Prints one JSON object ``{"categories": [{"index": i, "label": name, "score": s}, ...]}``,
best first. MediaPipe takes the labels, normalization and color space from the model's own
metadata, so this is an independent check of what our writer produced. Exits non-zero with a
one-line message on stderr when MediaPipe rejects the model or the image cannot be read.
Needs only mediapipe, numpy and pillow; nothing of this repository.
"""

from __future__ import annotations

import argparse
import json
import sys


def load_rgb(path: str):
    """Decode with PIL (EXIF-rotated, any mode -> RGB) so every client sees the same pixels."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8))


def classify(model: str, image: str, max_results: int) -> dict:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=model),
        max_results=max_results,
    )
    pixels = load_rgb(image)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
    heads = result.classifications
    categories = heads[0].categories if heads else []
    return {
        "categories": [
            {"index": c.index, "label": c.category_name, "score": float(c.score)} for c in categories
        ]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--max-results", type=int, default=3, help="top K categories (-1: all)")
    args = parser.parse_args(argv)
    try:
        out = classify(args.model, args.image, args.max_results)
    except Exception as exc:  # any rejection is a one-line failure for the caller
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"mediapipe: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
