"""The package's shape (issue #15): one module per command under ``cli/``, wired from a static list,
no import cycles, no lazy ``importlib``, and the command line the top layer only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sfsync
from sfsync.cli import main as cli_main

PACKAGE = Path(sfsync.__file__).parent
# Argument types for argparse (ArgumentTypeError) live beside the values they check; the simulators have
# their own command line.
ARGPARSE_ALLOWED = {"sfsync.settings.bounds", "sfsync.settings.timeargs", "sfsync.sim.cli"}
CLI_SUPPORT = {"sfsync.cli", "sfsync.cli.__main__", "sfsync.cli.main", "sfsync.cli.common", "sfsync.cli.outputs"}


def _in_cli(name: str) -> bool:
    return name == "sfsync.cli" or name.startswith("sfsync.cli.")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The sfsync modules a file imports (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # never runs
            nodes.extend(ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node])
    else:
        nodes = list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in MODULES or n.split(".")[0] in ("argparse", "importlib")}


def test_no_import_cycles_at_import_time() -> None:
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in MODULES and m != name}
             for name, path in MODULES.items()}
    # A package's __init__ runs before its submodules: an edge to a parent package is not a cycle.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep):], dep] if dep in trail else [node, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_lazy_importlib_and_argparse_only_on_the_command_line() -> None:
    offenders = {}
    for name, path in MODULES.items():
        used = _imports(path, top_level_only=False)
        if "importlib" in used or any(u.startswith("importlib.") for u in used):
            offenders[name] = "importlib"
        elif "argparse" in used and not _in_cli(name) and name not in ARGPARSE_ALLOWED:
            offenders[name] = "argparse"
    assert offenders == {}


def test_only_the_command_line_imports_the_command_line() -> None:
    """cli/ is the top layer: no module below it reaches up into it, not even inside a function."""
    upward = {name: sorted(m for m in _imports(path, top_level_only=False) if _in_cli(m))
              for name, path in MODULES.items() if not _in_cli(name)}
    assert {k: v for k, v in upward.items() if v} == {}


def test_every_command_module_is_registered_from_the_static_list() -> None:
    command_modules = {n for n in MODULES if _in_cli(n) and n not in CLI_SUPPORT}
    registered = {register.__module__ for register in cli_main.REGISTRARS}
    assert registered == command_modules
    help_text = cli_main.build_parser().format_help()
    for module in command_modules:
        assert module.rsplit(".", 1)[1].replace("_", "-") in help_text


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """An import cycle that breaks shows as ImportError for whichever module is imported first: each one
    is tried first, with every sfsync module forgotten in between."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'sfsync' or m.startswith('sfsync.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    names = [n for n in MODULES if not n.endswith("__main__")]
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- layers (issue #19): an import only goes down ---------------------------------------------------------------
# From the top: the command line; push and ops; the engine; sources; the pipeline; clients and the store;
# settings; the domain; what everything uses (terminal, how text reaches a terminal, below the logs).
# The simulators stand apart: only the command line starts them.
LAYERS: dict[str, int] = {
    "cli": 9, "push": 8, "ops": 7, "engine": 6, "sources": 5, "pipeline": 4, "clients": 3, "store": 3,
    "settings": 2, "domain": 1, "errors": 0, "logs": 0, "httpd": 0, "sfsync": 0, "terminal": -1,
}
# Same layer, but one must not use the other.
FORBIDDEN = {("push", "sources"), ("sources", "engine")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sfsync"


def test_every_module_is_in_a_layer() -> None:
    assert {_layer(m) for m in MODULES} - set(LAYERS) == {"sim"}


def test_imports_only_go_down_the_layers() -> None:
    upward = {}
    for name, path in MODULES.items():
        mine = _layer(name)
        for other in (_layer(m) for m in _imports(path, top_level_only=False) if m in MODULES):
            if other == mine:
                continue
            if other == "sim":
                wrong = mine != "cli"  # the simulators are never imported by the worker
            else:
                wrong = mine != "sim" and (LAYERS[other] >= LAYERS[mine] or (mine, other) in FORBIDDEN)
            if wrong:
                upward.setdefault(name, set()).add(other)
    assert upward == {}


def test_no_private_name_is_imported_across_modules() -> None:
    """A leading underscore means 'this module's own': no other module imports it (tests included)."""
    found = {}
    for path in [*MODULES.values(), *Path(__file__).parent.glob("*.py"), *BENCH.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sfsync"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found[f"{path.name}: {node.module}"] = private
    assert found == {}


BENCH = PACKAGE.parent / "bench"


def test_no_import_cycles_in_the_benchmarks() -> None:
    """bench/ imports its own modules by name (scripts run from there), inside functions too."""
    names = {p.stem: p for p in BENCH.glob("*.py")}
    graph = {}
    for stem, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in names:
                deps.add(node.module)
        graph[stem] = deps - {stem}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    cycles.append(trail)
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
    assert cycles == []
