"""Where the tests' data lives: the one definition (conftest, the edge tests, benchmarks).

Real reference data (Google's models, photos, the slim weights) is in ``../shared/data`` beside
the repository; ``EDGE_TRANSFER_SHARED_DATA`` points elsewhere. The shipped sample photos are
in the repository itself.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_ENV = "EDGE_TRANSFER_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_ENV) or REPO.parent / "shared" / "data")
SAMPLE_FLOWERS = REPO / "data" / "sample_flowers"
SMALL_FLOWERS = SHARED_DATA / "flower_photos_small"
CORAL = SHARED_DATA / "coral"
SUPPORT = SHARED_DATA / "tflite_support"
