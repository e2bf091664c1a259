"""The layers of ARCHITECTURE.md: imports inside aion point down only, and no modules import
each other in a cycle.

Every module must be classified here; a new module that is not fails the test, so its author
decides where it stands.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import aion

ROOT = Path(aion.__file__).parent

# Lower number = lower layer. A module may import only from its own layer or lower ones.
LAYERS: list[tuple[str, int]] = [
    ("aion.errors", 0),
    ("aion.events", 0),
    ("aion._codec", 0),
    ("aion._clock", 0),
    ("aion._loop", 0),
    ("aion._ids", 0),
    ("aion._gc", 0),
    ("aion._validate", 0),  # the one validation every entry point shares
    ("aion._public", 0),  # sets __module__ of the public classes to their public package
    ("aion._secretfile", 0),  # owner-only secret files, for the key ring and the store
    ("aion._apikeys", 0),  # the control plane's API key file: stdlib and msgspec only
    ("aion._tracing", 0),  # OpenTelemetry spans, if its API is installed
    ("aion.store", 1),
    ("aion._tokens", 1),
    ("aion._doorbell", 1),  # a wake-up socket between processes: stdlib and anyio only
    ("aion._replay", 2),
    ("aion._timerwheel", 3),
    ("aion._supervision", 3),
    ("aion._recovery", 4),
    ("aion._control", 4),  # control rules shared by the engine, the Client and the CLI
    ("aion._engine", 5),
    ("aion.testing", 6),
    ("aion._client", 6),  # the public Client for other processes, beside testing
    ("aion.cli", 7),  # runs the demo, an app on the public API
    ("aion._demo", 7),  # an app built on the public API, like a user's
    ("aion._format", 6),
    ("aion.server", 6),  # the control plane (HTTP API): an app on the Engine's public methods
    ("aion.__main__", 7),  # python -m aion: the command line
    ("aion", 7),  # the package __init__ only: re-exports from everything
]

#: Import cycles inside aion._engine that are being removed (issue 13), each as the sorted
#: modules tangled in it, e.g. ("aion._engine._actor", "aion._engine._engine"). TEMPORARY: it
#: only shrinks (an entry that is no longer a cycle fails), and holds aion._engine cycles only.
_KNOWN_ENGINE_CYCLES_BEING_REMOVED: frozenset[tuple[str, ...]] = frozenset()


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for prefix, layer in LAYERS:
        # "aion" is the package __init__, not a catch-all for modules nobody classified.
        matches = module == prefix or (prefix != "aion" and module.startswith(prefix + "."))
        if matches and (best is None or len(prefix) > best[0]):
            best = (len(prefix), layer)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aion"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("aion"):
                if node.module is None or target in ("aion", "aion.store"):
                    found.update(f"{target}.{a.name}" for a in node.names)
                else:
                    found.add(target)
    return found


#: Upward imports allowed by name, each inside a function: ``engine.asgi_app()`` builds the
#: optional control plane (the extra ``aion[server]``) on request, the one place the engine
#: reaches up; the server itself uses only the engine's public methods.
ALLOWED_UPWARD = {("aion._engine._engine", "aion.server")}


def violations_in(path: Path, module: str) -> list[str]:
    mine = layer_of(module)
    found = []
    for target in imports_of(path, module):
        if (module, target) in ALLOWED_UPWARD:
            continue
        try:
            theirs = layer_of(target)
        except AssertionError:
            theirs = layer_of(target.rpartition(".")[0])
        if theirs > mine:
            found.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    return found


def test_imports_point_down_only() -> None:
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        violations += violations_in(path, module_name(path))
    assert not violations, "\n".join(violations)


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text("from aion._engine import Engine\nfrom ..errors import AionError\n")
    assert violations_in(path, "aion.store._mod") == [
        "aion.store._mod (layer 1) imports aion._engine (layer 5)"
    ]


def test_every_module_is_in_a_layer() -> None:
    for path in sorted(ROOT.rglob("*.py")):
        layer_of(module_name(path))


# --- import cycles -------------------------------------------------------------------------


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at module level, also under ``if
    TYPE_CHECKING:`` and ``try:`` (a cycle there is a cycle for the type checker, and the
    next runtime import away); not inside functions, which import lazily."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """For each module, the modules among ``modules`` it imports at module level.

    ``from pkg import name`` is an import of ``pkg.name`` if that is a module, else of ``pkg``
    (its ``__init__``); relative imports are resolved.
    """
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in module_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        found.discard(module)
        graph[module] = found
    return graph


def cycles_in(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one cycle
    through its first module, ``[a, b, c, a]``, then the rest of the component's modules
    (tangled in other cycles through these)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for component in components:
        cycle = _cycle_through(graph, component)
        found.append(cycle + sorted(component - set(cycle)))
    return sorted(found)


def _cycle_through(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle from the first module of ``component`` back to it, inside it."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for v in queue:  # breadth first
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _shown(cycle: list[str]) -> str:
    end = cycle.index(cycle[0], 1) + 1
    rest = cycle[end:]
    also = f" (in other cycles with: {', '.join(rest)})" if rest else ""
    return " -> ".join(cycle[:end]) + also


def aion_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def test_no_import_cycles() -> None:
    for knot in _KNOWN_ENGINE_CYCLES_BEING_REMOVED:
        assert all(m.startswith("aion._engine.") for m in knot), f"not an engine cycle: {knot}"
    found = cycles_in(import_graph(aion_modules()))
    known = {tuple(sorted(set(cycle))) for cycle in found} & _KNOWN_ENGINE_CYCLES_BEING_REMOVED
    new = [cycle for cycle in found if tuple(sorted(set(cycle))) not in known]
    assert not new, "modules import each other in a cycle:\n" + "\n".join(
        _shown(cycle) for cycle in new
    )
    gone = _KNOWN_ENGINE_CYCLES_BEING_REMOVED - known
    assert not gone, f"no longer cycles: remove from _KNOWN_ENGINE_CYCLES_BEING_REMOVED: {gone}"


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
    )
    (package / "b.py").write_text("from pkg import c\n")
    (package / "c.py").write_text("from . import a\ndef later():\n    from . import b\n")
    (package / "d.py").write_text("from pkg.a import A\n")  # imports into the cycle: not in it
    modules = {f"pkg.{p.stem}": p for p in package.glob("*.py") if p.stem != "__init__"}
    modules["pkg"] = package / "__init__.py"
    assert cycles_in(import_graph(modules)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
