"""Identifiers the engine makes up: run ids, and workflow ids when the caller gives none."""

from __future__ import annotations

import os
import random

__all__ = ["new_id"]

_rng = random.Random(os.urandom(32))


def new_id() -> str:
    """32 hex digits holding 128 random bits: the shape of ``uuid.uuid4().hex``.

    ``uuid4`` reads the operating system's random source (a system call) for every id, and a
    start makes two. These ids need to be unique, not secret (tokens that must be unguessable
    are signed, see ``aion._tokens``), so they come from a generator seeded once per process
    from ``os.urandom`` and seeded afresh in a forked child (which would otherwise repeat its
    parent's ids).
    """
    return f"{_rng.getrandbits(128):032x}"


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)
