"""edge.verify.verify_model: accepts every real model, rejects each kind of structural
damage with one line before an interpreter sees it; damaged labels and failing invokes are
one-line outcomes of the CLI."""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from test_edge_support import CORAL, REPO, SUPPORT, json_lines, run_edge, stderr_lines

from edge.flatbuffer import InvalidModelError
from edge.metadata import read_metadata
from edge.model_file import model_root
from edge.verify import MAX_RANK, verify_model

TINY = REPO / "tests" / "data"
GOOGLE_MODELS = sorted(CORAL.glob("*.tflite")) + sorted(SUPPORT.glob("*.tflite"))
OURS_INT8 = REPO / "android_assets" / "model.tflite"  # our converted MobileNetV2 int8 variant
PHOTO = CORAL / "cat.bmp"


def tiny_with_metadata(kind: str = "float32") -> bytes:
    from trainer.export.metadata import MetadataInfo, add_metadata

    info = MetadataInfo("Tiny", "test", "1", "edge-transfer tests", "Apache-2.0", ["daisy", "rose", "tulip"])
    return add_metadata((TINY / f"tiny_{kind}.tflite").read_bytes(), info)


def repack(data: bytes, edit) -> bytes:
    """Model bytes -> edit(ModelT) -> bytes, with the TFLite schema object API (no checks)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def rejected(data: bytes, match: str) -> str:
    with pytest.raises(InvalidModelError, match=match) as err:
        verify_model(data)
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- accepts real models
@pytest.mark.parametrize("path", [*GOOGLE_MODELS, OURS_INT8], ids=lambda p: p.name)
def test_accepts_googles_models_and_ours(path):
    assert len(GOOGLE_MODELS) == 8
    verify_model(path)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_accepts_our_writer_output(kind):
    verify_model(TINY / f"tiny_{kind}.tflite")
    verify_model(tiny_with_metadata(kind))


@pytest.mark.slow
def test_accepts_every_converted_variant(converted):
    """The session's real run, converted to every variant of the mode table."""
    from trainer.export.variants import MODES

    variants = sorted(converted.glob("model_*.tflite"))
    assert len(variants) == len(MODES)
    for path in variants:
        verify_model(path)


def test_verify_is_fast():
    data = OURS_INT8.read_bytes()
    verify_model(data)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        verify_model(data)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.1, times  # measured ~5-10 ms on a loaded 2-core machine


# --------------------------------------------------------------------------- rejects damage
FLOAT = (TINY / "tiny_float32.tflite").read_bytes()  # ops: CONV_2D MEAN FULLY_CONNECTED SOFTMAX
INT8 = (TINY / "tiny_int8.tflite").read_bytes()


def _sg(model):
    return model.subgraphs[0]


def _set(obj, attr, value):
    setattr(obj, attr, value)


EDITS = {
    "opcode index": (FLOAT, lambda m: _set(_sg(m).operators[1], "opcodeIndex", 99), "opcode index 99"),
    "op input": (FLOAT, lambda m: _set(_sg(m).operators[1], "inputs", np.array([5, 40], np.int32)), "input tensor"),
    "op output": (FLOAT, lambda m: _set(_sg(m).operators[1], "outputs", np.array([-1], np.int32)), "output tensor"),
    "subgraph input": (FLOAT, lambda m: _set(_sg(m), "inputs", np.array([9], np.int32)), "input tensor index 9"),
    "subgraph output": (FLOAT, lambda m: _set(_sg(m), "outputs", np.array([-2], np.int32)), "output tensor index"),
    "negative dim": (FLOAT, lambda m: _set(_sg(m).tensors[5], "shape", np.array([1, -30, 30, 4], np.int32)), "bad shape"),
    "rank": (FLOAT, lambda m: _set(_sg(m).tensors[5], "shape", np.ones(MAX_RANK + 1, np.int32)), "bad shape"),
    "elements": (FLOAT, lambda m: _set(_sg(m).tensors[5], "shape", np.array([1, 2**15, 2**15, 4], np.int32)),
                 "elements"),
    "buffer index": (FLOAT, lambda m: _set(_sg(m).tensors[1], "buffer", 1000), "buffer index 1000"),
    "data size": (FLOAT, lambda m: _set(_sg(m).tensors[4], "shape", np.array([4, 3, 3, 4], np.int32)), "bytes of data"),
    "tensor type": (FLOAT, lambda m: _set(_sg(m).tensors[5], "type", 77), "unknown tensor type"),
    "name": (FLOAT, lambda m: _set(_sg(m).tensors[5], "name", b"\xff\xfe"), "not UTF-8"),
    "no subgraphs": (FLOAT, lambda m: _set(m, "subgraphs", []), "no subgraphs"),
    "metadata buffer": (FLOAT, lambda m: _set(m.metadata[0], "buffer", 500), "metadata buffer index"),
    "NaN scale": (INT8, lambda m: _set(_sg(m).tensors[5].quantization, "scale", np.array([np.nan], np.float32)),
                  "scale"),
    "zero scale": (INT8, lambda m: _set(_sg(m).tensors[5].quantization, "scale", np.array([0.0], np.float32)), "scale"),
    "subnormal scale": (INT8, lambda m: _set(_sg(m).tensors[5].quantization, "scale",
                                             np.array([1e-40], np.float32)), "scale"),  # segfaulted QUANTIZE
    "zero point": (INT8, lambda m: _set(_sg(m).tensors[0].quantization, "zeroPoint", np.array([300], np.int64)),
                   "zero point"),
    "scales vs zero points": (INT8, lambda m: _set(_sg(m).tensors[0].quantization, "zeroPoint",
                                                   np.array([0, 0], np.int64)), "zero points"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_rejects_structural_damage(case):
    base, edit, match = EDITS[case]
    verify_model(base)
    rejected(repack(base, edit), match)


def test_optional_inputs_are_allowed():
    verify_model(repack(FLOAT, lambda m: None))
    assert -1 in _sg_inputs(FLOAT)  # FULLY_CONNECTED without bias: input -1


def _sg_inputs(data: bytes) -> list[int]:
    return [i for op in model_root(data).tables(2)[0].tables(3) for i in op.scalars(1, "i")]


def test_rejects_out_of_bounds_offsets_and_vtables():
    root = model_root(FLOAT)
    tensor = root.tables(2)[0].tables(0)[5]
    for pos, value, match in [
        (tensor.field(0), 0x7FFFFFF0, "out of bounds"),  # shape vector offset
        (tensor.pos, -0x7FFFFFF0, "vtable"),  # soffset to the vtable
        (0, len(FLOAT) + 8, "out of bounds"),  # root table offset
    ]:
        damaged = bytearray(FLOAT)
        damaged[pos:pos + 4] = int(value).to_bytes(4, "little", signed=value < 0)
        rejected(bytes(damaged), match)


# --------------------------------------------------------------------------- the CLI's outcomes
def test_damaged_labels_zip_warns_and_classifies_by_index(tmp_path):
    data = bytearray(tiny_with_metadata("int8"))
    central = data.rindex(b"PK\x01\x02")
    data[central + 10:central + 12] = b"\x63\x00"  # compression method 99: unreadable
    model = tmp_path / "damaged_zip.tflite"
    model.write_bytes(bytes(data))
    meta = read_metadata(model)
    assert meta.has_metadata and meta.labels is None and len(meta.warnings) == 1
    proc = run_edge("classify", model, PHOTO, "--json")
    assert proc.returncode == 0, proc.stderr
    (warning,) = stderr_lines(proc)
    assert warning.startswith("warning: ") and "category indices" in warning and "Traceback" not in proc.stderr
    (result,) = json_lines(proc.stdout)
    assert result["labels"] and all(label.isdigit() for label in result["labels"])


def _orphan_input(model) -> None:
    """SOFTMAX reads a tensor no operator writes (tflite-runtime: null data, then a crash)."""
    sg = _sg(model)
    orphan = copy.deepcopy(sg.tensors[7])
    orphan.name, orphan.buffer = b"orphan", 0
    sg.tensors.append(orphan)
    sg.operators[3].inputs = np.array([len(sg.tensors) - 1], np.int32)


def _conv_without_options(model) -> None:
    _sg(model).operators[0].builtinOptionsType = 0  # tflite-runtime 2.14: SIGFPE (stride 0)


def _scale_far_apart(model) -> None:
    _sg(model).tensors[6].quantization.scale = np.array([1e-20], np.float32)  # tflite-runtime: SIGABRT


@pytest.mark.parametrize("edit,match", [
    (_orphan_input, "reads tensor 9 before anything writes it"),
    (lambda m: _set(_sg(m).operators[2], "outputs", np.array([5], np.int32)), "writes tensor 5, which already"),
    (lambda m: _set(_sg(m), "outputs", np.array([9], np.int32)), "output tensor index 9"),
    (_conv_without_options, "CONV_2D without valid strides"),
], ids=["orphan input", "second writer", "graph output", "conv options"])
def test_operator_order_and_options(edit, match):
    rejected(repack(FLOAT, edit), match)


def test_activation_scales_of_one_operator_stay_close():
    rejected(repack(INT8, _scale_far_apart), "implausibly far apart")


def _filter_scale_off(model) -> None:
    quant = _sg(model).tensors[4].quantization  # the conv filter, 4 channels
    quant.scale = (quant.scale * np.array([1, 1, 2.0**64, 1])).astype(np.float32)


def test_required_inputs_and_bias_scales():
    """Both found by fuzzing: a conv without its filter (ai-edge-litert: segfault / bad_alloc),
    a per-channel filter scale off by 2**64 (ai-edge-litert: double free)."""
    rejected(repack(FLOAT, lambda m: _set(_sg(m).operators[0], "inputs", np.array([0, -1, 3], np.int32))),
             "required input 1 is missing")
    rejected(repack(INT8, _filter_scale_off), "bias scales do not equal input scale x filter scales")


def _grey_video(path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64, 3), 128, np.uint8))
    writer.release()
    return path


class _FailingInvoke:
    """Wraps a real interpreter; invoke fails the way a kernel does (multi-line message)."""

    def __init__(self, real, **kwargs):
        self._real = real(**kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def invoke(self):
        raise RuntimeError("tflite/kernels/gather.cc:158 indices out of bounds\nNode number 3 (GATHER) failed to invoke.")


@pytest.mark.parametrize("command", ["classify", "bench", "camera"])
def test_invoke_failure_is_one_line_exit_2(tmp_path, command, monkeypatch, capsys):
    from edge import runtime
    from edge.cli import app

    real = runtime.load_backend("ai_edge_litert")
    failing = runtime.Backend(real.name, lambda **kw: _FailingInvoke(real.interpreter_class, **kw), real.load_delegate)
    monkeypatch.setattr(runtime, "load_backend", lambda name=None: failing)
    model = tmp_path / "tiny.tflite"
    model.write_bytes(FLOAT)
    if command == "classify":
        args = [PHOTO]
    elif command == "bench":
        args = ["--runs", "1", "--warmup", "0"]
    else:
        args = ["--source", _grey_video(tmp_path / "grey.avi"), "--headless"]
    capsys.readouterr()
    assert app([command, str(model), *map(str, args)], standalone_mode=False) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: {model}: inference failed: tflite/kernels/gather.cc:158 indices out of bounds"]


def test_non_image_input_is_one_line_exit_2(tmp_path):
    model = tmp_path / "batch_of_two.tflite"  # loads and allocates; not one image
    model.write_bytes(repack(FLOAT, lambda m: _set(_sg(m).tensors[0], "shape", np.array([2, 32, 32, 3], np.int32))))
    proc = run_edge("classify", model, PHOTO)
    assert proc.returncode == 2
    assert len(stderr_lines(proc)) == 1 and "not one RGB image" in proc.stderr, proc.stderr


def test_tiny_fixtures_are_what_the_tests_assume():
    from edge.model_file import op_names, tensor_types

    assert op_names(FLOAT) == ["CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    assert tensor_types(INT8) == {"inputs": ["uint8"], "outputs": ["uint8"]}
    assert not read_metadata(FLOAT).has_metadata
    assert Path(TINY / "tiny_int8.tflite").stat().st_size < 4096
