"""Importing the PostgreSQL backend, whose driver is an optional extra."""

from __future__ import annotations

from typing import Any

from aion.errors import DependencyMissing

__all__ = ["is_postgres_url", "postgres_store"]


def postgres_store() -> Any:
    """The PostgresStore class.

    Raises:
        DependencyMissing: psycopg or psycopg_pool is not installed.
    """
    try:
        from ._postgres import PostgresStore  # noqa: PLC0415 (the driver is optional)
    except ImportError as exc:
        raise DependencyMissing(
            f"the PostgreSQL backend needs psycopg 3 and psycopg_pool ({exc}); "
            'install them with: pip install "aion[postgres]"'
        ) from exc
    return PostgresStore


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)
    rather than a data directory."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
