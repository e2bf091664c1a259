"""One engine per data directory: an advisory lock the kernel drops when its holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from aion.errors import DataDirectoryError, StoreLocked

__all__ = ["DirectoryLock"]

LOCK_NAME = "engine.lock"


class DirectoryLock:
    """An exclusive ``flock`` on ``<data dir>/engine.lock``, holding the owner's pid and host.

    ``flock`` locks belong to the open file, so the kernel releases them when the holder exits
    for any reason, SIGKILL included: a stale lock left by a killed engine is simply free, and
    the next engine takes it over. The file's contents only serve the error message.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLocked` naming the current holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot open the lock file {self.path}: {exc.strerror}. Check that the data "
                "directory is writable by this user."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLocked(
                f"data directory {self.path.parent} is in use by another engine ({holder}). "
                "Only one engine may run on a data directory: stop the other one, or open the "
                "store with role='client' to read and to leave commands."
            ) from None
        except OSError:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the descriptor drops the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (ValueError, KeyError, OSError, TypeError):
        return "holder unknown"
