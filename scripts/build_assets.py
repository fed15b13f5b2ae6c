"""Build what the product ships from the staged source data (run once; outputs are committed).

1. trainer/assets/mobilenet_v2_1.0_224_no_top.npz: the ImageNet MobileNetV2 1.0 backbone
   (TF-slim checkpoint arrays), keyed by Keras layer name and weight index, float32, unchanged.
2. data/sample_flowers/: the 200 photos of flower_photos_small re-encoded at most 320 px on the
   long side (JPEG q=85) so the default `make train` runs offline from the repo, plus the
   CC BY 2.0 attribution lines for exactly those photos.

Usage: python scripts/build_assets.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.paths import SHARED_DATA  # noqa: E402

WEIGHTS_OUT = REPO / "trainer" / "assets" / "mobilenet_v2_1.0_224_no_top.npz"
SAMPLE_OUT = REPO / "data" / "sample_flowers"
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def slim_to_keras_names() -> dict[str, list[str]]:
    """Keras layer name -> slim array names, in Keras weight order (see the staging README)."""
    m: dict[str, list[str]] = {"Conv1": ["Conv_weights"], "bn_Conv1": [f"Conv_BatchNorm_{b}" for b in BN]}
    m["expanded_conv_depthwise"] = ["expanded_conv_depthwise_depthwise_weights"]
    m["expanded_conv_depthwise_BN"] = [f"expanded_conv_depthwise_BatchNorm_{b}" for b in BN]
    m["expanded_conv_project"] = ["expanded_conv_project_weights"]
    m["expanded_conv_project_BN"] = [f"expanded_conv_project_BatchNorm_{b}" for b in BN]
    for n in range(1, 17):
        s = f"expanded_conv_{n}"
        m[f"block_{n}_expand"] = [f"{s}_expand_weights"]
        m[f"block_{n}_expand_BN"] = [f"{s}_expand_BatchNorm_{b}" for b in BN]
        m[f"block_{n}_depthwise"] = [f"{s}_depthwise_depthwise_weights"]
        m[f"block_{n}_depthwise_BN"] = [f"{s}_depthwise_BatchNorm_{b}" for b in BN]
        m[f"block_{n}_project"] = [f"{s}_project_weights"]
        m[f"block_{n}_project_BN"] = [f"{s}_project_BatchNorm_{b}" for b in BN]
    m["Conv_1"] = ["Conv_1_weights"]
    m["Conv_1_bn"] = [f"Conv_1_BatchNorm_{b}" for b in BN]
    return m


def build_weights(src: Path) -> None:
    arrays = {}
    for layer, names in slim_to_keras_names().items():
        for i, name in enumerate(names):
            arrays[f"{layer}/{i}"] = np.load(src / f"{name}.npy").astype(np.float32)
    WEIGHTS_OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = WEIGHTS_OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(WEIGHTS_OUT)
    print(f"{WEIGHTS_OUT.relative_to(REPO)}: {len(arrays)} arrays, {WEIGHTS_OUT.stat().st_size / 1e6:.1f} MB")


def build_sample(src: Path, max_side: int = 320) -> None:
    photos = sorted(p for p in src.glob("*/*.jpg"))
    attributions = {}
    for line in (src / "LICENSE.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\S+/\S+\.jpg) (.*)$", line)
        if match:
            attributions[match.group(1)] = match.group(2)
    credits = []
    for p in photos:
        rel = f"{p.parent.name}/{p.name}"
        out = SAMPLE_OUT / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(p)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        img.convert("RGB").save(out, quality=85, optimize=True)
        credits.append(f"{rel} {attributions.get(rel, 'CC BY 2.0 (tf_flowers)')}")
    header = (
        "Re-encoded (max 320 px, JPEG q85) from TensorFlow's flower_photos dataset.\n"
        "All photos are licensed CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/); credits:\n\n"
    )
    (SAMPLE_OUT / "ATTRIBUTION.txt").write_text(header + "\n".join(credits) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in SAMPLE_OUT.rglob("*"))
    print(f"{SAMPLE_OUT.relative_to(REPO)}: {len(photos)} photos, {size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    build_weights(args.shared / "keras_mobilenet_v2" / "slim_npy_1.0_224")
    build_sample(args.shared / "flower_photos_small")


if __name__ == "__main__":
    main()
