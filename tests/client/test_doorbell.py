"""The inbox doorbell (aion/_doorbell.py): a ring wakes the waiting engine at once; without a
listener a ring is a no-op; a stale socket is replaced; a long path still works (Linux) or
falls back to no socket; in-process rings reach the bell of the same store object."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

from aion._doorbell import SOCKET_NAME, Doorbell, ring
from aion.store import MemoryStore


class Store:
    """A stand-in store object: the registry only needs its identity."""


async def test_a_ring_wakes_the_waiter_at_once(tmp_path: Path) -> None:
    async with Doorbell(tmp_path, Store()) as bell:
        assert bell.listening and bell.path == str(tmp_path / SOCKET_NAME)
        assert (tmp_path / SOCKET_NAME).is_socket()
        assert await bell.wait(0) is False
        async with anyio.create_task_group() as tg:

            async def ring_soon() -> None:
                await anyio.sleep(0.01)
                assert ring(tmp_path) is True

            tg.start_soon(ring_soon)
            started = time.monotonic()
            assert await bell.wait(10) is True
            assert time.monotonic() - started < 2
    assert not (tmp_path / SOCKET_NAME).exists()  # removed on exit


async def test_rings_coalesce(tmp_path: Path) -> None:
    async with Doorbell(tmp_path, Store()) as bell:
        for _ in range(5):
            ring(tmp_path)
        assert await bell.wait(1) is True
        assert await bell.wait(0.01) is False  # the five rings counted once


async def test_a_ring_from_another_process(tmp_path: Path) -> None:
    async with Doorbell(tmp_path, Store()) as bell:
        code = f"from aion._doorbell import ring; assert ring({str(tmp_path)!r})"
        await anyio.run_process([sys.executable, "-c", code], check=True)
        assert await bell.wait(10) is True


async def test_without_a_listener_a_ring_is_a_no_op(tmp_path: Path) -> None:
    assert ring(tmp_path) is False  # no socket file
    assert ring(tmp_path / "missing") is False
    assert ring(None) is False
    assert ring(None, Store()) is False
    # A socket file nobody listens on (the engine died): refused, quietly.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(tmp_path / SOCKET_NAME))
    dead.close()
    assert ring(tmp_path) is False


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()  # a SIGKILLed engine leaves its socket file behind
    async with Doorbell(tmp_path, Store()) as bell:
        assert bell.listening
        assert ring(tmp_path) is True
        assert await bell.wait(5) is True
    assert not (tmp_path / SOCKET_NAME).exists()


async def test_a_file_in_the_way_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / SOCKET_NAME).write_text("mine")
    store = Store()
    async with Doorbell(tmp_path, store) as bell:
        assert not bell.listening  # works without a socket
        assert ring(tmp_path) is False
        assert ring(tmp_path, store) is True  # in-process rings still reach it
        assert await bell.wait(5) is True
    assert (tmp_path / SOCKET_NAME).read_text() == "mine"


async def test_exit_leaves_a_later_bells_socket(tmp_path: Path) -> None:
    first = Doorbell(tmp_path, Store())
    await first.__aenter__()
    async with Doorbell(tmp_path, Store()) as second:  # replaced the first one's file
        await first.__aexit__(None, None, None)
        assert (tmp_path / SOCKET_NAME).is_socket()  # the second's, kept
        assert ring(tmp_path) is True
        assert await second.wait(5) is True


async def test_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / SOCKET_NAME)) > 108
    async with Doorbell(deep, Store()) as bell:
        if sys.platform == "linux":  # through /proc/self/fd
            assert bell.listening and (deep / SOCKET_NAME).is_socket()
            assert ring(deep) is True
            assert await bell.wait(5) is True
        else:  # falls back: no socket, in-process rings only
            assert not bell.listening
    assert not (deep / SOCKET_NAME).exists()


async def test_in_process_rings_by_store_object() -> None:
    store = MemoryStore()
    async with Doorbell(None, store) as bell:
        assert not bell.listening
        assert ring(None, store) is True
        assert await bell.wait(5) is True
        assert ring(None, MemoryStore()) is False  # another store: another engine's
        assert await bell.wait(0) is False
    assert ring(None, store) is False  # gone with the bell


async def test_a_ring_from_another_thread() -> None:
    store = Store()
    async with Doorbell(None, store) as bell:
        await anyio.to_thread.run_sync(ring, None, store)
        assert await bell.wait(5) is True


async def test_a_directory_it_cannot_bind_in_falls_back(tmp_path: Path) -> None:
    store = Store()
    async with Doorbell(tmp_path / "missing", store) as bell:  # the bind fails: logged, no socket
        assert not bell.listening
        assert ring(tmp_path / "missing", store) is True  # in-process rings still reach it
        assert await bell.wait(5) is True


def test_wait_needs_an_open_bell() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        anyio.run(Doorbell(None, Store()).wait, 0)


def test_ring_never_raises_on_odd_input(tmp_path: Path) -> None:
    assert ring(tmp_path / "\udcff") is False
    assert ring(tmp_path, object()) is False  # hashable, weakly referenceable, not registered
    assert ring(tmp_path, {}) is False  # not hashable: never registered
