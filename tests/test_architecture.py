"""The package's import rules: data flows one way, and each subsystem knows only its neighbours.

Rooms (folders) and leaves (shared vocabulary at the top level)::

    leaves   clock config errors schema segment     import only leaves
             urls pg
    ingest/  request -> ack                         leaves
    store/   durable on this node                   leaves
    keys/    key -> project                         leaves, store.sqlite (where local keys live)
    forward/ node -> engines                        leaves, store
    otlp/    OpenTelemetry exports -> events        leaves, store
    console/ the console in the browser             leaves, store, keys, forward (engine reads)
    node/    the process: wires everything          anything but cli
    cli      the command line                       anything; the only one that imports node

Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "trubrics_ingestion"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE
LEAVES = {"clock", "config", "errors", "schema", "segment", "urls", "pg"}
ALLOWED: dict[str, set[str]] = {
    "leaf": {"leaf"},
    "ingest": {"leaf", "ingest"},
    "store": {"leaf", "store"},
    "keys": {"leaf", "keys", "store.sqlite"},
    "forward": {"leaf", "forward", "store"},
    "otlp": {"leaf", "otlp", "store"},
    "console": {"leaf", "console", "store", "keys", "forward"},
    "node": {"leaf", "ingest", "store", "keys", "forward", "otlp", "console", "node"},
    "cli": {"leaf", "ingest", "store", "keys", "forward", "otlp", "console", "node", "cli"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module of the package that ``path`` imports, at any depth of its code."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module.split(".")[1:]
            else:
                continue
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if (ROOT.joinpath(*target, n + ".py")).exists()]
            if submodules:
                yield from (".".join([*target, n]) for n in submodules)
            else:
                yield ".".join(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield ".".join(alias.name.split(".")[1:])


def room_of(module: str) -> str:
    first = module.split(".")[0]
    if first in LEAVES:
        return "leaf"
    return first or "__init__"


def graph() -> dict[str, set[str]]:
    return {
        module_name(path): {m for m in imports_of(path) if m} for path in sorted(ROOT.rglob("*.py"))
    }


def allowed(source: str, target: str) -> bool:
    rules = ALLOWED[room_of(source)]
    return room_of(target) in rules or any(
        target == rule or target.startswith(rule + ".") for rule in rules
    )


def test_every_import_follows_the_rules() -> None:
    broken = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in sorted(targets)
        if room_of(source) != room_of(target) or room_of(source) == "leaf"
        if not allowed(source, target)
    ]
    assert not broken, "imports against the rules:\n" + "\n".join(broken)


def test_only_the_command_line_imports_the_node() -> None:
    importers = {s for s, ts in graph().items() for t in ts if room_of(t) == "node"}
    assert {room_of(s) for s in importers} <= {"cli", "node"}, importers


def test_no_module_imports_another_in_a_cycle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in edges.get(module, ()):
            # a package's __init__ re-exports its own modules: that is not a cycle
            if not module.startswith(target + ".") and target in edges:
                visit(target, [*path, module])
        done.add(module)

    for module in edges:
        visit(module, [])


def test_every_module_says_what_it_is_for() -> None:
    silent = [
        module_name(path)
        for path in ROOT.rglob("*.py")
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not silent, f"modules without a docstring: {silent}"


@pytest.mark.parametrize(
    "code",
    [
        "import trubrics_ingestion.urls",
        "from trubrics_ingestion.cli import main\n"
        "main(['keys', 'list', '--data-dir', sys.argv[1]], standalone_mode=False)",
    ],
    ids=["urls", "keys list"],
)
def test_psycopg_and_uvicorn_load_only_when_used(code: str, tmp_path: Path) -> None:
    """URLs and the local key commands need no database driver nor HTTP server."""
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "psycopg" not in loaded and "uvicorn" not in loaded, loaded
