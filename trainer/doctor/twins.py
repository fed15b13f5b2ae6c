"""Twins for the doctor: the groups `train` keeps in one split (exact: sha256; near: pHash and
embedding cosine, trainer.data.twins), plus pairs the pooled embedding alone finds at cosine >=
``EMBEDDING_ONLY`` (a mirrored or cropped copy moves its pHash far), each group with its classes
and, given several folders, the folders it spans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trainer.data import twins
from trainer.fit import checks

EMBEDDING_ONLY = 0.97  # distinct tf_flowers photos reach 0.93-0.95; the 4 pairs above 0.97 are copies
MAX_ALL_PAIRS = 50_000  # photos up to which every pair's cosine is looked at (cost: their square)


def embedding_pairs(x: np.ndarray, min_cosine: float = EMBEDDING_ONLY) -> np.ndarray:
    """(i, j), i < j, of every pair of rows at cosine >= ``min_cosine`` (chunked, all pairs)."""
    xn = checks.normalized(x)
    found = []
    for start in range(0, len(xn), checks.CHUNK):
        sims = xn[start:start + checks.CHUNK] @ xn.T
        i, j = np.nonzero(sims >= min_cosine)
        i = i + start
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def find(digests: Sequence[str | None], phashes: np.ndarray | None, phash_ok: np.ndarray | None, x: np.ndarray,
         rows: np.ndarray) -> list[twins.Group]:
    """Twin groups over photos 0..n-1; ``x`` holds the features of the readable ones, at ``rows``."""
    where = {int(r): k for k, r in enumerate(rows)}
    xn = checks.normalized(x)
    ok = np.zeros(len(digests), bool)
    ok[rows] = True
    if phash_ok is not None:
        ok &= phash_ok

    def cosine(pairs: np.ndarray) -> np.ndarray:
        return np.array([float(xn[where[a]] @ xn[where[b]]) for a, b in pairs.tolist()])

    near = twins.near_twins(phashes, ok, cosine) if phashes is not None else np.zeros((0, 2), np.int64)
    if len(rows) <= MAX_ALL_PAIRS:
        near = np.concatenate([near, rows[embedding_pairs(x)]]) if len(rows) > 1 else near
    return twins.groups(digests, near)


def entries(groups: list[twins.Group], path: Callable[[int], str], label: Callable[[int], str],
            folder: Callable[[int], str] | None = None) -> list[dict]:
    """doctor.json's duplicates, most harmful first: groups filed under several classes, then
    those spanning folders, then exact before near, bigger first."""
    out = []
    for g in groups:
        item = {"paths": [path(i) for i in g.members], "kind": g.kind,
                "classes": sorted({label(i) for i in g.members})}
        if folder is not None:
            item["folders"] = sorted({folder(i) for i in g.members})
        out.append(item)
    return sorted(out, key=lambda e: (-len(e["classes"]), -len(e.get("folders", ())), e["kind"] != twins.EXACT,
                                      -len(e["paths"])))
