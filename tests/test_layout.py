"""Imports point one way (DESIGN.md): ingest -> common, query -> common, never back or across."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"common": {"ingest", "query", "imgsearch"}, "ingest": {"query", "imgsearch"},
             "query": {"ingest", "imgsearch", "celery"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN[package])
           for p in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def imported_modules(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports anywhere (function-level imports too: a
    cycle hidden in a function still ties the modules together)."""
    mods = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                name = ".".join([*base, node.module])
            else:
                name = node.module
            if name.split(".")[0] == package:
                mods.add(name)
                mods.update(f"{name}.{a.name}" for a in node.names)
    return mods


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (never imported when running)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph(package: str) -> dict[str, set[str]]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / package).rglob("*.py")}
    return {m: {d for d in imported_modules(p, package) if d in files and d != m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of module names, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


@pytest.mark.parametrize("package", ["common", "imgsearch", "ingest", "query"])
def test_no_import_cycles_inside_a_package(package):
    cycle = find_cycle(import_graph(package))
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_operator_side_never_imports_the_tasks():
    """The CLI and the operator modules enqueue by name (ingest/dispatch.py)."""
    worker_only = {"ingest.tasks"}
    graph = import_graph("ingest")
    importers = sorted(m for m, deps in graph.items() if deps & worker_only)
    assert importers == [], importers
    cli = [str(p.relative_to(ROOT)) for p in (ROOT / "imgsearch").rglob("*.py")
           if "ingest.tasks" in imported_modules(p, "ingest")]
    assert cli == []


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme
