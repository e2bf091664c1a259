"""Owner-only secret files in the data directory: read one, create or replace one atomically.

The waitpoint key ring (``aion._tokens``) and the store's cursor key (``aion.store._cursors``)
keep their secrets in such files. Reading refuses a file that others could read (its secret may
have leaked; the operator should know) and anything but a regular file. Writing goes through a
0600 temporary file that is fsynced and then linked or renamed into place, so the file never
exists half-written or with wider permissions, even for a moment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from aion.errors import DataDirectoryError

__all__ = ["read_private", "write_private"]


def read_private(path: Path, *, what: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the owner-only file at ``path``; ``None`` if there is none.

    Read one byte more than you accept to tell a file that is too long.

    Args:
        path: the file.
        what: names the file in errors, e.g. ``"waitpoint key file"``.
        limit: the most bytes to read.

    Raises:
        DataDirectoryError: the file cannot be opened or read, is not a regular file, or has
            permissions beyond 0600 (the message says ``chmod 600 <path>``); ``path``'s parent
            is not a directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise DataDirectoryError(
            f"{path.parent} exists and is not a directory; choose another path"
        ) from None
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot open the {what} {path}: {exc.strerror}. Check that this user owns it and "
            "can read it."
        ) from exc
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise DataDirectoryError(f"cannot read the {what} {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise DataDirectoryError(
                f"{path} is not a regular file; move it away so a new {what} can be made there"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~0o600:
            raise DataDirectoryError(
                f"the {what} {path} has permissions {mode:04o}, but it holds a secret and must "
                f"be accessible by its owner only. Fix it with: chmod 600 {path}"
            )
        return _read_up_to(fd, limit, path, what)
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int, path: Path, what: str) -> bytes:
    data = b""
    try:
        while len(data) < limit and (chunk := os.read(fd, min(limit - len(data), 1 << 16))):
            data += chunk
    except OSError as exc:
        raise DataDirectoryError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    return data


def write_private(path: Path, data: bytes, *, what: str, replace: bool) -> bool:
    """Write ``data`` to a 0600 temporary file, fsync it, then move it to ``path``.

    Args:
        path: the file; its directory must exist.
        data: the whole content.
        what: names the file in errors, e.g. ``"cursor key file"``.
        replace: replace an existing file (atomically: readers see the old or the new one); if
            false, an existing file is left alone (a hard link cannot clobber it).

    Returns:
        Whether ``data`` is now at ``path``: ``False`` only without ``replace``, when a file was
        there already (another process may have written it first: read that one).

    Raises:
        DataDirectoryError: the file cannot be written (the directory is not writable, the disk
            is full...); no temporary file is left behind.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits, too
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        elif not _link_unless_exists(temp, path):
            return False
        _fsync_directory(path.parent)
        return True
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot write the {what} {path}: {exc.strerror}. Check that the data directory is "
            "writable by this user and the disk is not full."
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _link_unless_exists(temp: Path, path: Path) -> bool:
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this filesystem: fall back to a rename, which cannot refuse to
        # clobber, after a last look.
        if path.exists():
            return False
        os.replace(temp, path)
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
