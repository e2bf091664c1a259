"""The PostgreSQL schema of a store: its migrations, their version table, and the meta rows.

Each migration is a list of statements applied in one transaction with its row in
``schema_version``, under a transaction-level advisory lock, so engines opening the same schema
at once migrate it once. An engine applies what is missing; a schema whose version is newer
than this aion knows is refused (an older aion must not write a newer layout); a client never
migrates.
"""

from __future__ import annotations

import zlib
from typing import Any

import psycopg
from psycopg import sql

from aion.errors import StoreError, StoreFormatError

from . import _rows
from ._postgres_kv import Statements

__all__ = [
    "DEFAULT_PARTITIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "check_or_migrate",
    "read_meta",
    "write_meta_once",
]


#: Partitions a schema is made with unless ``PostgresStore(partitions=...)`` says otherwise.
DEFAULT_PARTITIONS = 64


def _v1(schema: str, partitions: int) -> list[sql.Composed]:
    """The tables of the KV: one per store table, key and value as bytea."""
    return [
        sql.SQL("CREATE TABLE {} (k bytea PRIMARY KEY, v bytea NOT NULL)").format(
            sql.Identifier(schema, table)
        )
        for table in _rows.TABLES
    ]


def _v2(schema: str, partitions: int) -> list[sql.Composed]:
    """Ownership: the partitions runs hash to, each with its owner and fencing number, and the
    engines with their leases (docs/scale-out.md)."""
    return [
        sql.SQL(
            "CREATE TABLE {} (id integer PRIMARY KEY, owner text, fence bigint NOT NULL DEFAULT 0)"
        ).format(sql.Identifier(schema, "partitions")),
        sql.SQL("INSERT INTO {} (id) SELECT generate_series(0, {})").format(
            sql.Identifier(schema, "partitions"), sql.Literal(partitions - 1)
        ),
        sql.SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, lease_until timestamptz NOT NULL, "
            "writer_pid integer, writer_started timestamptz, "
            "started_at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema, "engines")),
    ]


#: Migration n (1-based) is ``MIGRATIONS[n - 1]``; append, never edit one that has shipped.
MIGRATIONS = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)


def check_or_migrate(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    create: bool,
    where: str,
    partitions: int = DEFAULT_PARTITIONS,
) -> int:
    """Bring ``schema`` to :data:`SCHEMA_VERSION` (``create``) or check that it is there.

    Returns the version found before migrating (0: a new store).

    Raises:
        StoreFormatError: the schema is newer than this aion, holds tables of another program
            under the store's names, or (``create=False``) holds no store yet.
        StoreError: the database refused the statements.
    """
    lock = zlib.crc32(f"aion-migrate:{schema}".encode())
    versions = sql.Identifier(schema, "schema_version")
    try:
        with conn.transaction():
            if create:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."schema_version"',)
            ).fetchone()
            found = 0
            if exists and exists[0]:
                row = conn.execute(
                    sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(versions)
                ).fetchone()
                found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise StoreFormatError(
                    f"{where} was written by a newer aion (schema version {found}); this "
                    f"version knows versions up to {SCHEMA_VERSION}. Upgrade aion."
                )
            if found == SCHEMA_VERSION:
                return found
            if not create:
                raise StoreFormatError(
                    f"{where} holds no aion store yet (schema version {found}); start an "
                    "engine on it first"
                )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(versions)
            )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1](schema, partitions):
                    conn.execute(statement)
                conn.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(versions), (version,)
                )
            return found
    except psycopg.errors.DuplicateTable as exc:
        raise StoreFormatError(
            f"{where} already holds tables named like the store's, not made by aion ({exc}); "
            "use another schema (PostgresStore(..., schema=...))"
        ) from exc
    except psycopg.Error as exc:
        raise StoreError(f"cannot prepare {where}: {exc}") from exc


def read_meta(conn: psycopg.Connection[Any], statements: Statements, key: bytes) -> bytes | None:
    with conn.transaction():
        row = conn.execute(statements.get["meta"], (key,)).fetchone()
    return None if row is None else bytes(row[0])


def write_meta_once(
    conn: psycopg.Connection[Any], statements: Statements, key: bytes, value: bytes
) -> bytes:
    """Store ``value`` under ``key`` in ``meta`` unless a value is there; the stored one."""
    with conn.transaction():
        conn.execute(statements.put_once["meta"], (key, value))
        row = conn.execute(statements.get["meta"], (key,)).fetchone()
    if row is None:  # pragma: no cover - the row was just written or found
        raise StoreError(f"the meta row {key!r} vanished")
    return bytes(row[0])
