"""Atomic writes (trainer.atomic, used for every artifact) and the clean-up of what a killed run
left: a crash between the bytes and the rename leaves the old file or none, never half of one."""

from __future__ import annotations

import os
import time

import pytest

from trainer import atomic
from trainer.run_dir import RunDir


def test_a_crash_before_the_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    final = tmp_path / "model_int8.tflite"
    final.write_bytes(b"previous good model")
    absent = tmp_path / "model.keras"

    def power_cut(fd):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(atomic.os, "fsync", power_cut)  # after the bytes, before the rename
    for path in (final, absent):
        with pytest.raises(KeyboardInterrupt):
            atomic.write_bytes(path, b"half a mod")
    assert final.read_bytes() == b"previous good model"
    assert not absent.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model_int8.tflite"]


def test_a_write_replaces_the_file_whole(tmp_path):
    path = atomic.write_json(tmp_path / "deep" / "parity.json", {"passed": True})
    assert path.read_text() == '{\n  "passed": true\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["parity.json"]


def test_temp_files_left_by_a_killed_run_are_removed_by_the_next_one(tmp_path):
    """A SIGKILL skips the `finally` that deletes the temp file; the next train/convert cleans up
    old ones, but not one that a live writer may still be filling."""
    stale = tmp_path / f".model.keras{atomic.TEMP_MARK}k3j4h5g6.keras"
    legacy = tmp_path / ".model.keras.ab12cd34.keras"  # before TEMP_MARK existed
    fresh = tmp_path / f".parity.json{atomic.TEMP_MARK}zz99yy88.json"
    keep = [tmp_path / ".gitkeep", tmp_path / "model.keras", tmp_path / "notes.tflite"]
    for p in (stale, legacy, fresh, *keep):
        p.write_bytes(b"x")
    old = time.time() - 3600
    for p in (stale, legacy, *keep):
        os.utime(p, (old, old))
    removed = RunDir(tmp_path).clean_stale_temps()
    assert sorted(p.name for p in removed) == sorted([stale.name, legacy.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (fresh, *keep))
