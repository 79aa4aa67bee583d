"""The structure rules of docs/architecture.md, checked on the source: no import cycle between
assay's modules (imports inside functions count, ``if TYPE_CHECKING:`` ones do not), no module
over 800 lines, and the stores built in one place."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """Module name -> file, migrations left out (Alembic loads them by path)."""
    found = {}
    for path in sorted((SRC / "assay").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The assay modules ``name`` imports, with the packages whose ``__init__`` that runs
    (importing ``a.b.c`` runs ``a.b``), except its own enclosing packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for branch in child.orelse:
                    visit(branch)
                continue
            if isinstance(child, ast.Import):
                named.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    named.add(full if full in modules else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    result = set()
    for module in named:
        bits = module.split(".")
        for i in range(1, len(bits) + 1):
            prefix = ".".join(bits[:i])
            if prefix in modules and prefix not in own:
                result.add(prefix)
    return result


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root, edges_of_root in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(edges_of_root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        yield sorted(component)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert graph["assay.tracing.store"], "the import graph found no imports: the check is broken"
    assert list(_cycles(graph)) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(_cycles(graph)) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_800_lines(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concept"


# Where each store class may be constructed: assay.stores builds them all for a database. The
# two exceptions are the edges that need one store only: a Backend (the jobs-only Python API)
# owns its JobStore and hands it to Stores.on; StoreTransport writes a training loop's runs
# straight to a store without the server's packages.
ALLOWED = {
    "JobStore": {"assay/stores.py", "assay/jobs/backend.py"},
    "TraceStore": {"assay/stores.py"},
    "ScoringStore": {"assay/stores.py"},
    "TokenStore": {"assay/stores.py"},
    "TrackingStore": {"assay/stores.py", "assay/tracking/transport.py"},
}


@pytest.mark.parametrize("store", sorted(ALLOWED))
def test_stores_are_built_in_one_place(store: str) -> None:
    built_in = set()
    call = re.compile(rf"(?<![\w.`]){store}\(")
    for path in (SRC / "assay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and call.match(ast.unparse(node.func) + "("):
                built_in.add(path.relative_to(SRC).as_posix())
    assert "assay/stores.py" in built_in, "the check found no construction: it is broken"
    assert built_in <= ALLOWED[store]
