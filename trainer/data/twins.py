"""Twins: byte-identical photos and near-duplicates, found cheaply and grouped.

Exact twins share the sha256 of their bytes (the content digest the feature cache keys every
photo by). Near twins (a copy resized, re-encoded, recompressed) share a perceptual hash: the
64-bit DCT pHash, the top-left 8x8 of the 2-D DCT of the photo as 32x32 grey, each bit one
coefficient against their median, decoded through ``edge.preprocess`` (EXIF rotation, any mode).
The pooled embedding alone cannot tell a shrunk, re-encoded copy (cosine 0.70-0.97 to its
original) from a look-alike (0.93-0.95), and a pHash alone can pair two plain photos; a near pair
needs both, in one of two tiers (``NEAR_TIERS``): within 4 bits and cosine >= 0.70 (copies), or
within 8 bits and cosine >= 0.90 (edits, burst shots). docs/doctor.md has the measurements.

Pairs come from a band index (pigeonhole: hashes within m bits agree exactly on one of m + 1
bands), so the cost does not grow with the square of the photos. Groups are the connected
components of the pairs (union-find). numpy and Pillow only; no TensorFlow.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.preprocess import load_rgb

SIDE = 32  # the photo as SIDE x SIDE grey before its DCT
LOW = 8  # LOW x LOW low frequencies -> 64 bits
# (max pHash bits, min embedding cosine): a pair in either tier is a near twin. 300 copies of
# tf_flowers photos shrunk to 50-95 % and re-encoded at JPEG quality 50-90: all within 4 bits (262
# at 0), cosine 0.70-0.99; pairs of distinct photos 14-16 bits apart: 4 % reach 0.70, 0.2 % 0.90.
NEAR_TIERS = ((4, 0.70), (8, 0.90))
PHASH_ID = "phash64-dct32-v2"  # the cache's name for this hash (it is cached by photo content)
EXACT, NEAR = "exact", "near"


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * k * (2 * x + 1) / (2 * n))  # DCT-II, unnormalized (only signs vs median matter)


_DCT = _dct_matrix(SIDE)[:LOW]


def phash(source) -> int:
    """The 64-bit DCT pHash of a photo (path, bytes or file object), as an unsigned int."""
    from PIL import Image

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    rgb = load_rgb(source, draft_size=(2 * SIDE, 2 * SIDE))  # a JPEG decodes at 1/2-1/8 scale, >= 128 px
    grey = Image.fromarray(rgb).convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    low = _DCT @ np.asarray(grey, np.float64) @ _DCT.T  # (LOW, LOW)
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def cached_phash(raw: bytes, digest: str, cache) -> int | str:
    """pHash of a photo's bytes through the feature cache (keyed by its sha256 ``digest``), or its
    decode error (str, not cached: the photo's feature entry records it). Stored as its 8 bytes
    in a 2-float32 entry (the cache keeps bytes exactly; `cache info` counts these apart)."""
    from trainer.data.feature_cache import entry_key

    key = entry_key(digest, PHASH_ID, {}, "plain")
    found = cache.get(key)
    if isinstance(found, np.ndarray) and found.size == 2:
        return int(found.view(np.uint64)[0])
    try:
        value = phash(raw)
    except Exception as exc:  # any decoder failure: the photo is unreadable (reported by reason)
        # the same bytes give the same words: no "<_io.BytesIO object at 0x...>" in the reason
        return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", f"{type(exc).__name__}: {exc}").splitlines()[0][:200]
    cache.put(key, np.array([value], np.uint64).view(np.float32))
    return value


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes (elementwise)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(np.int64)


def _bands(max_bits: int) -> list[tuple[int, int]]:
    """(shift, width) of max_bits + 1 bands covering the 64 bits."""
    n = max_bits + 1
    widths = [64 // n + (k < 64 % n) for k in range(n)]
    return [(sum(widths[:k]), w) for k, w in enumerate(widths)]


def near_pairs(hashes: np.ndarray, ok: np.ndarray | None = None, max_bits: int = 8) -> np.ndarray:
    """(i, j, distance) rows, i < j ascending, of every pair of valid hashes within ``max_bits``
    bits. Each band's buckets of equal values are compared in full; nothing else is."""
    hashes = np.asarray(hashes, np.uint64)
    rows = np.flatnonzero(np.ones(len(hashes), bool) if ok is None else np.asarray(ok, bool))
    found: set[tuple[int, int]] = set()
    for shift, width in _bands(max_bits):
        keys = (hashes[rows] >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(sorted_keys)]):
            if e - s < 2:
                continue
            members = rows[order[s:e]]
            close = np.triu(hamming(hashes[members][:, None], hashes[members][None, :]) <= max_bits, 1)
            found.update((int(members[a]), int(members[b])) for a, b in zip(*np.nonzero(close)))
    if not found:
        return np.zeros((0, 3), np.int64)
    pairs = np.array(sorted((min(p), max(p)) for p in found), np.int64)
    return np.concatenate([pairs, hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]])[:, None]], axis=1)


@dataclass(frozen=True)
class Group:
    """Photos (row numbers, ascending) that are copies of each other: ``kind`` is "exact" when
    all share their bytes, else "near"."""

    members: tuple[int, ...]
    kind: str


def _components(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in sorted({i for pair in pairs for i in pair}):
        comps.setdefault(root(i), []).append(i)
    return [c for c in comps.values() if len(c) > 1]


def cosines(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows of each pair; ``vectors`` is indexed by row number."""
    a, b = vectors[pairs[:, 0]], vectors[pairs[:, 1]]
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norm, 1e-12)


def near_twins(hashes: np.ndarray, ok: np.ndarray | None, cosine: Callable[[np.ndarray], np.ndarray] | None,
               tiers: Sequence[tuple[int, float]] = NEAR_TIERS) -> np.ndarray:
    """(i, j) pairs that are near twins: within a tier's bits and at or above its cosine
    (``cosine(pairs)``: embedding similarity of each pair; None: the pHash alone decides)."""
    found = near_pairs(hashes, ok, max(bits for bits, _ in tiers))
    if not len(found):
        return np.zeros((0, 2), np.int64)
    sims = cosine(found[:, :2]) if cosine is not None else np.ones(len(found))
    keep = np.zeros(len(found), bool)
    for bits, min_cos in tiers:
        keep |= (found[:, 2] <= bits) & (sims >= min_cos)
    return found[keep, :2]


def groups(digests: Sequence[str | None], pairs: np.ndarray | Sequence[tuple[int, int]] = ()) -> list[Group]:
    """Twin groups among photos 0..n-1: the same ``digests`` (sha256 of the bytes; None:
    unreadable) or joined by ``pairs`` (near twins), sorted by first member."""
    links: list[tuple[int, int]] = []
    first: dict[str, int] = {}
    for i, d in enumerate(digests):
        if d is not None:
            if d in first:
                links.append((first[d], i))
            else:
                first[d] = i
    links += [(int(a), int(b)) for a, b in pairs]
    out = []
    for members in _components(len(digests), links):
        same = len({digests[i] for i in members}) == 1
        out.append(Group(tuple(members), EXACT if same else NEAR))
    return sorted(out, key=lambda g: g.members)
