"""The inbox service on its own (no engine): commands for a run whose start is still in the
inbox wait for that start instead of being dropped as "the workflow does not exist"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aion._codec import encode_payload
from aion._engine._inbox import Inbox
from aion._engine._messages import Message, Signal
from aion.store import Append, InboxCommand, MemoryStore, Write, begin_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Stop(Exception):
    pass


async def one_pass(inbox: Inbox) -> None:
    async def stop(_: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        await inbox.run(0.01, stop)


async def test_a_signal_queued_behind_its_runs_start_waits_for_the_start() -> None:
    store = MemoryStore()
    sent: list[tuple[tuple[str, str], Message]] = []
    ready = [False]  # the start cannot be taken yet (the id is being started in this process)

    async def start(command: InboxCommand) -> bool:
        if not ready[0]:
            return False
        started, record = begin_run(
            tenant=command.tenant,
            workflow_id=command.workflow_id,
            run_id="r1",
            workflow_type=command.name,
            input=command.payload,
            at=T0,
        )
        await store.commit(
            Write(
                appends=[Append(command.workflow_id, [started], 0, command.tenant)],
                workflows=[record],
                inbox_delete=[command.command_id],
            )
        )
        return True

    def send(key: tuple[str, str], message: Message) -> None:
        sent.append((key, message))

    inbox = Inbox(
        store=lambda: store,
        verify=lambda token, at: None,
        limit=1 << 20,
        send=send,
        resident=lambda key: False,
        start=start,
    )
    args = encode_payload([])
    await store.put_inbox(InboxCommand("start", "t", "w", T0, name="wf", payload=args))
    signal_id = await store.put_inbox(
        InboxCommand("signal", "t", "w", T0, name="go", payload=encode_payload(1))
    )
    await one_pass(inbox)
    assert sent == []  # neither applied nor dropped
    assert signal_id in await store.inbox_pending([signal_id])
    ready[0] = True
    await one_pass(inbox)
    assert [(key, type(m), getattr(m, "name", None)) for key, m in sent] == [
        (("t", "w"), Signal, "go")
    ]
    message: Any = sent[0][1]
    assert message.inbox_id == signal_id  # deleted by the write that applies it
