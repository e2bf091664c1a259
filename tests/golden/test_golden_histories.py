"""Golden histories: recorded with older code, they must keep replaying (or keep failing).

``order_v1.json`` was recorded by ``order_v1`` (tests/golden/workflows.py) and is never
re-recorded: it stands for runs in flight when a deploy happens.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import aion
from aion.events import AnyEvent
from aion.testing import replay

from .workflows import order, order_broken, order_v1

HERE = Path(__file__).parent


def golden(name: str) -> list[AnyEvent]:
    return msgspec.json.decode((HERE / name).read_bytes(), type=list[AnyEvent])


def test_the_recording_code_replays_its_history() -> None:
    result = replay(order_v1, golden("order_v1.json"))
    assert result.status == "completed"
    assert result.result["charge"] == "ch-o-7-250" and result.result["carrier"] == "ups"
    # ctx.uuid4() is derived from the run's identity: replay gives the recorded value.
    assert result.result["token"] == "5af91dc1-87f7-415e-9553-5b3d77619b33"


def test_todays_code_replays_the_old_history() -> None:
    result = replay(order, golden("order_v1.json"))
    assert result.status == "completed" and result.result["charge"] == "ch-o-7-250"


def test_every_prefix_of_the_old_history_replays_through_todays_code() -> None:
    events = golden("order_v1.json")
    for end in range(1, len(events) + 1):
        replay(order, events[:end])


def test_an_unguarded_change_is_reported_as_nondeterministic() -> None:
    with pytest.raises(aion.NondeterminismError) as info:
        replay(order_broken, golden("order_v1.json"))
    message = str(info.value)
    assert "'run-under-test' (order) diverged at event 5" in message
    assert "history has step 'charge' (#2), the code now calls step 'charge_v2' (#2)" in message
