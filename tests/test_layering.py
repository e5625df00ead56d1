"""The data flows one way: contract <- pipeline, contract <- masking <- trainer <- finetune (GUIDE, issue 10).

Every module's imports are read with `ast`, function-level (lazy) imports included, and each edge between
our packages must be an allowed one. Importing `trainer` or `masking` must not pull in Beam or spaCy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = ("contract", "pipeline", "masking", "trainer", "finetune", "demo", "bench", "tests")
# package -> the packages of ours it may import (itself always)
ALLOWED = {
    "contract": set(),
    "pipeline": {"contract"},
    "masking": {"contract"},
    "trainer": {"contract", "masking"},
    "finetune": {"contract", "masking", "trainer"},
    "demo": set(OURS),
    "bench": set(OURS),
    "tests": set(OURS),
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every module the source imports, at any depth (function bodies too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def forbidden_edges(package: str, files: list[Path]) -> list[str]:
    return [
        f"{path} imports {dep}"
        for path in files
        for dep in sorted(imported_packages(path.read_text(encoding="utf-8")) & set(OURS))
        if dep != package and dep not in ALLOWED[package]
    ]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_data_flow(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    assert forbidden_edges(package, files) == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("import numpy\n\n\ndef f():\n    from pipeline.documents import decode\n    import trainer.data\n")
    assert forbidden_edges("masking", [planted]) == [f"{planted} imports pipeline", f"{planted} imports trainer"]
    assert forbidden_edges("finetune", [planted]) == [f"{planted} imports pipeline"]


@pytest.mark.parametrize("package", ["contract", "masking", "trainer"])
def test_importing_pulls_in_no_beam_and_no_spacy(package: str) -> None:
    """Every module of the package imported (the lazy spaCy loader stays lazy, nothing reaches Beam)."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'spacy'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)
