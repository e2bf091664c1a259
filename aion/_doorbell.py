"""The inbox doorbell: another process (or task) that left a command in the store's inbox rings
it, and the engine takes the command at once instead of at its next look.

The engine binds a Unix datagram socket, ``inbox.sock``, in its data directory
(:class:`Doorbell`); a client sends it one byte after its command is durably queued
(:func:`ring`). A ring is only a hint: the command is in the store before the ring is sent,
and an engine that misses a ring (none listening, a full socket buffer, a failed bind) still
finds the command at its next regular look (``Engine(inbox_interval=...)``) or at its start.
So ringing never raises and never blocks.

Within one process a client on the same store object as a running engine rings the engine's
bell directly, through an in-process registry keyed (weakly) by the store object: this also
works for stores without a data directory (``MemoryStore``).

A data directory whose socket path is too long for ``AF_UNIX`` (about 107 bytes on Linux) is
reached through ``/proc/self/fd/N/inbox.sock`` on Linux, where N is an open descriptor of the
directory; elsewhere such an engine works without a socket (it looks at the inbox every
``inbox_interval``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import weakref
from collections.abc import Iterator
from types import TracebackType

import anyio

__all__ = ["SOCKET_NAME", "Doorbell", "ring"]

log = logging.getLogger("aion.doorbell")

#: The name of the engine's doorbell socket in its data directory.
SOCKET_NAME = "inbox.sock"

#: Longest socket path used as it is (``sun_path`` holds 108 bytes on Linux, 104 on macOS,
#: with the terminating NUL); longer ones go through ``/proc/self/fd``.
_MAX_ADDRESS_BYTES = 100

_RING = b"\x01"

#: Bells of engines running in this process, by the store object they run on.
_LOCAL: weakref.WeakKeyDictionary[object, list[Doorbell]] = weakref.WeakKeyDictionary()
_LOCAL_LOCK = threading.Lock()

_sender: socket.socket | None = None
_SENDER_LOCK = threading.Lock()


class Doorbell:
    """The engine's side: a bell that :func:`ring` (or :meth:`ring`) rings.

    Use it as ``async with Doorbell(directory, store) as bell:`` and wait for rings with
    :meth:`wait` (one waiting task at a time). Leaving ``async with`` removes the socket file
    it made (only if it is still its own).

    Args:
        directory: the data directory to bind ``inbox.sock`` in, or None (no socket: only rings
            from this process reach the bell).
        store: the store object the engine runs on: a client on the same object in this
            process rings this bell directly.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, store: object) -> None:
        self._directory = None if directory is None else os.fspath(directory)
        self._store = store
        self._rx: socket.socket | None = None
        self._tx: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file made
        self.path: str | None = None
        """The socket file this bell listens on, or None (no directory, or binding failed)."""

    @property
    def listening(self) -> bool:
        """Whether other processes can ring this bell (its socket is bound)."""
        return self.path is not None

    async def __aenter__(self) -> Doorbell:
        self._open()
        with _LOCAL_LOCK:
            try:
                _LOCAL.setdefault(self._store, []).append(self)
            except TypeError:  # a store object that cannot be weakly referenced: no shortcut
                log.debug("store %r cannot be registered for in-process rings", self._store)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _LOCAL_LOCK:
            try:
                bells = _LOCAL.get(self._store)
            except TypeError:
                bells = None
            if bells is not None and self in bells:
                bells.remove(self)
                if not bells:
                    del _LOCAL[self._store]
        self._close()

    def _open(self) -> None:
        if self._directory is not None:
            try:
                self._bind(self._directory)
            except OSError as exc:
                log.debug(
                    "no inbox doorbell socket in %s (%s): the engine looks at the inbox at its "
                    "regular interval",
                    self._directory,
                    exc,
                )
                self._close()
        if self._rx is None:
            self._rx, self._tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._rx.setblocking(False)
            self._tx.setblocking(False)

    def _bind(self, directory: str) -> None:
        path = os.path.join(os.path.abspath(directory), SOCKET_NAME)
        with _address(directory) as address:
            try:
                mode = os.lstat(address).st_mode
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(mode):
                    raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
                os.unlink(address)  # a stale one: only one engine runs on a data directory
            rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._rx = rx
            rx.setblocking(False)
            rx.bind(address)
            made = os.lstat(address)
            self._bound = (made.st_dev, made.st_ino)
            # Connected to the bound socket itself (not to its name): in-process rings reach
            # this socket even if its file is replaced meanwhile.
            tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._tx = tx
            tx.setblocking(False)
            tx.connect(address)
        self.path = path

    def _close(self) -> None:
        rx, tx, self._rx, self._tx = self._rx, self._tx, None, None
        if rx is not None:
            anyio.notify_closing(rx)  # a task waiting on it gets ClosedResourceError
            rx.close()
        if tx is not None:
            tx.close()
        bound, self._bound = self._bound, None
        if bound is not None and self._directory is not None:
            with contextlib.suppress(OSError), _address(self._directory) as address:
                now = os.lstat(address)
                if (now.st_dev, now.st_ino) == bound:  # still ours, not a later engine's
                    os.unlink(address)
        self.path = None

    def ring(self) -> None:
        """Ring this bell (from any thread). Never raises, never blocks."""
        tx = self._tx
        if tx is None:
            return
        with contextlib.suppress(OSError):  # BlockingIOError: it is ringing already
            tx.send(_RING)

    async def wait(self, timeout: float) -> bool:
        """Wait until the bell rings: True as soon as it rang (every ring since the last
        ``wait`` counts as one), False after ``timeout`` seconds without a ring."""
        rx = self._rx
        if rx is None:
            raise RuntimeError("the doorbell is not open: use it as `async with Doorbell(...)`")
        if _drain(rx):
            return True
        if timeout > 0:
            with anyio.move_on_after(timeout):
                await anyio.wait_readable(rx)
        return _drain(rx)


def ring(directory: str | os.PathLike[str] | None, store: object = None) -> bool:
    """Ring the doorbell of the engine on ``store`` (same process) or on ``directory``.

    Never raises and never blocks: with no engine listening the command waits in the inbox for
    the next engine to look (or to start). Returns whether a bell was there to ring: an engine
    in this process on ``store``, or a socket that took the ring (or was too busy to: it is
    ringing already). False means no engine listens (or it could not be reached).
    """
    try:
        bells = _local_bells(store)
        if bells:
            for bell in bells:
                bell.ring()
            return True
        if directory is None:
            return False
        sender = _get_sender()
        with _address(os.fspath(directory)) as address:
            try:
                sender.sendto(_RING, address)
            except BlockingIOError:  # its buffer is full: it has rings to take already
                return True
        return True
    except OSError as exc:  # no engine (ENOENT, ECONNREFUSED), a path it cannot reach ...
        log.debug("inbox doorbell of %s not rung: %s", directory, exc)
    except Exception as exc:  # a hint only: never worth failing the caller
        log.debug("inbox doorbell of %s not rung: %r", directory, exc)
    return False


def _local_bells(store: object) -> list[Doorbell]:
    if store is None:
        return []
    with _LOCAL_LOCK:
        try:
            return list(_LOCAL.get(store, ()))
        except TypeError:  # not weakly referenceable: never registered
            return []


def _get_sender() -> socket.socket:
    global _sender
    with _SENDER_LOCK:
        if _sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            _sender = sender
        return _sender


@contextlib.contextmanager
def _address(directory: str) -> Iterator[str]:
    """The address of the doorbell socket of ``directory``: its path, or when that is too long
    for ``AF_UNIX``, the same file through an open descriptor of the directory (Linux)."""
    path = os.path.join(os.path.abspath(directory), SOCKET_NAME)
    if len(os.fsencode(path)) <= _MAX_ADDRESS_BYTES:
        yield path
        return
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(errno.ENAMETOOLONG, f"{path} is too long for a Unix socket address")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def _drain(rx: socket.socket) -> bool:
    """Take every pending ring; whether there was any."""
    rang = False
    while True:
        try:
            rx.recv(64)
        except (BlockingIOError, InterruptedError):
            return rang
        except OSError:
            return rang
        rang = True
