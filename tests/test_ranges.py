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


def test_the_chosen_quantile_is_the_simplest_that_no_later_one_beats_beyond_noise():
    from trainer.export.ranges import NOISE_SE, QUANTILES, choose_ranges

    images = _photos(20, 1)
    calibrated = _calibrated(images)
    model, choice = choose_ranges(calibrated, images, _photos(12, 2)[1:], ("FULLY_CONNECTED", "SOFTMAX"))
    assert list(choice.errors) == list(QUANTILES)
    assert (model == calibrated) == (choice.quantile == 1.0)
    assert "of the per-photo extremes (logit error: min/max" in choice.line() and f"> {NOISE_SE:g} standard" in choice.line()


def test_pick_keeps_the_simpler_quantile_unless_a_later_one_wins_beyond_its_noise():
    from trainer.export.ranges import pick

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.01, 300)  # per-photo logit errors
    clearly_better = base * 0.5
    # q0.9 has a 5 % lower mean than q0.95 by chance of the photos (the AVX2 flip): noise, not a win
    noise = rng.normal(0, clearly_better.mean(), 300)
    within_noise = clearly_better * 0.95 + (noise - noise.mean())  # 5 % lower mean, photo-to-photo spread
    errors = {1.0: base, 0.95: clearly_better, 0.9: within_noise}
    assert np.mean(within_noise) < np.mean(clearly_better)  # the old argmin rule took 0.9
    assert pick(errors) == 0.95
    assert pick({1.0: base, 0.95: base * 1.01}) == 1.0


def test_a_1e_6_perturbation_of_the_calibration_activations_does_not_change_the_choice():
    """What two machines whose float kernels differ in the last bits see: the same choice, the same file."""
    from trainer.export.ranges import PhotoExtremes, choose_from_extremes, photo_extremes

    images = _photos(20, 1)
    calibrated = _calibrated(images)
    chooser = _photos(12, 2)[1:]
    extremes = photo_extremes(calibrated, images)
    model, choice = choose_from_extremes(calibrated, extremes, chooser, ("FULLY_CONNECTED", "SOFTMAX"))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        jitter = lambda d: {i: (a * (1 + rng.normal(0, 1e-6, a.shape))).astype(np.float32) for i, a in d.items()}  # noqa: E731
        nudged = PhotoExtremes(jitter(extremes.mins), jitter(extremes.maxs))
        model2, choice2 = choose_from_extremes(calibrated, nudged, chooser, ("FULLY_CONNECTED", "SOFTMAX"))
        assert choice2.quantile == choice.quantile, (choice.line(), choice2.line())
