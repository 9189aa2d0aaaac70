"""Keeps the layers honest: the import graph of our packages, read from the source with `ast`.

The rule encoded here (SPEC §1 "dependencies point inward", the house plan; fraud's row from what
SPEC §1 says it does — it "reads the event stream and writes its own events/read models through
application" — and from what it imports today):

    domain          imports nothing of ours
    application     domain
    infrastructure  domain, application            (implements application's ports)
    fraud           domain, application
    api             domain, application, infrastructure, fraud
    keel            the runtime: all of the above  (composition root and command line; nothing imports it)
    keel_tools      all of the above and keel      (composes the runtime like a user would)

The runtime is every package but keel_tools, so none of it may import keel_tools. And there is no
import cycle, neither between files nor between these packages (a subfolder counts as part of its
top-level package).

What counts as an import: every `import` and `from … import` anywhere in a file — module level,
inside functions, under `if TYPE_CHECKING:` — relative ones resolved; `from pkg import name` is an
import of the module `pkg.name` when there is one, else of `pkg`. Importing `a.b` counts as an
import of `a.b` only, not of the package `a`'s `__init__`. Not followed: `importlib` calls and entry
points, which is how keel/cli.py reaches keel_tools on purpose (its tests are at the end).
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("domain", "application", "infrastructure", "api", "fraud", "keel")
PACKAGES = (*RUNTIME, "keel_tools")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "application": frozenset({"domain"}),
    "infrastructure": frozenset({"domain", "application"}),
    "fraud": frozenset({"domain", "application"}),
    "api": frozenset({"domain", "application", "infrastructure", "fraud"}),
    "keel": frozenset({"domain", "application", "infrastructure", "fraud", "api"}),
    "keel_tools": frozenset(RUNTIME),
}

# The allow-list: imports against the rule that other work is removing (issue #13), as
# (file, imported module) -> why. They are left out of the graph for every check below; one that no
# longer exists fails `test_known_violations_still_exist`, so the list only shrinks; never add to
# it to get a change through.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "api.app"
    target: str  # imported module of ours, e.g. "keel.bootstrap"
    path: str  # the importing file, relative to the repository
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def _modules() -> dict[str, Path]:
    """Every module of our packages: dotted name -> file (a package is its __init__.py)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that `name` names: the longest prefix of it that is one of our modules."""
    if _package(name) not in PACKAGES:
        return None
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imports_of(module: str, rel: str, source: str, modules: dict[str, Path]) -> list[Import]:
    """The imports of ours in `source`, the text of the file `rel` that holds `module`."""
    is_package = rel.endswith("__init__.py")
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        target = _ours(name, modules)
        if target is not None and Import(module, target, rel, line) not in found:
            found.append(Import(module, target, rel, line))

    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, up level - 1 more
                here = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base, node.lineno)
    return found


def _graph() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    imports = [i for m, p in modules.items() for i in _imports_of(m, p.relative_to(ROOT).as_posix(), p.read_text(), modules)]
    return modules, imports


def _cycles(edges: dict[str, dict[str, object]]) -> list[list[str]]:
    """Cycles that together pass through every module caught in one: Tarjan's strongly connected
    components, then, from each member no cycle found so far passes through, the shortest way back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
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
            components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles: list[list[str]] = []
    for component in components:
        members = set(component)
        covered: set[str] = set()
        for start in component:
            if start in covered or (len(component) == 1 and start not in edges.get(start, {})):
                continue
            came_from: dict[str, str] = {}
            frontier = [start]
            while frontier and start not in came_from:
                reached = []
                for v in frontier:
                    for w in sorted(edges.get(v, {})):
                        if w in members and w not in came_from:
                            came_from[w] = v
                            reached.append(w)
                frontier = reached
            path = [start]
            while True:
                path.append(came_from[path[-1]])
                if path[-1] == start:
                    break
            cycles.append(path[::-1])
            covered.update(path)
    return cycles


def _describe(cycle: list[str], edges: dict[str, dict[str, Import]]) -> str:
    steps = [f"{a} -> {b}  ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


def _checked_imports() -> list[Import]:
    _, imports = _graph()
    return [i for i in imports if (i.path, i.target) not in KNOWN_VIOLATIONS]


def test_the_graph_is_read() -> None:
    """A guard for the guard: the walk finds our modules and every kind of import."""
    modules, imports = _graph()
    assert {"domain.account", "application.ledger", "api.app", "keel.cli", "keel_tools.chaos"} <= set(modules)
    assert ("keel_tools.bench_ledger", "keel_tools.pgbench") in {(i.source, i.target) for i in imports}
    source = (
        "import os, keel.cli\n"
        "from keel_tools import chaos, not_a_module\n"
        "from . import procs\n"
        "from ..keel.bootstrap import build\n"
        "def f():\n"
        "    if True:\n"
        "        from domain.money import whatever\n"
    )
    found = _imports_of("keel_tools.probe", "keel_tools/probe.py", source, modules)
    assert [(i.target, i.line) for i in found] == [
        ("keel.cli", 1), ("keel_tools.chaos", 2), ("keel_tools", 2), ("keel_tools.procs", 3),
        ("keel.bootstrap", 4), ("domain.money", 7),
    ]  # fmt: skip


def test_the_cycle_finder_names_every_cycle() -> None:
    edges: dict[str, dict[str, object]] = {"a": {"b": 0}, "b": {"a": 0, "c": 0}, "c": {"b": 0, "d": 0}, "d": {"e": 0}, "e": {"e": 0}}
    assert _cycles(edges) == [["e", "e"], ["a", "b", "a"], ["c", "b", "c"]]


def test_no_import_cycle_between_files() -> None:
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for i in _checked_imports():
        edges[i.source].setdefault(i.target, i)
    cycles = _cycles(edges)
    assert not cycles, "import cycles between files:\n  " + "\n  ".join(_describe(c, edges) for c in cycles)


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for i in _checked_imports():
        if _package(i.source) != _package(i.target):
            edges[_package(i.source)].setdefault(_package(i.target), i)
    cycles = _cycles(edges)
    assert not cycles, "import cycles between packages:\n  " + "\n  ".join(_describe(c, edges) for c in cycles)


def test_dependencies_point_inward() -> None:
    wrong = [
        f"{i}  ({_package(i.source)} may import only: {', '.join(sorted(MAY_IMPORT[_package(i.source)])) or 'nothing of ours'})"
        for i in _checked_imports()
        if _package(i.target) != _package(i.source) and _package(i.target) not in MAY_IMPORT[_package(i.source)]
    ]
    assert not wrong, "imports against the layering (SPEC §1):\n  " + "\n  ".join(wrong)


def test_the_runtime_never_imports_keel_tools() -> None:
    """Said by the table above too; kept apart so that its failure names the rule it breaks."""
    wrong = [str(i) for i in _checked_imports() if _package(i.source) in RUNTIME and _package(i.target) == "keel_tools"]
    assert not wrong, "the runtime imports keel_tools (reach it through an entry point):\n  " + "\n  ".join(wrong)


def test_known_violations_still_exist() -> None:
    _, imports = _graph()
    present = {(i.path, i.target) for i in imports}
    gone = [f"{path} -> {target}" for path, target in KNOWN_VIOLATIONS if (path, target) not in present]
    assert not gone, "fixed — remove from KNOWN_VIOLATIONS in tests/test_architecture.py:\n  " + "\n  ".join(gone)


# ---- the runtime stands without keel_tools -----------------------------------------------------

TOOL_COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["keel.commands"]


def _keel_without(blocked: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    """`keel ARGV` in a fresh interpreter where importing any of `blocked` fails, as when the
    [tools] extra (or keel_tools itself) is not installed."""
    code = (
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from keel.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )  # fmt: skip


def test_tool_commands_come_from_the_entry_points() -> None:
    from importlib.metadata import entry_points

    from keel.cli import build_parser

    assert set(TOOL_COMMANDS) == {"bench", "chaos"}
    installed = {ep.name: ep for ep in entry_points(group="keel.commands")}
    assert set(installed) == set(TOOL_COMMANDS), "the install is stale: pip install -e .[dev,tools]"
    for ep in installed.values():
        ep.load()  # an ImportError here is what `keel` would show in place of the command
    parser = build_parser()
    for argv in (["bench", "ledger", "--seconds", "1"], ["bench", "http"], ["chaos", "--minutes", "0.5"]):
        args = parser.parse_args(argv)
        assert args.func.__module__ == "keel_tools.commands", (
            f"`keel {' '.join(argv)}` is not keel_tools' — is the install stale? pip install -e .[dev,tools]"
        )


@pytest.mark.parametrize("blocked", [("keel_tools",), ("httpx",)], ids=["no keel_tools", "no tools extra"])
def test_without_the_tools_keel_runs_and_says_how_to_install_them(blocked: tuple[str, ...]) -> None:
    done = _keel_without(blocked, "--help")
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "bench" in done.stdout
    for argv in (["bench", "ledger", "--seconds", "1"], ["chaos", "--minutes", "1"], ["bench", "--help"]):
        done = _keel_without(blocked, *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install -e .[tools]" in lines[0], (argv, done.stderr)
