"""edge.runtime: backend choice, model validation before the C++ runtime, tensor info, Edge TPU."""

import ctypes.util
import os

import numpy as np
import pytest
from test_edge_support import AUTOML, CORAL_V2, SUPPORT

from edge.benchmark import time_invoke
from edge.flatbuffer import InvalidModelError
from edge.runtime import BACKEND_ENV, BACKENDS, DelegateError, RuntimeMissingError, load_backend, make_interpreter

NOMETA = SUPPORT / "mobilenet_v2_1.0_224_quant_nometadata.tflite"


def _installed_backends() -> list[str]:
    names = []
    for name in BACKENDS:
        try:
            load_backend(name)
        except RuntimeMissingError:
            continue
        names.append(name)
    return names


def test_the_environment_variable_picks_a_backend_other_than_the_default(monkeypatch):
    """Force the installed backend that would NOT be chosen by default (in the main venv
    tensorflow, in the legacy venv the legacy runtime is forced by its test), and a missing one."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    installed = _installed_backends()
    default = load_backend().name
    assert default == installed[0]
    if len(installed) > 1:
        monkeypatch.setenv(BACKEND_ENV, installed[-1])
        assert make_interpreter(AUTOML, num_threads=1).backend == installed[-1] != default
    missing = next(name for name in BACKENDS if name not in installed) if len(installed) < len(BACKENDS) else None
    if missing:
        monkeypatch.setenv(BACKEND_ENV, missing)
        with pytest.raises(RuntimeMissingError, match=f"backend '{missing}' is not installed"):
            make_interpreter(AUTOML)


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(RuntimeMissingError, match="unknown backend"):
        load_backend("tflite_micro")


def test_model_info_comes_from_the_file():
    model = make_interpreter(CORAL_V2.read_bytes())
    assert model.input_size == (224, 224)
    assert model.input.dtype == np.uint8 and model.input.quantization == (0.0078125, 128)
    assert model.output.shape == (1, 1001) and model.output.quantization == (0.00390625, 0)
    assert model.metadata.has_metadata and model.metadata.labels[286] == "Egyptian cat"


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.3, 0.5, 0.9, 0.99, 0.9999])
@pytest.mark.parametrize("path", [CORAL_V2, NOMETA], ids=["with_metadata", "no_metadata"])
def test_truncated_model_is_rejected_before_the_interpreter(path, fraction):
    """tflite-runtime 2.14 segfaults on a truncated model, so this must raise, not crash."""
    data = path.read_bytes()
    cut = int(len(data) * fraction)
    if b"PK\x03\x04" in data[:cut]:  # only the appended labels zip is cut: see the next test
        cut = data.index(b"PK\x03\x04") - 1
    with pytest.raises(InvalidModelError) as info:
        make_interpreter(data[:cut])
    assert "\n" not in str(info.value)


def test_truncated_labels_zip_falls_back_to_indices():
    """The model itself is intact: it loads, and the metadata says why labels are missing."""
    data = CORAL_V2.read_bytes()
    zip_start = data.index(b"PK\x03\x04")
    assert zip_start > len(data) * 0.99
    model = make_interpreter(data[: int(len(data) * 0.9999)])
    assert model.metadata.labels is None and model.metadata.has_metadata
    assert [w for w in model.metadata.warnings if "imagenet_labels.txt" in w and "indices" in w]


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n" * 20, b"\x00" * 64, os.urandom(4096)],
                         ids=["empty", "text", "zeros", "random"])
def test_non_tflite_files_raise_one_line(tmp_path, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError) as info:
        make_interpreter(path)
    assert "\n" not in str(info.value)


def test_missing_model_file(tmp_path):
    with pytest.raises(InvalidModelError, match="cannot read model"):
        make_interpreter(tmp_path / "absent.tflite")


@pytest.mark.skipif(ctypes.util.find_library("edgetpu") is not None, reason="an Edge TPU runtime is installed")
def test_missing_edgetpu_runtime_is_explained():
    with pytest.raises(DelegateError) as info:
        make_interpreter(AUTOML, edgetpu=True)
    message = str(info.value)
    assert "libedgetpu" in message and "\n" not in message


def test_time_invoke_counts_runs():
    timing = time_invoke(make_interpreter(AUTOML, num_threads=1), runs=5, warmup=1)
    assert timing.runs == 5 and 0 < timing.p50_ms <= timing.p90_ms and timing.images_per_s > 0
