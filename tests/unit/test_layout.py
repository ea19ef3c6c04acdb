"""The layout a newcomer reads: no two modules of the project import each other, even
only for type checking (a view that imports its service back, say), and the tools under
bench/ do not import the command line (cli/). That the engine imports no saga is checked
in test_engine.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("messaging", "orchestrator", "participants", "schemas", "cli", "bench", "chaos")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The project's modules `path` imports (type-checking imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return (found & known) - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group: list[str] = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other() -> None:
    files = module_files()
    graph = {name: imported(path, name, set(files)) for name, path in files.items()}
    assert cycles(graph) == []


def test_bench_imports_nothing_of_the_command_line() -> None:
    files = module_files()
    bench = {name: path for name, path in files.items() if name.split(".")[0] == "bench"}
    assert bench
    imports_of_cli = {
        name: sorted(
            other for other in imported(path, name, set(files)) if other.split(".")[0] == "cli"
        )
        for name, path in bench.items()
    }
    assert {name: cli for name, cli in imports_of_cli.items() if cli} == {}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
