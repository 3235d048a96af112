"""Imports point one way, and every module stands on its own.

STYLE.md: protocol and subjects/router ← transports ← client and broker ← adapters and cli.
A loop of imports, even one closed only under ``TYPE_CHECKING``, makes a reader follow a
circle and makes the next refactoring break at import time; these tests catch both.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import asyncipc

PACKAGE = Path(asyncipc.__file__).parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (``asyncipc.transports.tcp``)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run (or, under ``TYPE_CHECKING``, that a reader follows)
    when the module is imported: everything but the bodies of functions."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path) -> set[str]:
    """The package modules that module ``name`` imports at module level."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in module_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        else:
            if node.level:
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            bases = [base]
            names = [alias.name for alias in node.names]
        for base in bases:
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if submodules:
                targets.update(submodules)
            if base in MODULES and len(submodules) < len(names or [None]):
                targets.add(base)
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_must() -> None:
    """The walker itself: relative, nested, TYPE_CHECKING and submodule imports are edges;
    imports inside functions are not."""
    graph = import_graph()
    assert "asyncipc.signals" in graph["asyncipc"]  # from . import signals
    assert "asyncipc.errors" in graph["asyncipc.protocol.frames"]  # from ..errors import
    assert "asyncipc.transports.pipe" in graph["asyncipc.broker"]  # under TYPE_CHECKING
    assert "asyncipc.broker" in graph["asyncipc._metrics"]  # under TYPE_CHECKING
    assert "asyncipc.transports._ring.ring" in graph["asyncipc.transports._ring.link"]
    # Broker.spawn imports transports.pipe inside a function only: no edge from it counts,
    # the TYPE_CHECKING one above does.
    assert "asyncipc.adapters.grpc" not in graph["asyncipc.transports"]  # importlib, lazily


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_package_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_pure_core_imports_no_io() -> None:
    """STYLE.md rule 1: protocol codec, subject index and router import nothing that does I/O."""
    pure = [n for n in MODULES if n.startswith("asyncipc.protocol")]
    pure += ["asyncipc.subjects", "asyncipc.router", "asyncipc.errors"]
    graph = import_graph()  # once: each call parses every module of the package
    for name in pure:
        tree = ast.parse(MODULES[name].read_text())
        for node in module_level_imports(tree):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            for mod in modules:
                assert mod not in ("asyncio", "socket", "anyio", "selectors"), (name, mod)
        local = {m for m in graph[name] if m.startswith("asyncipc")}
        allowed = set(pure) | {"asyncipc.protocol"}
        assert local <= allowed, f"{name} imports {sorted(local - allowed)}"


def _import_alone(name: str) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return name, proc.returncode, proc.stderr


@pytest.mark.timeout(300)
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Each module first, before anything else of the package: an order-dependent import
    (a cycle that happens to resolve from ``asyncipc/__init__.py`` only) fails here."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import_alone, sorted(MODULES)))
    failed = [
        f"{name} (exit {rc}): {err.strip().splitlines()[-1:]}" for name, rc, err in results if rc
    ]
    assert failed == []
    assert len(results) == len(MODULES) > 50
