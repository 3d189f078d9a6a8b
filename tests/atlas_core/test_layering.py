"""atlas_core is a library: no queue or registry code anywhere, and no torch where a client
(dataset ingestion, config validation) uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import atlas_core

PACKAGE = Path(atlas_core.__file__).parent
SERVICE_LAYERS = {"celery", "sqlalchemy", "redis", "kombu", "orchestrator", "workers"}
TORCH_FREE = ("mesh_io", "swords", "data", "config")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_queue_or_registry_imports(path: Path) -> None:
    assert not imported_roots(path) & SERVICE_LAYERS


@pytest.mark.parametrize("module", TORCH_FREE)
def test_client_side_modules_import_no_torch(module: str) -> None:
    assert "torch" not in imported_roots(PACKAGE / f"{module}.py")
