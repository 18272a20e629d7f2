"""Imports go one way: a lexiray module imports only modules listed above it in LAYERS
(ARCHITECTURE.md shows the same order). Function-local imports count too: they were what
hid the cycles before."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lexiray"
LAYERS = ["errors", "config", "results", "cost", "chaos", "space", "tiny", "data", "model", "memory", "oom", "precision",
          "storage", "warm", "ray_seam", "cluster", "scoring", "channel", "hf_trainer", "trial", "progress", "tune", "plots",
          "report", "cli"]
ENTRY_POINTS = {"__init__": ["errors"], "__main__": ["cli"]}


def lexiray_imports(path: Path) -> set[str]:
    """The lexiray modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "lexiray":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("lexiray."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("lexiray."))
    return found


def test_every_module_has_a_place_in_the_layers():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - set(ENTRY_POINTS)
    assert modules == set(LAYERS), "add the new module to LAYERS here and in ARCHITECTURE.md"


@pytest.mark.parametrize("module", LAYERS)
def test_module_imports_only_modules_above_it(module):
    above = set(LAYERS[:LAYERS.index(module)])
    below = lexiray_imports(PACKAGE / f"{module}.py") - above - {module}
    assert not below, f"lexiray.{module} imports {sorted(below)}, listed below it in LAYERS"


def test_entry_points_import_what_they_declare():
    for module, allowed in ENTRY_POINTS.items():
        assert lexiray_imports(PACKAGE / f"{module}.py") <= set(allowed)


def test_the_checker_sees_function_local_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("def later():\n    from lexiray.report import build_report\n    import lexiray.tune\n"
                      "from lexiray import storage\n")
    assert lexiray_imports(source) == {"report", "tune", "storage"}
