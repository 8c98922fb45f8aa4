"""Package boundaries the design fixes: who may import what.

Checked two ways: statically (every import statement in each package's sources) and
dynamically (importing the torch-free packages in a fresh interpreter loads no torch).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, set[str]] = {
    "runtime": {"torch", "tensorly", "onnx", "engine", "api", "worker", "db"},
    "api": {"torch", "tensorly", "engine"},
    "db": {"torch", "tensorly", "engine", "api", "worker"},
    "engine": {"api", "worker", "db"},
    "worker": {"api"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_boundaries(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", ["api", "db", "engine", "runtime", "worker", "bitfactor"])
def test_every_package_states_what_it_owns(package: str) -> None:
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"{package}/__init__.py needs a module docstring"
    assert len(doc.split()) >= 25, f"{package}/__init__.py: say what it owns and must not import"


def test_torch_free_packages_load_without_torch() -> None:
    code = (
        "import sys, runtime, api, db, bitfactor.cli, bitfactor.settings;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "path",
    [
        "api",
        "worker",
        "engine",
        "db",
        "docker",
        "tests",
        "runtime",
        "bench",
        "docs",
        "docker-compose.yml",
        "pyproject.toml",
        "README.md",
        ".ci/run",
    ],
)
def test_layout_exists(path: str) -> None:
    assert (ROOT / path).exists(), f"{path} is part of the fixed layout"
