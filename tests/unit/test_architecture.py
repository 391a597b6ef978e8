"""The import rules of docs/architecture.md: the library (qwenvl_recipes, converters, custom_modules, eval) never
imports tools/, the parts import each other in one direction only, and only custom_modules/integrations imports a
trainer."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# part -> the project's parts it may import (besides itself)
ALLOWED = {"qwenvl_recipes": set(), "converters": {"qwenvl_recipes"}, "custom_modules": {"qwenvl_recipes", "converters"},
           "eval": {"qwenvl_recipes", "converters", "custom_modules"}}
PARTS = {"qwenvl_recipes", "converters", "custom_modules", "eval", "tools"}
TRAINERS = {"llamafactory", "swift"}
TRAINER_HOME = "custom_modules/integrations/"


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, nested imports included."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def library_files():
    return [(part, path) for part in ALLOWED for path in sorted((REPO_ROOT / part).rglob("*.py"))]


@pytest.mark.parametrize("part,path", library_files(), ids=lambda v: str(v.relative_to(REPO_ROOT))
                         if isinstance(v, Path) else v)
def test_library_imports_follow_the_layering(part, path):
    roots = imported_roots(path)
    forbidden = (roots & PARTS) - ALLOWED[part] - {part}
    assert not forbidden, f"{path.relative_to(REPO_ROOT)} imports {sorted(forbidden)} (docs/architecture.md)"
    rel = path.relative_to(REPO_ROOT).as_posix()
    if not rel.startswith(TRAINER_HOME):
        assert not roots & TRAINERS, f"{rel} imports a trainer; only {TRAINER_HOME} may"


def test_the_scan_sees_nested_and_from_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import os.path\nfrom . import sibling\n\ndef f():\n    from tools.mfu import mfu\n")
    assert imported_roots(source) == {"os", "tools"}


def test_nothing_edits_sys_path():
    """The project is installed (pyproject.toml, `make install`): imports resolve without path edits, from any
    directory and inside the trainers' processes."""
    edits = []
    for part in sorted(PARTS | {"tests"}):
        for path in sorted((REPO_ROOT / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys"):
                    edits.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not edits, f"sys.path used at {edits}"
