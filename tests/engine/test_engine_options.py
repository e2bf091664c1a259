"""Engine options are checked before anything is opened, and a failed start gives back everything
it took (issue 12, item 10): a correct engine on the same directory then starts, and no file
descriptor or thread is left behind."""

from __future__ import annotations

import gc
import math
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion._engine._engine as engine_module
import aion._engine._timers as timers_module
import aion._gc
from aion._engine._engine import Engine as EngineImpl
from aion._engine._watchdog import Watchdog
from aion.store import LmdbStore


@aion.workflow
async def hello(ctx: aion.Context, name: str) -> str:
    await ctx.sleep(0.01)
    return f"hello {name}"


BAD: list[tuple[str, Any, str]] = [
    ("max_payload_bytes", 0, "from 1 to"),
    ("max_payload_bytes", -1, "from 1 to"),
    ("max_payload_bytes", 1.5, "integer"),
    ("max_payload_bytes", True, "integer"),
    ("max_payload_bytes", "1000", "integer"),
    ("max_payload_bytes", 2**40, "from 1 to"),
    ("max_resident_runs", 0, "from 1 to"),
    ("max_concurrent_steps", 0, "from 1 to"),
    ("step_threads", 0, "from 1 to"),
    ("step_threads", None, "integer"),
    ("activation_workers", 0, "from 1 to"),
    ("inbox_interval", 0, "> 0"),
    ("inbox_interval", -0.5, "> 0"),
    ("inbox_interval", math.nan, "> 0"),
    ("inbox_interval", math.inf, "> 0"),
    ("inbox_interval", "1", "> 0"),
    ("timer_horizon", -5, "> 0"),
    ("timer_horizon", 0.0, "> 0"),
    ("timer_horizon", 1e12, "<= 1e+09"),
    ("max_restarts", -1, "from 0 to"),
    ("max_restarts", 2.0, "integer"),
    ("restart_window", 0, "> 0"),
    ("restart_window", math.nan, "> 0"),
    ("service_restarts", -1, "from 0 to"),
    ("service_window", math.inf, "> 0"),
    ("code_version", 5, "or None"),
    ("code_version", b"v1", "or None"),
    ("code_version", "", "or None"),
    ("code_version", "v" * 257, "1 to 256 UTF-8 bytes"),
    ("code_version", "v\ud8001", "lone surrogate"),
    ("activation_limit", 0, "or None"),
    ("activation_limit", -1.0, "or None"),
    ("activation_limit", math.nan, "or None"),
    ("activation_limit", "10", "or None"),
    ("durable", "yes", "True or False"),
    ("tune_gc", 1, "True or False"),
    ("require_waitpoint_key", None, "True or False"),
]


@pytest.mark.parametrize(("option", "value", "allowed"), BAD)
def test_a_bad_option_is_refused_before_anything_is_opened(
    tmp_path: Path, option: str, value: Any, allowed: str
) -> None:
    directory = tmp_path / "data"
    with pytest.raises(aion.InvalidArgument) as raised:
        aion.Engine(directory, **{option: value})
    assert f"Engine({option}=...)" in str(raised.value)
    assert allowed in str(raised.value)
    assert not directory.exists()  # nothing was created, locked or opened


def test_good_options_are_accepted(tmp_path: Path) -> None:
    aion.Engine(
        tmp_path,
        max_payload_bytes=1,
        max_resident_runs=1,
        max_concurrent_steps=1,
        step_threads=1,
        activation_workers=1,
        inbox_interval=1,  # an int is a number of seconds too
        timer_horizon=0.5,
        max_restarts=0,
        restart_window=1e9,
        service_restarts=0,
        service_window=0.001,
        code_version="v2 ✓",
        activation_limit=None,
        durable=False,
        tune_gc=False,
    )
    aion.Engine(tmp_path, code_version=None, activation_limit=0.05)


# --- a failure at every stage of __aenter__ ------------------------------------------------------


class Injected(Exception):
    """The failure a test injects."""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _engine_threads() -> set[str]:
    return {
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("aion-watchdog", "aion-store-writer"))
    }


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected")


async def _fail_async(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected")


def _opening_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LmdbStore, "_check_format", _fail)  # after the lock and the map


def _loading_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "load_keys", _fail)


def _recovery_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "sweep", _fail_async)


def _watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Watchdog, "start", _fail)


def _timer_wheel_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timers_module, "TimerWheel", _fail)  # what timer_horizon=-5 did


def _inbox_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EngineImpl, "_run_inbox", _fail_async)  # the last service


def _tuning_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aion._gc, "acquire", _fail)  # the very last step


STAGES = [
    _opening_the_store,
    _loading_keys,
    _recovery_sweep,
    _watchdog,
    _timer_wheel_service,
    _inbox_service,
    _tuning_gc,
]


async def _run_one(directory: Path) -> None:
    async with aion.Engine(directory, workflows=[hello]) as engine:
        handle = await engine.start(hello, "again", workflow_id="probe")
        assert await handle.result(timeout=20) == "hello again"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.__name__.strip("_"))
async def test_a_failed_start_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: Any
) -> None:
    directory = tmp_path / "data"
    await _run_one(directory)  # the directory exists, with a run; lazily made things are made
    gc.collect()  # files other tests left to the collector are not counted (nor closed) here
    fds, threads = _fds(), _engine_threads()
    with monkeypatch.context() as patch:
        stage(patch)
        with pytest.raises((Injected, aion.AionError)) as raised:
            async with aion.Engine(directory, workflows=[hello]):
                pytest.fail("the engine started")
        if not isinstance(raised.value, Injected):  # a service's failure, reported as such
            assert "injected" in str(raised.value)
    assert _fds() == fds
    assert _engine_threads() == threads
    await _run_one(directory)  # not StoreLocked: the directory was released
    assert _fds() == fds


async def test_a_start_cancelled_midway_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "data"
    await _run_one(directory)
    fds, threads = _fds(), _engine_threads()
    reached = anyio.Event()

    async def stuck_sweep(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await anyio.sleep_forever()

    monkeypatch.setattr(engine_module, "sweep", stuck_sweep)
    async with anyio.create_task_group() as tg:

        async def start() -> None:
            async with aion.Engine(directory, workflows=[hello]):
                pytest.fail("the engine started")

        tg.start_soon(start)
        await reached.wait()
        tg.cancel_scope.cancel()
    monkeypatch.undo()
    assert _fds() == fds
    assert _engine_threads() == threads
    await _run_one(directory)
