"""The files an engine keeps in its data directory beside the store: the waitpoint key ring
and the payload limit that other processes check what they queue against."""

from __future__ import annotations

import logging
import os
import weakref
from datetime import datetime
from typing import Any

from aion._tokens import KeyRing, load_or_create
from aion.errors import AionError, DataDirectoryError
from aion.store._postgres_import import is_postgres_url

__all__ = [
    "PAYLOAD_LIMIT_FILE",
    "data_dir",
    "load_keys",
    "read_payload_limit",
    "record_payload_limit",
]

log = logging.getLogger("aion.engine")

#: The file in the data directory where an engine records its ``max_payload_bytes``: the CLI
#: and the Client check what they queue against it.
PAYLOAD_LIMIT_FILE = "payload-limit"

#: Key rings of stores without a data directory (in-memory stores), shared by the engines that
#: run on one store in turn, for as long as the store lives.
_EPHEMERAL_KEYS: weakref.WeakKeyDictionary[Any, KeyRing] = weakref.WeakKeyDictionary()


def data_dir(target: object) -> str | os.PathLike[str] | None:
    """The data directory of an engine's target (a path, or a store with a ``path``); None for
    a store without one (memory, PostgreSQL)."""
    if isinstance(target, str | os.PathLike):
        return None if is_postgres_url(target) else target
    path = getattr(target, "path", None)
    return path if isinstance(path, str | os.PathLike) else None


def load_keys(target: object, *, given: KeyRing | None, require: bool, now: datetime) -> KeyRing:
    """The key ring that signs waitpoint tokens: ``given``, else the data directory's key file
    (created on first use), else one kept with the in-memory store for as long as it lives."""
    if given is not None:
        return given
    kept = getattr(target, "load_or_create_key_ring", None)
    if kept is not None:  # a store that keeps the ring itself (PostgreSQL: shared by engines)
        kept_ring: KeyRing = kept(now=now, require_existing=require)
        return kept_ring
    directory = data_dir(target)
    if directory is None:
        if require:
            raise DataDirectoryError(
                "the engine requires a provided waitpoint key (require_waitpoint_key=True) "
                "and its store has no data directory: pass waitpoint_key=..."
            )
        ring = _EPHEMERAL_KEYS.get(target)
        if ring is None:
            ring = _EPHEMERAL_KEYS[target] = KeyRing.generate(now)
        return ring
    return load_or_create(directory, now=now, require_existing=require)


def record_payload_limit(target: object, limit: int) -> None:
    """Other processes (the CLI, a Client) check what they queue against this engine's
    limit. Never worth failing a start: a failure is logged."""
    recorder = getattr(target, "record_payload_limit", None)
    if recorder is not None:  # a store that keeps it itself
        try:
            recorder(limit)
        except AionError as exc:
            log.warning("could not record the payload limit in %r: %s", target, exc)
        return
    directory = data_dir(target)
    if directory is None:
        return
    path = os.path.join(directory, PAYLOAD_LIMIT_FILE)
    text = f"{limit}\n"
    try:
        with open(path, encoding="ascii") as f:
            if f.read() == text:
                return
    except (OSError, ValueError):
        pass
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        with open(partial, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(partial, path)
    except OSError as exc:
        log.warning("could not record the payload limit in %s: %s", path, exc)


def read_payload_limit(directory: str | os.PathLike[str]) -> int | None:
    """The limit the engine that last started on ``directory`` recorded; None when no engine
    has run there yet, or the file cannot be read."""
    try:
        with open(os.path.join(directory, PAYLOAD_LIMIT_FILE), encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
