"""Classify one image with the TFLite Task Library ``ImageClassifier`` (tflite-support 0.4.4).

Usage (inside the tflite_support client venv, see tests/client_venvs.py):

    python tflite_support_classify.py MODEL.tflite IMAGE [--max-results K]

Prints one JSON object ``{"categories": [{"index": i, "label": name, "score": s}, ...]}``,
best first. The Task Library (the same C++ as its Android AAR) insists on metadata: it reads
labels, normalization and color space from the model and rejects a float model without
NormalizationOptions. Exits non-zero with a one-line message on stderr when it rejects the model
or the image cannot be read. Needs only tflite-support, numpy and pillow; nothing of this repo.
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
    from tflite_support.task import core, processor, vision

    options = vision.ImageClassifierOptions(
        base_options=core.BaseOptions(file_name=model),
        classification_options=processor.ClassificationOptions(max_results=max_results),
    )
    pixels = load_rgb(image)
    classifier = vision.ImageClassifier.create_from_options(options)
    result = classifier.classify(vision.TensorImage.create_from_array(pixels))
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
        print(f"tflite_support: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
