"""int8's choice of float layers: the logit error it minimizes, and the greedy choice on the
session model (convolutions only, the error falling at every step)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.export.sensitivity import logit_error, short_name


def test_logit_error_ignores_a_per_photo_constant_and_sees_any_class():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    assert logit_error(ref, ref) == 0.0
    moved = ref.copy()
    moved[0] = [0.7, 0.1, 0.2]  # top-1 kept, two minor classes swapped: still a logit change
    assert logit_error(moved, ref) > 0.05
    assert logit_error(moved, ref) == logit_error(ref, moved)


def test_short_name_is_the_keras_layer():
    tensor = "clf_1/mobilenetv2_1.00_224_1/block_2_depthwise_relu_1/Relu6;clf_1/x/y"
    assert short_name(tensor) == "block_2_depthwise_relu"


@pytest.mark.slow
def test_greedy_choice_lowers_the_logit_error_at_every_step(converted):
    from trainer.export.calibration import calibration_images, representative_dataset, selection_images
    from trainer.export.sensitivity import candidate_layers, choose_float_layers
    from trainer.export.tflite import calibrate
    from trainer.export.variants import MODES
    from trainer.model.model_io import load_keras
    from trainer.run_dir import MODEL, RunDir

    run = RunDir.open(converted)
    calibrated = calibrate(load_keras(run / MODEL), representative_dataset(calibration_images(run, 20)))
    chosen = choose_float_layers(calibrated, selection_images(run)[:8], MODES["int8"].float_ops, 2)
    assert len(chosen.errors) == len(chosen.layers) + 1 and 1 <= len(chosen.layers) <= 2
    assert all(b < a for a, b in zip(chosen.errors, chosen.errors[1:]))
    assert set(chosen.layers) <= set(candidate_layers(calibrated))  # convolutions only
