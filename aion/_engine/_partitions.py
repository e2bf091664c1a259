"""Driving a share of the runs of a store that several engines share (PostgreSQL partitions).

A store opened with ``ownership="partitions"`` hashes every workflow to one of a fixed number
of partitions (a parent and its default-named children to the same one) and lets each engine
claim a fair share of them with a lease and a fencing number (``aion.store._postgres_owner``).
This service is the engine's side of it:

- every ``lease_ttl / 3`` seconds (at most a second apart) it renews the lease and balances
  (claims free partitions and those of engines whose lease ran out, up to a fair share;
  releases any excess), on a thread and a connection of its own, so renewal never waits
  behind the engine's writes;
- a partition gained is **taken over**: the recovery sweep runs scoped to it (stranded
  continue-as-new, never-started children, stale timer rows), its runs with work in flight
  or BLOCKED are woken, the timer wheel reloads (so the partition's timers, overdue ones
  first, fire here) and the inbox is read (commands waiting for it are applied);
- a partition lost (taken over, released, or found lost by a write's fence check) is let go:
  its resident runs leave memory without writing anything; a run busy at that moment fails
  its next write with ``PartitionLost`` and leaves then.

Everything else asks :meth:`owns`: the inbox and the timer wheel skip rows of other
partitions, and the engine's methods queue a command in the inbox for a run that another
engine drives (its owner is notified at once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aion._supervision import ChildContext
from aion.store._keys import workflow_key
from aion.store._postgres_owner import partition_of_key

__all__ = ["Partitions"]

log = logging.getLogger("aion.engine")

#: The longest time between two renewals (balances): an engine whose lease ran out is noticed
#: within it, so its partitions are taken over within ``lease_ttl`` + this of its last renewal.
BALANCE_INTERVAL = 1.0


class Partitions:
    """The partitions this engine drives (see the module docstring).

    Args:
        store: a ``PostgresStore`` opened with ``ownership="partitions"``.
        gained: takes a set of partitions over (recovery sweep, wake runs, reload timers).
        lost: lets a set of partitions go (drop their resident runs).
    """

    def __init__(
        self,
        store: Any,
        *,
        gained: Callable[[set[int]], Awaitable[None]],
        lost: Callable[[set[int]], None],
    ) -> None:
        self._store = store
        self.count: int = store.partition_count
        self.interval = min(store.lease_ttl / 3, BALANCE_INTERVAL)
        self.owned: frozenset[int] = frozenset()
        self.fences: dict[int, int] = {}
        self._gained = gained
        self._lost = lost
        # A write's fence check (on the store's writer thread) may find a partition lost
        # between two rounds: the store tells us, and the next round lets it go.
        store.on_partitions = self._noticed

    def owns(self, tenant: str, workflow_id: str) -> bool:
        """Whether this engine drives the workflow now (as far as it knows)."""
        return self.partition_of(tenant, workflow_id) in self.owned

    def partition_of(self, tenant: str, workflow_id: str) -> int:
        return partition_of_key(workflow_key(tenant, workflow_id), self.count)

    def _noticed(self, gained: set[int], lost: set[int]) -> None:
        if lost:  # (a thread other than the loop's: a new frozenset replaces the old)
            self.owned = self.owned - lost

    async def balance(self) -> None:
        """Renew the lease and balance once."""
        await anyio.to_thread.run_sync(self._store.balance)
        self.fences = self._store.owned_partitions()
        self.owned = frozenset(self.fences)

    async def keep_lease(self) -> None:
        """Renew the lease every ``interval`` seconds until cancelled, whatever else is under
        way (a long recovery sweep at start-up or at a takeover)."""
        while True:
            await anyio.sleep(self.interval)
            try:
                await anyio.to_thread.run_sync(self._store.renew_lease)
            except Exception as exc:  # StoreError: the database is unreachable
                log.warning("could not renew the lease: %s", exc)

    async def run(self, ctx: ChildContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.keep_lease)
            await self._balance_loop(ctx)

    async def _balance_loop(self, ctx: ChildContext) -> None:
        """The supervised service: balance every ``interval`` seconds; take over what is
        gained, let go of what is lost. A failed balance (the database unreachable) is
        logged and retried at the next round: the lease runs out meanwhile, and the fence
        checks refuse this engine's writes until it has its partitions again. A partition
        lost and claimed again in between (a new fence) is let go and taken over again."""
        ctx.started()
        known = dict(self.fences)
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.balance()
            except Exception as exc:  # StoreError: the database is unreachable
                log.warning("could not renew the lease or balance partitions: %s", exc)
                continue
            now = dict(self.fences)
            lost = {p for p, fence in known.items() if now.get(p) != fence}
            gained = {p for p, fence in now.items() if known.get(p) != fence}
            if lost:
                log.info("partitions let go (taken over or released): %s", sorted(lost))
                self._lost(lost)
            if gained:
                log.info("partitions taken over: %s", sorted(gained))
                try:
                    await self._gained(gained)
                except Exception as exc:  # swept again at the next round
                    log.warning("taking over partitions %s failed: %s", sorted(gained), exc)
                    now = {p: f for p, f in now.items() if p not in gained}
            known = now
