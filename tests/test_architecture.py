"""The layers, checked on the source: the import graph of the server and the client, read with `ast`.

Every import counts, at the top of a module or inside a function (a deferred import is still a
dependency: it only fails later). The rules are DESIGN.md's: the server's modules import one
another in one direction (no cycle); the api layer reaches the store only through use cases; the
domain is pure (no transport, no driver, no I/O library: stdlib, its own modules and the error tree);
the client does not need the server, nor the server the client (the `dspy-registry` command, which
has both, joins them from `dspy_registry/cli.py`). A failure names each offending edge with its file
and line.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = "dspy_registry.server"
CLIENT = "dspy_registry.client"
GENERATED = "dspy_registry.v1"  # the protoc output: not ours to shape

# Where a domain module may look: beside itself, and the error tree it raises from.
DOMAIN_MAY_IMPORT = (f"{SERVER}.domain", f"{SERVER}.errors")
# Named apart from the stdlib rule so that the message says why: sqlite3 is stdlib, and I/O.
DOMAIN_MUST_NOT_IMPORT = ("grpc", "google", "asyncpg", "aiosqlite", "sqlite3", "aiohttp", "socket", "asyncio")
# Third-party libraries the domain may use: pure computation, no I/O. semver is DESIGN.md's chosen
# library for version arithmetic (domain/versions.py).
DOMAIN_PURE_LIBRARIES = ("semver",)


@dataclass(frozen=True, kw_only=True)
class Edge:
    """`source` imports `target` (a module of ours, or a third-party / stdlib name) at `where`."""

    source: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}"


def _modules() -> dict[str, Path]:
    """Every module of ours by import name, from pyproject's package-dir mapping (the folders are not
    named as the packages are)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out: dict[str, Path] = {}
    for package, folder in setuptools["package-dir"].items():
        if package == GENERATED:
            continue
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base)
            if relative.parts[0] in ("v1", "__pycache__"):  # client/v1 is GENERATED's folder
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, name: str) -> str:
    """`name` as imported: the longest module of ours it starts with, else the name itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in MODULES:
            return prefix
    return name


def _imports(module: str) -> Iterator[Edge]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):  # ast.walk: imports inside functions too
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(source=module, target=_resolve(module, alias.name), where=where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            if origin == "__future__":
                continue
            for alias in node.names:
                # `from . import convert` imports the module convert; `from .x import name` imports x.
                submodule = f"{origin}.{alias.name}"
                target = submodule if submodule in MODULES else _resolve(module, origin)
                yield Edge(source=module, target=target, where=where)


EDGES = sorted({edge for module in MODULES for edge in _imports(module)}, key=str)


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _fail_with(edges: list[Edge], why: str) -> None:
    assert not edges, why + ":\n" + "\n".join(f"  {e}" for e in edges)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself),
    by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_layers() -> None:
    """A walk that found nothing would pass every rule below."""
    assert f"{SERVER}.api.registry" in MODULES and f"{SERVER}.store.base" in MODULES
    assert f"{CLIENT}.cli" in MODULES and f"{SERVER}.domain.deployments" in MODULES
    assert "dspy_registry.cli" in MODULES  # the command line, above both
    assert any(e.source == f"{SERVER}.app" and e.target == f"{SERVER}.store.base" for e in EDGES)


def test_no_import_cycle_between_server_modules() -> None:
    inside = [e for e in EDGES if _under(e.source, SERVER) and _under(e.target, SERVER)]
    graph: dict[str, set[str]] = {}
    for e in inside:
        graph.setdefault(e.source, set()).add(e.target)
    cycles = _cycles(graph)
    offending = [e for cycle in cycles for e in inside if e.source in cycle and e.target in cycle]
    _fail_with(offending, f"import cycles among {[', '.join(c) for c in cycles]}")


def test_the_api_layer_reaches_the_store_only_through_use_cases() -> None:
    _fail_with(
        [e for e in EDGES if _under(e.source, f"{SERVER}.api") and _under(e.target, f"{SERVER}.store")],
        "server/api imports server/store (call a use case in server/usecases instead)",
    )


def test_the_domain_is_pure() -> None:
    offending = []
    for e in EDGES:
        if not _under(e.source, f"{SERVER}.domain") or _under(e.target, *DOMAIN_MAY_IMPORT):
            continue
        top = e.target.split(".")[0]
        if top in DOMAIN_MUST_NOT_IMPORT or not (
            top in sys.stdlib_module_names or top in DOMAIN_PURE_LIBRARIES
        ):
            offending.append(e)
    _fail_with(offending, "server/domain imports beyond the domain, the error tree and the stdlib")


def test_the_client_does_not_import_the_server() -> None:
    _fail_with(
        [e for e in EDGES if _under(e.source, CLIENT) and _under(e.target, SERVER)],
        "the client imports the server (a client install must not need it)",
    )


def test_the_server_does_not_import_the_client() -> None:
    _fail_with(
        [e for e in EDGES if _under(e.source, SERVER) and _under(e.target, CLIENT)],
        "the server imports the client (the command that has both is dspy_registry/cli.py)",
    )
