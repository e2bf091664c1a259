"""One engine process of the PostgreSQL chaos test (``test_postgres_chaos.py``).

``python _chaos_worker.py URL SCHEMA``: runs ``aion.Engine(URL)`` (partitions: it shares the
schema's runs with the other workers) with the chaos workflows, prints ``ready`` and runs until
it is killed. Steps record their effects in ``SCHEMA.chaos_effects`` (a table of the test's,
outside aion's), one row per execution. Every write batch records the fences it believes it
holds in ``SCHEMA.chaos_audit`` (``PostgresStore._audit_table``, a test-only switch).

``AION_CHAOS_NO_FENCING=1``: the negative control, with the fence check switched off.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta
from typing import Any

import anyio
import psycopg

import aion
from aion.store import PostgresStore

_local = threading.local()
SCHEMA = ""
DSN = ""


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True)
    return conn


def record(workflow_id: str, step: str, n: int) -> int:
    """A step with an effect outside aion: one row per execution (at least once)."""
    _conn().execute(
        f'INSERT INTO "{SCHEMA}".chaos_effects (workflow_id, step, pid) VALUES (%s, %s, %s)',
        (workflow_id, step, os.getpid()),
    )
    return value(n, step)


def value(n: int, step: str) -> int:
    return n * 31 + sum(step.encode())


def delay(n: int, generation: int) -> float:
    """The workflow's timer, in seconds: 0.5 to 4."""
    return 0.5 + ((n * 7 + generation * 3) % 8) / 2


@aion.workflow
async def chaos_child(ctx: aion.Context, n: int) -> int:
    return int(await ctx.step(record, ctx.info.workflow_id, "child", n))


@aion.workflow
async def chaos_main(ctx: aion.Context, n: int, generation: int = 0) -> dict[str, Any]:
    workflow_id = ctx.info.workflow_id
    a = await ctx.step(record, workflow_id, f"a{generation}", n)
    await ctx.sleep(timedelta(seconds=delay(n, generation)))
    if generation == 0 and n % 5 == 0:
        ctx.continue_as_new(n, 1)
    signal = await ctx.wait_signal("go")
    child = await ctx.child(chaos_child, n)
    b = await ctx.step(record, workflow_id, "b", n)
    return {"n": n, "generation": generation, "a": a, "signal": signal, "child": child, "b": b}


def expected(n: int) -> dict[str, Any]:
    generation = 1 if n % 5 == 0 else 0
    return {
        "n": n,
        "generation": generation,
        "a": value(n, f"a{generation}"),
        "signal": n * 3,
        "child": value(n, "child"),
        "b": value(n, "b"),
    }


async def main(url: str) -> None:
    async with aion.Engine(url, workflows=[chaos_main, chaos_child]) as engine:
        print("ready", flush=True)
        await engine.wait_stopped()


if __name__ == "__main__":
    URL, SCHEMA = sys.argv[1], sys.argv[2]
    DSN = URL.split("?", 1)[0]
    PostgresStore._audit_table = "chaos_audit"
    if os.environ.get("AION_CHAOS_NO_FENCING") == "1":
        PostgresStore._fencing = False
    anyio.run(main, URL)
