"""PostgreSQL for the tests: where it is, whether it is there, and a fresh schema per use.

``AION_TEST_POSTGRES`` names the database (default: the local server of these machines,
``postgresql://postgres@127.0.0.1:5432/test``), whose schemas the tests use as scratch space:
each makes its own ``aion_test_*`` schema and drops it. Tests that need it skip with the reason
when the driver is not installed or the server does not answer; ``.ci/run`` makes sure both
are there and sets ``AION_REQUIRE_POSTGRES=1``, so in CI nothing skips.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

URL = os.environ.get("AION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"PostgreSQL tests need the extra aion[postgres] ({exc})"
    try:
        with psycopg.connect(URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {URL} (set AION_TEST_POSTGRES): {exc}"
    return None


def require() -> None:
    """Skip the calling test when PostgreSQL cannot be used, saying why (fail instead when
    ``AION_REQUIRE_POSTGRES=1``, as in CI: there nothing may skip)."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("AION_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def new_schema_name() -> str:
    return f"aion_test_{secrets.token_hex(6)}"


def drop_schema(name: str) -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def truncate(schema: str, tables: list[str]) -> None:
    """Empty ``tables`` of ``schema`` (nothing to do before the schema exists)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(URL, autocommit=True) as conn:
        made = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchone()
        if made and made[0]:
            conn.execute(
                sql.SQL("TRUNCATE {}").format(
                    sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
                )
            )


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A schema name nobody uses, dropped afterwards (with what the test made in it)."""
    require()
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(name)


@contextmanager
def store(**options: object) -> Iterator[Any]:
    """A PostgresStore (engine role) in a fresh schema; closed and dropped afterwards."""
    from aion.store import PostgresStore

    with fresh_schema() as schema:
        s = PostgresStore(URL, schema=schema, **options)  # type: ignore[arg-type]
        try:
            yield s
        finally:
            s.close()


@contextmanager
def target(kind: str, tmp_path: Path) -> Iterator[Any]:
    """What a test parametrized over backends hands ``aion.Engine``: a data directory
    (``"lmdb"``), a ``MemoryStore`` (``"memory"``) or a PostgresStore in a fresh schema
    (``"postgres"``, closed and dropped afterwards)."""
    if kind == "postgres":
        with store() as s:
            yield s
    elif kind == "lmdb":
        yield tmp_path / "data"
    else:
        from aion.store import MemoryStore

        yield MemoryStore()
