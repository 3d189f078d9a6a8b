"""The layers of docs/ARCHITECTURE.md, checked on every module of the tree.

    orchestrator.cli  ->  workers  ->  orchestrator (core)  ->  atlas_core
       (top: the CLI)    (task bodies)  (settings, registry,      (the science)
                                         queue, jobs, artifacts)

An arrow means "may import". Anything not drawn is refused, with two refinements: the CLI
reaches `workers` only from inside a command (a lazy import, so that a client never loads
Celery's worker or torch), and no module a client imports (orchestrator, its CLI) imports
atlas_core, torch or trimesh at module level.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("atlas_core", "orchestrator", "workers", "migrations")
SERVICES = {"celery", "kombu", "redis", "sqlalchemy", "alembic", "typer", "rich", "fsspec"}
#: atlas_core modules that a client (ingestion, config validation) uses: no torch in them.
TORCH_FREE = {"atlas_core", "atlas_core.config", "atlas_core.mesh_io", "atlas_core.swords", "atlas_core.primitives",
              "atlas_core.furniture", "atlas_core.vessels", "atlas_core.parts",
              "atlas_core.data", "atlas_core.families", "atlas_core.mesh_errors", "atlas_core.mesh_limits",
              "atlas_core.mesh_files", "atlas_core.mesh_draco", "atlas_core.mesh_diagnosis",
              "atlas_core.mesh_surface", "atlas_core.mesh_sampling"}


@dataclass(frozen=True)
class Import:
    module: str  # the imported module, absolute
    lazy: bool  # inside a function (or a TYPE_CHECKING block): not run at import time
    typing_only: bool = False  # in a TYPE_CHECKING block: never run


class _Imports(ast.NodeVisitor):
    def __init__(self, package: str) -> None:
        self.package, self.depth, self.found = package, 0, []  # type: list[Import]
        self.typing = 0

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            self.typing += 1
            self._nested(node)
            self.typing -= 1
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [Import(alias.name, self.depth > 0, self.typing > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolve against this module's package
            base = self.package.rsplit(".", node.level - 1)[0] if node.level > 1 else self.package
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        # `from orchestrator import jobs` imports the module orchestrator.jobs.
        self.found += [Import(f"{module}.{alias.name}" if _is_module(f"{module}.{alias.name}") else module,
                              self.depth > 0, self.typing > 0) for alias in node.names]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    visitor = _Imports(package)
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def _layer(module: str) -> str:
    if module == "orchestrator.cli" or module.startswith("orchestrator.cli."):
        return "cli"
    root = module.split(".")[0]
    return {"orchestrator": "core"}.get(root, root)


#: layer -> layers of this project it may import (itself included).
ALLOWED = {
    "atlas_core": {"atlas_core"},
    "core": {"core", "atlas_core"},
    "workers": {"workers", "core", "atlas_core"},
    "cli": {"cli", "core", "atlas_core", "workers"},
    "migrations": {"migrations", "core"},
}

SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = _layer(_module_name(path))
    for imp in _imports(path):
        target = _layer(imp.module)
        if target in ALLOWED:
            assert target in ALLOWED[layer], f"{layer} may not import {imp.module}"
            if layer == "cli" and target == "workers":
                assert imp.lazy, f"the CLI imports {imp.module} at module level: import it in the command"
        if layer == "atlas_core":
            assert imp.module.split(".")[0] not in SERVICES, f"atlas_core imports {imp.module}"


@pytest.mark.parametrize("path", [p for p in SOURCES if _layer(_module_name(p)) in ("core", "cli")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_client_modules_load_no_torch_at_import(path: Path) -> None:
    for imp in _imports(path):
        if imp.lazy:
            continue
        # The client path (`rodin status`) loads none of the science: atlas_core, torch and
        # trimesh are imported inside the commands that need them.
        assert imp.module.split(".")[0] not in ("torch", "trimesh", "atlas_core"), \
            f"imports {imp.module} at module level"


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_client_side_atlas_core_modules_import_no_torch(module: str) -> None:
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert all(imp.module.split(".")[0] != "torch" for imp in _imports(path))


def test_the_checker_sees_the_arrows() -> None:
    # The rules above would pass vacuously if imports were not found: check a known one.
    found = {imp.module for imp in _imports(ROOT / "workers" / "app.py")}
    assert {"orchestrator.jobs", "workers.runtime", "celery"} <= found
    lazy = {imp.module for imp in _imports(ROOT / "orchestrator" / "cli" / "workers.py") if imp.lazy}
    assert "workers.main" in lazy


def test_workers_never_start_the_cli() -> None:
    """The supervisor starts `python -m workers`: no call runs back up through the client layer."""
    for path in (ROOT / "workers").rglob("*.py"):
        assert '"orchestrator.cli"' not in path.read_text(), f"{path.name} starts the rodin CLI"


#: What a CLI module may not import, lazily or not: the registry is reached through services.
REGISTRY_INSIDES = ("sqlalchemy", "orchestrator.registry.models", "orchestrator.registry.queries")


@pytest.mark.parametrize("path", [p for p in SOURCES if _layer(_module_name(p)) == "cli"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cli_imports_no_sqlalchemy_model(path: Path) -> None:
    for imp in _imports(path):
        assert not any(imp.module == banned or imp.module.startswith(banned + ".") for banned in REGISTRY_INSIDES), \
            f"the CLI imports {imp.module}: call a service of orchestrator/ instead"


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports when it runs (at any depth of a function; an
    import for type checkers only never runs)."""
    names = {_module_name(p) for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        found = set()
        for imp in _imports(path):
            if imp.typing_only:
                continue
            parts = imp.module.split(".")
            # `from orchestrator.cli import jobs` and `import orchestrator.cli.jobs` both name a module.
            while parts and ".".join(parts) not in names:
                parts.pop()
            if parts:
                found.add(".".join(parts))
        graph[_module_name(path)] = found - {_module_name(path)}
    return graph


def test_no_import_circles() -> None:
    """No module reaches itself through the modules it imports (a package's __init__ that
    offers its modules' names is no circle: its modules import each other, not it)."""
    graph = _graph()
    packages = {m for m in graph if (ROOT.joinpath(*m.split(".")) / "__init__.py").is_file()}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        stack = [m for m in graph[start] if m not in packages]
        while stack:
            module = stack.pop()
            if module not in seen:
                seen.add(module)
                stack += [m for m in graph.get(module, ()) if m not in packages]
        return seen

    circles = sorted(m for m in graph if m not in packages and m in reach(m))
    assert not circles, f"modules in an import circle: {', '.join(circles)}"


def test_only_the_job_service_moves_jobs() -> None:
    """A job's status is written by `orchestrator.jobs` alone (its table of moves), and a job
    row is created there alone: elsewhere an update of the jobs table or a Job(...) row is a
    second owner of its state."""
    for path in SOURCES:
        if _module_name(path) in ("orchestrator.jobs",) or path.parts[-2] == "migrations":
            continue
        text = path.read_text()
        for banned in ("update(Job)", "Job(kind", "status=JobStatus."):
            assert banned not in text, f"{path.relative_to(ROOT)} writes a job ({banned}): call orchestrator.jobs"
