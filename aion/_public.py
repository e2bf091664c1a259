"""Public names report their public package: ``aion.WorkflowNotFound`` in a traceback, not
``aion.errors.WorkflowNotFound`` (or a private module's path, which may move).

Each public package calls :func:`publish` once, at the end of its ``__init__``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["publish"]


def publish(namespace: Mapping[str, Any], names: Iterable[str], module: str) -> None:
    """Set ``__module__`` to ``module`` on the classes among ``names`` defined inside aion.

    A class another public package published already (its module is no longer ``aion.*``)
    keeps its name. Pickle finds the classes by the new path, which the package re-exports.
    String annotations (``from __future__ import annotations``) are evaluated first, in the
    module that defines the class: they name things the public package does not hold, and
    ``typing.get_type_hints`` and msgspec look them up in ``sys.modules[cls.__module__]``.
    """
    for name in names:
        obj = namespace[name]
        if isinstance(obj, type) and obj.__module__.startswith("aion."):
            _resolve_annotations(obj)
            obj.__module__ = module


def _resolve_annotations(cls: type) -> None:
    annotations = inspect.get_annotations(cls)  # the class's own, a copy
    if not any(isinstance(value, str) for value in annotations.values()):
        return
    globalns = vars(sys.modules[cls.__module__])
    localns = dict(vars(cls))
    for key, value in annotations.items():
        if isinstance(value, str):
            try:
                annotations[key] = eval(value, globalns, localns)
            except Exception:  # a name only imported for type checkers: leave it as it was
                continue
    cls.__annotations__ = annotations
