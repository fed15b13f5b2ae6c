"""int8 activation ranges from per-photo extremes: narrower where one photo stretched them,
never wider, the pixel input and the float output untouched, the quantile chosen by logit error."""

from __future__ import annotations

import numpy as np

from tests.test_int8_grid import tiny_model


def _calibrated(images):
    from trainer.export.calibration import representative_dataset
    from trainer.export.tflite import calibrate

    return calibrate(tiny_model(5), representative_dataset(images))


def _photos(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.uniform(60, 190, (n, 12, 12, 3))
    images[0] = rng.choice([0.0, 255.0], size=(12, 12, 3))  # one extreme photo
    return images.astype(np.uint8)


def test_quantile_ranges_narrow_what_one_photo_stretched_and_keep_input_and_zero_starts():
    from trainer.export.ranges import photo_extremes, ranged_tensors, with_ranges

    images = _photos(20, 0)
    calibrated = _calibrated(images)
    before = ranged_tensors(calibrated)
    extremes = photo_extremes(calibrated, images)
    assert before and set(extremes.maxs) <= set(before)
    assert with_ranges(calibrated, extremes, 1.0) == calibrated  # min/max: the calibration's own

    after = ranged_tensors(with_ranges(calibrated, extremes, 0.9))
    assert set(after) == set(before)
    narrower = 0
    for i, (lo, hi) in before.items():
        new_lo, new_hi = after[i]
        assert lo <= new_lo <= new_hi <= hi  # never wider
        assert (new_lo == 0.0) == (lo == 0.0) or lo > 0  # a ReLU's range still starts at 0
        narrower += new_hi < hi or new_lo > lo
    assert narrower >= len(before) // 2, (narrower, len(before))  # the extreme photo no longer sets them

    from edge.runtime import make_interpreter
    loaded = make_interpreter(with_ranges(calibrated, extremes, 0.9))
    assert loaded.input.index not in after and loaded.output.index not in after


def test_the_chosen_quantile_has_the_lowest_logit_error_on_the_chooser_photos():
    from trainer.export.ranges import QUANTILES, choose_ranges

    images = _photos(20, 1)
    calibrated = _calibrated(images)
    model, choice = choose_ranges(calibrated, images, _photos(12, 2)[1:], ("FULLY_CONNECTED", "SOFTMAX"))
    assert set(choice.errors) == set(QUANTILES)
    assert choice.errors[choice.quantile] == min(choice.errors.values())
    assert (model == calibrated) == (choice.quantile == 1.0)
    assert "of the per-photo extremes (logit error: min/max" in choice.line()
