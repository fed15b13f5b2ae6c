"""Feature tables on disk: range reads, gathers in any order across chunk boundaries, concatenation."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import rows as rows_module
from trainer.data.rows import Rows


def test_gather_and_concat_match_numpy(tmp_path, monkeypatch):
    monkeypatch.setattr(rows_module, "CHUNK", 7)  # many chunk boundaries
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    table = Rows.create(tmp_path / "t.f32", 50, 3)
    table.write(0, x[:20])
    table.write(20, x[20:])
    np.testing.assert_array_equal(table[10:23], x[10:23])
    assert table.shape == (50, 3) and len(table[48:60]) == 2
    for picked in (np.arange(3, 50, 4), np.array([41, 2, 2, 17, 0, 49])):  # ascending; any order, repeats
        np.testing.assert_array_equal(table.gather(picked, tmp_path / "g.f32").read_all(), x[picked])
    both = Rows.concat([table, table.gather(np.array([5, 6]), tmp_path / "h.f32")], tmp_path / "c.f32")
    np.testing.assert_array_equal(both.read_all(), np.concatenate([x, x[5:7]]))
    with pytest.raises(TypeError):
        table[[1, 2]]
