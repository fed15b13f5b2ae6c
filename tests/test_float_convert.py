"""trainer.export.float_convert: the uncalibrated conversions beside calibration. The session's
`converted` fixture exports through it (every variant test reads those files); here: the
hand-over between the two processes, a failing child, and no child left behind."""

from __future__ import annotations

import pytest

from trainer.export.float_convert import Beside, beside, claim
from trainer.export.tflite import ConversionError


def test_each_mode_is_taken_once_and_the_parent_takes_from_the_end(tmp_path, monkeypatch):
    assert claim(tmp_path, "float32") and not claim(tmp_path, "float32")
    converted = []
    monkeypatch.setattr("trainer.export.float_convert.convert_model", lambda source, quant: converted.append(quant.mode) or b"x")
    side = Beside(proc=None, saved_model=tmp_path, out=tmp_path, log=tmp_path / "log")
    side.steal(["float32", "float16", "dynamic"])  # the child holds float32: the parent stops there
    assert converted == ["dynamic", "float16"] and side.get("float16") == b"x"


@pytest.mark.slow
def test_a_failing_child_is_one_line_and_a_live_one_is_killed_on_the_way_out(tmp_path):
    with beside(tmp_path / "no_saved_model", ["float32"]) as side:
        with pytest.raises(ConversionError, match="SavedModel") as error:
            side.get("float32")
    assert "\n" not in str(error.value)
    with pytest.raises(KeyboardInterrupt):
        with beside(tmp_path / "no_saved_model", ["float32"]) as side:
            raise KeyboardInterrupt  # e.g. Ctrl-C while calibrating
    assert side.proc.returncode is not None
