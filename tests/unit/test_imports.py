"""The package's modules import each other without a cycle, counting the imports inside
functions (a deferred import hides a cycle from Python, not from the reader): a piece two
modules share lives in a module below both (issue 25: ``insight_basis`` in
``methods/insight.py``, the shipped model configs in ``open_clip_configs.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its file}."""
    files = {}
    for path in src.rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
                mod = mod if node.level else node.module
                deps.add(mod)
                deps.update(f"{mod}.{a.name}" for a in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while comp[-1:] != [v]:
                comp.append(stack.pop())
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle_and_only_it():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"c"}}
    assert cycles(graph) == [["a", "b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"clipbias.methods.api", "clipbias.methods.ltc", "clipbias.models"} <= set(graph)
    assert "clipbias.methods.insight" in graph["clipbias.methods.api"]  # the graph sees imports
    assert cycles(graph) == []


def test_test_module_basenames_are_unique():
    """pytest imports test files by basename (no packages under tests/): two files of one
    name abort collection of the whole suite (CI failed on tests/unit/test_rehearsal.py
    beside tests/integration/test_rehearsal.py)."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, "test files share a basename: " + "; ".join(clashes)
