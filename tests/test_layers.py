"""The layers of ARCHITECTURE.md: imports inside aion point down only.

Every module must be classified here; a new module that is not fails the test, so its author
decides where it stands.
"""

from __future__ import annotations

import ast
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
    ("aion.store", 1),
    ("aion._tokens", 1),
    ("aion._replay", 2),
    ("aion._timerwheel", 3),
    ("aion._supervision", 3),
    ("aion._recovery", 4),
    ("aion._engine", 5),
    ("aion.testing", 6),
    ("aion.cli", 7),  # runs the demo, an app on the public API
    ("aion._demo", 7),  # an app built on the public API, like a user's
    ("aion._format", 6),
    ("aion.http", 6),
    ("aion", 7),  # the package __init__: re-exports from everything
]


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for prefix, layer in LAYERS:
        matches = module == prefix or module.startswith(prefix + ".")
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


def violations_in(path: Path, module: str) -> list[str]:
    mine = layer_of(module)
    found = []
    for target in imports_of(path, module):
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
