"""The package rule table of docs/architecture.md, checked on every import of every module
(module level and inside functions): each stage package imports only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what each part of trainer/ may import from the rest of trainer/ (edge and third-party: anything,
# except that edge imports nothing of trainer)
ALLOWED = {
    "atomic": set(), "version": set(), "config": set(), "hub_layer": set(),
    "data": {"atomic"},
    "run_dir": {"atomic", "data"},
    "model": {"config", "data", "hub_layer"},
    "export": {"atomic", "version", "data", "run_dir", "model"},
    "report": {"atomic", "data", "run_dir", "model", "export"},
    "fit": {"atomic", "config", "data", "run_dir", "model", "export", "report"},
    "ship": {"atomic", "version", "data", "run_dir", "export", "report"},
    "doctor": {"atomic", "config", "data", "run_dir", "model", "fit", "report"},
    "workflow": {"atomic", "config", "data", "run_dir", "model", "export", "report", "fit", "ship"},
    "cli": {"atomic", "config", "data", "run_dir", "model", "export", "report", "fit", "ship", "workflow", "doctor"},
    "__main__": {"cli"},
}


def part(module: str) -> str | None:
    """trainer.fit.head -> fit; trainer.run_dir -> run_dir; anything else -> None."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "trainer" and len(pieces) > 1 else None


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update([f"trainer.{a.name}" for a in node.names] if node.module == "trainer" else [node.module])
    return out


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def test_every_part_of_trainer_is_in_the_rule_table():
    parts = {part(name) for name, _ in modules("trainer")} - {None}
    assert parts == set(ALLOWED), f"add the new part to ALLOWED and to docs/architecture.md: {parts ^ set(ALLOWED)}"


def test_trainer_imports_point_down():
    wrong = []
    for name, path in modules("trainer"):
        me = part(name)
        for target in imported(path):
            other = part(target)
            if other and other != me and other not in ALLOWED.get(me, set()):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_edge_imports_nothing_of_trainer():
    wrong = [f"{name} imports {t}" for name, path in modules("edge") for t in imported(path) if t.split(".")[0] == "trainer"]
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a data module importing the fit stage is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from trainer.fit import head\n")
    assert "trainer.fit" in imported(bad) and "fit" not in ALLOWED["data"]
