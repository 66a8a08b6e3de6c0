"""The package's shape (docs/design.md): imports never climb a floor, no importlib in the
library, no module over 500 lines, no private helper imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "taskvec"
FLOOR = {  # package -> floor; a module may import its own floor or lower
    "errors": 0, "registry": 0, "io_utils": 0, "defaults": 0, "dist": 0, "formats": 0, "__init__": 0, "__main__": 6,
    "models": 1, "model_catalog": 1, "tasks": 2, "eval": 3, "weights": 4, "basis": 5, "activations": 5, "cli": 6,
    "integrations": 6,
}
MODULES = sorted(p for p in SRC.rglob("*.py"))


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taskvec"):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names if a.name.startswith("taskvec"))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_shape(path: Path) -> None:
    pkg = _package(path)
    for module, names, line in _imports(path):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else "__init__"
        if target == "__version__":
            continue
        assert FLOOR[target] <= FLOOR[pkg], f"{path.name}:{line} imports {module} from a floor above"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{path.name}:{line} imports private {private} from {module}"
    text = path.read_text()
    assert len(text.splitlines()) <= 500, f"{path.name} has {len(text.splitlines())} lines (max 500)"
    if path != SRC / "cli" / "main.py":
        assert "importlib" not in text, f"{path.name} uses importlib"
