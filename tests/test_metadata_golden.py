"""Golden file: the metadata trainer.export.metadata writes for two fixed tiny models (tests/data),
read back by edge and dumped as canonical JSON (edge.metadata.dump_metadata).

Any change in what the writer produces fails here. After an intended change, regenerate and
review the diff:  EDGE_TRANSFER_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_metadata_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge import schema
from edge.metadata import dump_metadata
from edge.model_file import metadata_entries, model_root

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "metadata_dump.json"
REGENERATE_ENV = "EDGE_TRANSFER_REGENERATE_GOLDEN"
INFO = dict(name="Flower classifier", description="Classifies flowers.", version="v3",
            author="edge-transfer tests", license="Apache-2.0", labels=["daisy", "rose petal", "Große Blume"])


def current_dump() -> str:
    from trainer.export.metadata import MetadataInfo, add_metadata

    out = {}
    for kind in ("float32", "int8"):
        model = add_metadata((TESTS / "data" / f"tiny_{kind}.tflite").read_bytes(), MetadataInfo(**INFO))
        out[kind] = {
            "file_bytes": len(model),
            "metadata_flatbuffer_bytes": len(metadata_entries(model_root(model))[schema.METADATA_NAME]),
            **dump_metadata(model),
        }
    return json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def test_writer_output_matches_the_golden_file():
    text = current_dump()
    if os.environ.get(REGENERATE_ENV) == "1":
        tmp = GOLDEN.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(GOLDEN)
    assert GOLDEN.read_text(encoding="utf-8") == text, (
        f"the metadata writer's output changed; if intended, rerun with {REGENERATE_ENV}=1 and review the diff")


def test_golden_file_notices_a_writer_change(monkeypatch):
    """The comparison is sensitive: one changed field in the writer changes the dump."""
    import trainer.export.metadata

    before = current_dump()
    monkeypatch.setattr(trainer.export.metadata, "MIN_PARSER_VERSION", "1.0.1")
    assert current_dump() != before


def test_golden_file_content():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for kind, entry in golden.items():
        meta = entry["metadata"]
        assert meta["labels"] == INFO["labels"] and meta["has_metadata"] and meta["color_space"] == "RGB"
        assert meta["associated_files"]["labels.txt"]["text"] == "daisy\nrose petal\nGroße Blume\n"
        assert meta["warnings"] == [] and meta["min_runtime_version"]
        ((image,), (probability,)) = [(sg["inputs"], sg["outputs"]) for sg in entry["subgraphs"]][0]
        assert image["name"] == "image" and image["content"] == {"type": 2, "color_space": 1}
        assert probability["associated_files"][0]["name"] == "labels.txt"
    assert golden["int8"]["metadata"]["input_max"] == [255.0]
