"""Workflow arguments are checked against the parameter annotations before anything is recorded.

``engine.start``, ``ctx.child`` and ``ctx.continue_as_new`` convert each argument to its
annotation with msgspec's strict rules: a wrong type raises ``aion.PayloadError`` at the call
and records nothing (the workflow id stays free); a value that is accepted reaches the run
unchanged, as the annotated type. Unannotated and ``Any`` parameters take anything encodable.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aion
import aion.errors
from aion import events as ev
from aion._codec import encode_payload
from aion._replay import Driver, definition_of
from aion.store import MemoryStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: What each run received, by workflow id (the workflows below write it; tests read it).
RECEIVED: dict[str, tuple[Any, ...]] = {}


class Point(msgspec.Struct):
    x: int
    y: int = 0


@dataclasses.dataclass
class Customer:
    name: str
    tags: list[str]


class Color(enum.Enum):
    RED = "red"


@aion.workflow
async def charge(ctx: aion.Context, order_id: str, amount: int) -> int:
    RECEIVED[ctx.info.workflow_id] = (order_id, amount)
    return amount


@aion.workflow
async def rich(
    ctx: aion.Context,
    point: Point,
    customer: Customer,
    at: datetime,
    counts: list[int],
    price: float,
    note: str | None = None,
) -> None:
    RECEIVED[ctx.info.workflow_id] = (point, customer, at, counts, price, note)


@aion.workflow
async def untyped(ctx, first, second: Any = None):  # type: ignore[no-untyped-def]
    RECEIVED[ctx.info.workflow_id] = (first, second)


@aion.workflow
async def takes_int(ctx: aion.Context, value: int) -> None:
    RECEIVED[ctx.info.workflow_id] = (value,)


@aion.workflow
async def takes_str(ctx: aion.Context, value: str) -> None:
    RECEIVED[ctx.info.workflow_id] = (value,)


@aion.workflow
async def takes_ints(ctx: aion.Context, value: list[int]) -> None:
    RECEIVED[ctx.info.workflow_id] = (value,)


@aion.workflow
async def wrong_child(ctx: aion.Context) -> str:
    try:
        await ctx.child(charge, "o-1", "12.50")
    except aion.PayloadError as exc:
        return str(exc)
    return "started"


@aion.workflow
async def fixing_child(ctx: aion.Context) -> int:
    try:
        future = ctx.child(charge, "o-1", "12.50")
    except aion.PayloadError:
        RECEIVED[ctx.info.workflow_id] = ("refused",)
        future = ctx.child(charge, "o-1", 1250)
    result: int = await future
    return result


@aion.workflow
async def right_child(ctx: aion.Context) -> int:
    result: int = await ctx.child(charge, "o-1", 1250)
    return result


@aion.workflow
async def countdown(ctx: aion.Context, n: int) -> str:
    if n == 0:
        return "done"
    if n == 2:
        try:
            ctx.continue_as_new(str(n - 1))
        except aion.PayloadError as exc:
            RECEIVED[ctx.info.workflow_id] = (str(exc),)
    ctx.continue_as_new(n - 1)


ALL = [
    charge, rich, untyped, takes_int, takes_str, takes_ints, wrong_child, fixing_child,
    right_child, countdown,
]  # fmt: skip


@pytest.fixture
async def engine() -> Any:
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=ManualClock(T0)) as e:
        yield e


async def assert_not_recorded(engine: aion.Engine, workflow_id: str) -> None:
    with pytest.raises(aion.WorkflowNotFound):
        await engine.describe(workflow_id)
    assert workflow_id not in [d.workflow_id for d in (await engine.list()).items]


async def test_a_wrong_type_is_refused_at_start_and_records_nothing(engine: aion.Engine) -> None:
    with pytest.raises(aion.PayloadError) as info:
        await engine.start(charge, "o-1", "12.50", workflow_id="order-1")
    message = str(info.value)
    # Names the workflow, the parameter, the expected and the given type.
    assert "'charge'" in message and "'amount'" in message and "argument 2" in message
    assert "must be int" in message and "str" in message and "'12.50'" in message
    await assert_not_recorded(engine, "order-1")
    # The id is still free: the right call starts the run.
    handle = await engine.start(charge, "o-1", 1250, workflow_id="order-1")
    assert await handle.result(timeout=5) == 1250
    assert RECEIVED["order-1"] == ("o-1", 1250)


@pytest.mark.parametrize(
    "amount",
    ["12", 12.0, 12.5, True, None, [12], {"amount": 12}, Decimal(12), b"12"],
    ids=repr,
)
async def test_no_lossy_or_parsing_conversion(engine: aion.Engine, amount: Any) -> None:
    with pytest.raises(aion.PayloadError, match="argument 2 \\('amount'\\) of workflow 'charge'"):
        await engine.start(charge, "o-1", amount, workflow_id="order-2")
    await assert_not_recorded(engine, "order-2")


async def test_an_existing_id_with_wrong_arguments_is_still_refused(engine: aion.Engine) -> None:
    await (await engine.start(charge, "o-1", 5, workflow_id="order-3")).result(timeout=5)
    with pytest.raises(aion.PayloadError):
        await engine.start(charge, "o-1", "5", workflow_id="order-3")


async def test_right_types_reach_the_run_as_annotated(engine: aion.Engine) -> None:
    at = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    handle = await engine.start(
        rich, Point(1, 2), Customer("ada", ["vip"]), at, [1, 2, 3], 2.5, "hi", workflow_id="r1"
    )
    await handle.result(timeout=5)
    assert RECEIVED["r1"] == (Point(1, 2), Customer("ada", ["vip"]), at, [1, 2, 3], 2.5, "hi")

    # Lossless conversions msgspec's strict mode makes: a dict to a Struct or dataclass, a tuple
    # to a list, an int to a float, an ISO string to a datetime; an optional left out or None.
    handle = await engine.start(
        rich, {"x": 3}, {"name": "bob", "tags": []}, at.isoformat(), (4, 5), 7, workflow_id="r2"
    )
    await handle.result(timeout=5)
    point, customer, when, counts, price, note = RECEIVED["r2"]
    assert point == Point(3) and customer == Customer("bob", [])
    assert when == at and counts == [4, 5] and note is None
    assert price == 7.0 and type(price) is float
    handle = await engine.start(rich, Point(0), Customer("c", []), at, [], 0.5, None)
    await handle.result(timeout=5)


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ((Point("1"), Customer("a", []), T0, [], 1.0), "argument 1 ('point')"),  # type: ignore[arg-type]
        ((Point(1), Customer("a", [1]), T0, [], 1.0), "argument 2 ('customer')"),  # type: ignore[list-item]
        ((Point(1), Customer("a", []), "noon", [], 1.0), "argument 3 ('at')"),
        ((Point(1), Customer("a", []), T0, [1, "2"], 1.0), "argument 4 ('counts')"),
        ((Point(1), Customer("a", []), T0, [], "1.0"), "argument 5 ('price')"),
        ((Point(1), Customer("a", []), T0, [], 1.0, 5), "argument 6 ('note')"),
        (({"y": 1}, Customer("a", []), T0, [], 1.0), "argument 1 ('point')"),
    ],
)
async def test_nested_and_composite_types_are_checked(
    engine: aion.Engine, args: tuple[Any, ...], where: str
) -> None:
    # A Struct or dataclass is not validated when it is built: its fields are checked too.
    with pytest.raises(aion.PayloadError, match=re.escape(f"{where} of workflow 'rich'")):
        await engine.start(rich, *args, workflow_id="r3")
    await assert_not_recorded(engine, "r3")


async def test_untyped_and_any_parameters_take_anything_encodable(engine: aion.Engine) -> None:
    await (await engine.start(untyped, "12.50", {"a": [1]}, workflow_id="u1")).result(timeout=5)
    assert RECEIVED["u1"] == ("12.50", {"a": [1]})
    with pytest.raises(aion.PayloadError, match="cannot be encoded"):
        await engine.start(untyped, object(), workflow_id="u2")
    await assert_not_recorded(engine, "u2")


async def test_argument_counts_are_positional(engine: aion.Engine) -> None:
    for args in [(), ("o-1",), ("o-1", 1, 2)]:
        with pytest.raises(aion.errors.InvalidArgument, match="takes 2 to 2 argument"):
            await engine.start(charge, *args, workflow_id="n1")
    with pytest.raises(aion.errors.InvalidArgument, match="takes 5 to 6 argument"):
        await engine.start(rich, Point(1), workflow_id="n1")
    with pytest.raises(aion.errors.InvalidArgument, match="takes 1 to 2 argument"):
        await engine.start(untyped, workflow_id="n1")
    await assert_not_recorded(engine, "n1")


async def test_a_child_with_a_wrong_type_fails_at_the_call_in_the_parent(
    engine: aion.Engine,
) -> None:
    message = await (await engine.start(wrong_child, workflow_id="p1")).result(timeout=5)
    assert "argument 2 ('amount') of workflow 'charge' must be int" in message
    history = await engine.history("p1")
    assert "child.started" not in [h.type for h in history]
    assert await (await engine.start(right_child, workflow_id="p2")).result(timeout=5) == 1250


async def test_continue_as_new_with_a_wrong_type_fails_at_the_call(engine: aion.Engine) -> None:
    assert await (await engine.start(countdown, 3, workflow_id="cd")).result(timeout=5) == "done"
    (message,) = RECEIVED["cd"]
    assert "argument 1 ('n') of workflow 'countdown' must be int, not str" in message


def started(workflow: Any, *args: Any, workflow_id: str = "p") -> ev.WorkflowStarted:
    """A recorded start whose input is ``args`` as-is (as versions before the check wrote it)."""
    name = definition_of(workflow).name
    return ev.WorkflowStarted(
        seq=1,
        at=T0,
        workflow_id=workflow_id,
        run_id="r",
        workflow_type=name,
        input=encode_payload(list(args)),
        tenant="default",
    )


def child_started(*args: Any) -> ev.ChildStarted:
    return ev.ChildStarted(
        seq=2,
        at=T0,
        child_seq=1,
        child_workflow_id="p/child-1",
        child_run_id="cr",
        workflow_type="charge",
        input=encode_payload(list(args)),
    )


def test_replay_keeps_histories_recorded_before_arguments_were_checked() -> None:
    """Inputs recorded by earlier versions (a string for an int) still replay: the recorded
    workflow input decodes as it did, and a recorded child start is not refused again."""
    run = Driver(definition_of(takes_int))
    run.replay([started(takes_int, "12", workflow_id="old")])
    assert RECEIVED["old"] == (12,)

    parent = Driver(definition_of(wrong_child))
    parent.replay([started(wrong_child), child_started("o-1", "12.50")])
    assert parent.outcome is None and parent.pending_children() == [(1, "p/child-1")]


def test_replay_refuses_again_what_the_run_refused() -> None:
    """A run that caught the PayloadError and started the child with other arguments takes
    the same path on replay: the refused call is refused again."""
    RECEIVED.pop("p", None)
    parent = Driver(definition_of(fixing_child))
    parent.replay([started(fixing_child), child_started("o-1", 1250)])
    assert RECEIVED.pop("p") == ("refused",)
    assert parent.outcome is None and parent.pending_children() == [(1, "p/child-1")]


def test_untyped_workflows_skip_conversion() -> None:
    assert definition_of(untyped).typed == ()
    assert definition_of(charge).typed == ((0, str), (1, int))


# --- any value, for an int, a str and a list[int] parameter ---------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=2), st.floats()), max_size=3),
    st.tuples(st.integers(), st.integers()),
    st.frozensets(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.datetimes(timezones=st.just(UTC)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
    st.uuids(),
    st.decimals(allow_nan=False, places=2),
    st.sampled_from(Color),
    st.builds(Point, st.integers(-5, 5)),
)
EXPECTED: dict[Any, Any] = {takes_int: int, takes_str: str, takes_ints: list}


@given(cases=st.lists(st.tuples(st.sampled_from(list(EXPECTED)), values), min_size=1, max_size=6))
def test_any_value_is_refused_at_start_or_received_equal(cases: list[tuple[Any, Any]]) -> None:
    async def check() -> None:
        async with aion.Engine(MemoryStore(), workflows=ALL, clock=ManualClock(T0)) as engine:
            for i, (workflow, value) in enumerate(cases):
                workflow_id = f"h-{uuid.uuid4()}-{i}"
                try:
                    handle = await engine.start(workflow, value, workflow_id=workflow_id)
                except aion.PayloadError:
                    await assert_not_recorded(engine, workflow_id)
                    continue
                await handle.result(timeout=5)
                (received,) = RECEIVED.pop(workflow_id)
                expected_type = EXPECTED[workflow]
                assert type(received) is expected_type, (value, received)
                if expected_type is list:
                    assert all(type(x) is int for x in received)
                    assert received == list(value)
                else:
                    assert received == value

    anyio.run(check)
