"""Waitpoint rows never go back to pending and keep their last failed validation time, whatever
order stale and fresh copies of a row are written in (every backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from aion.store import EventStore, MemoryStore, WaitpointRow, WaitpointStatus, Write

T = datetime(2026, 5, 1, tzinfo=UTC)
PENDING = WaitpointRow("acme", "wf", "w1", "run", "callback", T)


def variant(status: WaitpointStatus, failed_minutes: int | None) -> WaitpointRow:
    failed = None if failed_minutes is None else T + timedelta(minutes=failed_minutes)
    done = T + timedelta(hours=1) if status is WaitpointStatus.COMPLETED else None
    return msgspec.structs.replace(
        PENDING, status=status, completed_at=done, last_failed_validation_at=failed
    )


async def test_a_stale_pending_copy_never_undoes_a_completion(store: EventStore) -> None:
    await store.commit(Write(waitpoints=[PENDING]))
    completed = variant(WaitpointStatus.COMPLETED, None)
    await store.commit(Write(waitpoints=[completed]))
    noted = variant(WaitpointStatus.PENDING, 5)  # read before the completion, written after
    await store.commit(Write(waitpoints=[noted]))
    row = await store.get_waitpoint("wf", "w1", tenant="acme")
    failed = noted.last_failed_validation_at
    assert row == msgspec.structs.replace(completed, last_failed_validation_at=failed)


async def test_rewriting_a_row_keeps_its_last_failed_validation(store: EventStore) -> None:
    await store.commit(Write(waitpoints=[variant(WaitpointStatus.PENDING, 7)]))
    await store.commit(Write(waitpoints=[variant(WaitpointStatus.EXPIRED, None)]))
    row = await store.get_waitpoint("wf", "w1", tenant="acme")
    assert row is not None and row.status is WaitpointStatus.EXPIRED
    assert row.last_failed_validation_at == T + timedelta(minutes=7)


writes = st.lists(
    st.tuples(st.sampled_from(list(WaitpointStatus)), st.none() | st.integers(0, 100)),
    min_size=1,
    max_size=8,
)


@given(sequence=writes)
async def test_any_order_of_writes(sequence: list[tuple[WaitpointStatus, int | None]]) -> None:
    store = MemoryStore()
    for status, failed in sequence:
        await store.commit(Write(waitpoints=[variant(status, failed)]))
    row = await store.get_waitpoint("wf", "w1", tenant="acme")
    assert row is not None
    final = [s for s, _ in sequence if s is not WaitpointStatus.PENDING]
    # The latest non-pending status wins; only a row never closed is pending.
    assert row.status is (final[-1] if final else WaitpointStatus.PENDING)
    failures = [f for _, f in sequence if f is not None]
    expected = T + timedelta(minutes=max(failures)) if failures else None
    assert row.last_failed_validation_at == expected
