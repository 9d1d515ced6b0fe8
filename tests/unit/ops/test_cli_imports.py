"""The CLI is the root of cloudbill/'s imports: no module of the package imports back from one that imports it
(function-level imports and `importlib.import_module("cloudbill...")` included, since a cycle hidden in a
function still ties the modules together), and `cloudbill --help` lists every command and group it did."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from cloudbill.cli import app

PACKAGE = Path(__file__).resolve().parents[3] / "cloudbill"

# `cloudbill --help` before the sub-command modules were imported at the top of cli.py: same names, same order.
COMMANDS = ["run", "config", "token", "demo", "replay", "status", "forecast", "chaos"]
GROUPS = ["topics", "db", "sim", "poll", "invoices", "dev", "dlq", "export"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The cloudbill modules one import statement (or import_module call) brings in."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join([*base, *([node.module] if node.module else [])])
        else:
            prefix = node.module or ""
        names = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        names = [node.args[0].value]
    found = set()
    for name in names:
        # `import cloudbill.a.b` also runs cloudbill/a/__init__.py: keep the longest known module of each name.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """cloudbill module -> the cloudbill modules it imports, anywhere in its body."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            edges |= _targets(node, module, is_package, known)
        graph[module] = edges - {module, "cloudbill"}  # the package itself is empty and imports nothing
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_importlib_imports(tmp_path: Path) -> None:
    known = {"cloudbill.cli", "cloudbill.ops", "cloudbill.context"}
    tree = ast.parse(
        "import importlib\n"
        "def f():\n    from cloudbill.cli import _settings\n"
        "importlib.import_module('cloudbill.ops')\n"
        "from . import context\n"
    )
    found = set().union(*(_targets(n, "cloudbill.dlq", False, known) for n in ast.walk(tree)))
    assert found == known


def test_cloudbill_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert {"cloudbill.cli", "cloudbill.context", "cloudbill.ops", "cloudbill.services"} <= set(graph)
    assert "cloudbill.ops" in graph["cloudbill.cli"]  # the root imports its sub-command modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert {m for m, edges in graph.items() if "cloudbill.cli" in edges} == {"cloudbill.__main__"}


def test_help_lists_every_command_and_group_as_before() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    listed = group.list_commands(typer.Context(group))
    assert listed == COMMANDS + GROUPS
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in listed:
        assert f" {name} " in res.output, name


def test_the_installed_entry_point_starts() -> None:
    """A real start, fresh interpreter: an import cycle would fail here before any command runs."""
    res = subprocess.run([sys.executable, "-m", "cloudbill", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert all(f" {name} " in res.stdout for name in COMMANDS + GROUPS), res.stdout
