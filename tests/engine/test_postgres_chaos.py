"""Chaos on a shared PostgreSQL schema: three engine processes drive 300 workflows (steps with
effects in a table of their own, timers, signals from a Client, children, continue-as-new)
while processes are SIGKILLed (and started again) and SIGSTOPped past their lease (and
continued) at random moments, 50+ times.

Afterwards: every workflow completed exactly once with the right result; every history is
contiguous; every step ran at least once; and for every partition no write committed with a
fence other than the partition's fence at its commit (checked by a deferred trigger on the
audit rows each batch writes: a stale owner's write would show up). The negative control runs
the same with the fence check switched off and must find stale writes.

``AION_CHAOS_SEED`` replays a schedule.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from tests import _postgres

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs aion[postgres]")

sys.path.insert(0, str(Path(__file__).parent))
import _chaos_worker as worker  # noqa: E402

WORKER = Path(__file__).with_name("_chaos_worker.py")
LEASE = 1.0
PROCESSES = 3


@dataclass
class Chaos:
    seed: int
    kills: int = 0
    stops: int = 0
    spawned: int = 0
    reruns: int = 0
    audit_rows: int = 0
    stale_writes: int = 0
    problems: list[str] = field(default_factory=list)


def _tables(schema: str) -> None:
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".chaos_effects (id bigserial PRIMARY KEY, '
            "workflow_id text NOT NULL, step text NOT NULL, pid integer NOT NULL)"
        )
        conn.execute(
            f'CREATE TABLE "{schema}".chaos_audit (id bigserial PRIMARY KEY, '
            "partition integer NOT NULL, fence bigint NOT NULL, engine text NOT NULL, "
            "fence_at_commit bigint, owner_at_commit text)"
        )
        # At commit (deferred), the partition's fence and owner as they are then: a batch that
        # committed after its partition was taken over shows a newer fence here.
        conn.execute(
            f'CREATE FUNCTION "{schema}".chaos_audit_commit() RETURNS trigger '
            "LANGUAGE plpgsql AS $$ BEGIN "
            f'UPDATE "{schema}".chaos_audit a SET fence_at_commit = p.fence, '
            f'owner_at_commit = p.owner FROM "{schema}".partitions p '
            "WHERE a.id = NEW.id AND p.id = NEW.partition; RETURN NULL; END $$"
        )
        conn.execute(
            f'CREATE CONSTRAINT TRIGGER chaos_audit_commit AFTER INSERT ON "{schema}".chaos_audit '
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
            f'EXECUTE FUNCTION "{schema}".chaos_audit_commit()'
        )


def _spawn(url: str, schema: str, fencing: bool, stderr: Any) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if not fencing:
        env["AION_CHAOS_NO_FENCING"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, schema],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else "(nothing within 60 s)"
    assert line == "ready\n", f"worker said {line!r}"
    return proc


def run_chaos(
    tmp_path: Path, *, workflows: int, events: int, fencing: bool = True, patience: float = 180
) -> Chaos:
    seed = int(os.environ.get("AION_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    chaos = Chaos(seed)
    with _postgres.fresh_schema() as schema:
        _tables(schema)
        url = f"{_postgres.URL}?schema={schema}&partitions=16&lease_ttl={LEASE}"
        with open(tmp_path / "workers.stderr", "a") as stderr:
            procs = [_spawn(url, schema, fencing, stderr) for _ in range(PROCESSES)]
            chaos.spawned = PROCESSES
            try:
                anyio.run(_drive, url, procs, rng, chaos, workflows, events, fencing, stderr)
                anyio.run(_finish, url, workflows, chaos, patience)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGCONT)
                        proc.kill()
                    proc.wait()
        _audit(schema, workflows, chaos)
    return chaos


async def _drive(
    url: str,
    procs: list[subprocess.Popen[str]],
    rng: random.Random,
    chaos: Chaos,
    workflows: int,
    events: int,
    fencing: bool,
    stderr: Any,
) -> None:
    """Start the workflows, then signal them a few at a time between chaos events."""
    schema = url.split("schema=", 1)[1].split("&", 1)[0]
    async with aion.Client(url) as client:
        for n in range(workflows):
            await client.start("chaos_main", n, workflow_id=f"chaos-{n}")
        unsignalled = list(range(workflows))
        rng.shuffle(unsignalled)
        per_event = -(-workflows // events)
        for _ in range(events):
            for n in unsignalled[:per_event]:
                await client.signal(f"chaos-{n}", "go", n * 3)
            del unsignalled[:per_event]
            index = rng.randrange(len(procs))
            proc = procs[index]
            if rng.random() < 0.5:
                proc.kill()  # SIGKILL
                await anyio.to_thread.run_sync(proc.wait)
                chaos.kills += 1
                await anyio.sleep(rng.uniform(0.0, 0.5))
                procs[index] = await anyio.to_thread.run_sync(
                    lambda: _spawn(url, schema, fencing, stderr)
                )
                chaos.spawned += 1
            else:
                os.kill(proc.pid, signal.SIGSTOP)  # past its lease: its partitions move
                chaos.stops += 1
                await anyio.sleep(LEASE + rng.uniform(0.3, 1.2))
                os.kill(proc.pid, signal.SIGCONT)
            await anyio.sleep(rng.uniform(0.0, 0.4))
        for n in unsignalled:
            await client.signal(f"chaos-{n}", "go", n * 3)


async def _finish(url: str, workflows: int, chaos: Chaos, patience: float) -> None:
    """Every workflow's result, history and effects."""
    async with aion.Client(url) as client:
        with anyio.move_on_after(patience) as waiting:
            for n in range(workflows):
                result = await client.handle(f"chaos-{n}").result()
                if result != worker.expected(n):
                    chaos.problems.append(f"chaos-{n}: result {result!r}")
        if waiting.cancelled_caught:
            stuck = [
                d.workflow_id
                for d in (await client.list(status=aion.Status.RUNNING, limit=20)).items
            ]
            chaos.problems.append(f"not finished after {patience} s: {stuck}")
            return
        for n in range(workflows):
            workflow_id = f"chaos-{n}"
            history = await client.history(workflow_id)
            seqs = [h.seq for h in history]
            if seqs != list(range(1, len(seqs) + 1)):
                chaos.problems.append(f"{workflow_id}: history not contiguous: {seqs}")
            completions = [h for h in history if h.type == "workflow.completed"]
            if len(completions) != 1:
                chaos.problems.append(f"{workflow_id}: {len(completions)} completions")
            # In the last run (a signal that came before a continue-as-new is carried over to
            # the successor: received once in each run).
            starts = [i for i, h in enumerate(history) if h.type == "workflow.started"]
            signals = [h for h in history[starts[-1] :] if h.type == "signal.received"]
            if len(signals) != 1:
                chaos.problems.append(f"{workflow_id}: {len(signals)} signals received")


def _audit(schema: str, workflows: int, chaos: Chaos) -> None:
    """Effects: every step at least once. Fences: none stale at commit."""
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        rows = conn.execute(f'SELECT workflow_id, step FROM "{schema}".chaos_effects').fetchall()
        ran = Counter((w, s) for w, s in rows)
        for n in range(workflows):
            generation = 1 if n % 5 == 0 else 0
            wanted = [(f"chaos-{n}", f"a{g}") for g in range(generation + 1)]
            wanted.append((f"chaos-{n}", "b"))
            child = f"chaos-{n}/child-1"
            if generation:
                child = next((w for w, s in ran if w.startswith(f"chaos-{n}/")), child)
            wanted.append((child, "child"))
            for key in wanted:
                if not ran[key]:
                    chaos.problems.append(f"step {key} never ran")
        chaos.reruns = sum(ran.values()) - len(ran)
        count, stale = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE fence_at_commit IS DISTINCT FROM fence "
            f'OR owner_at_commit IS DISTINCT FROM engine) FROM "{schema}".chaos_audit'
        ).fetchone()
        chaos.audit_rows, chaos.stale_writes = int(count), int(stale)


@pytest.mark.slow
def test_three_engines_under_kills_and_pauses(tmp_path: Path) -> None:
    chaos = run_chaos(tmp_path, workflows=300, events=55)
    print(f"chaos on PostgreSQL: {chaos}")
    assert chaos.kills + chaos.stops >= 50
    assert chaos.audit_rows > 0
    assert not chaos.problems, f"seed {chaos.seed}: {chaos.problems[:20]}"
    assert chaos.stale_writes == 0, f"seed {chaos.seed}: {chaos.stale_writes} stale writes"


@pytest.mark.slow
def test_without_fencing_the_same_chaos_finds_stale_writes(tmp_path: Path) -> None:
    """The negative control: the test above can fail. With the fence check off, a paused
    engine's writes land after its partitions were taken over."""
    chaos = run_chaos(tmp_path, workflows=300, events=55, fencing=False, patience=60)
    print(f"chaos on PostgreSQL without fencing: {chaos}")
    assert chaos.stale_writes > 0, f"seed {chaos.seed}: no stale write detected"
