"""The data directory and LMDB's data file: checks before opening, and what a failed write means.

Before LMDB maps a data file, aion checks that it is there and as long as its last committed
page says (a truncated file would be a SIGBUS, a missing one a new empty store); after a failed
commit, it tells a full disk from other I/O errors.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import lmdb

from aion.errors import DataDirectoryError, StoreError, StoreFormatError, StoreFull

from ._cursors import CURSOR_KEY_FILE

__all__ = ["DATA_FILE", "_check_data_file", "_make_directory", "_store_error"]


#: An I/O error on a disk with less space left than this is taken for a full disk: LMDB reports
#: a write the full disk cut short as EIO ("mdb_txn_commit: Input/output error"), not ENOSPC.
_NEARLY_FULL_BYTES = 4 * 1024 * 1024


def _store_error(path: Path, exc: lmdb.Error) -> StoreError:
    text = str(exc)
    code = getattr(exc, "errno", None)
    full = "No space left" in text or code == errno.ENOSPC
    if not full and (code == errno.EIO or "Input/output error" in text):
        try:
            stat = os.statvfs(path)
            full = stat.f_bavail * stat.f_frsize < _NEARLY_FULL_BYTES
        except OSError:
            pass
    if full:
        return StoreFull(
            f"the disk holding {path} is full; nothing from this write was recorded. Free "
            "space, then retry: everything recorded before is intact."
        )
    return StoreError(f"write to the store in {path} failed: {text}")


def _make_directory(path: Path, *, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise DataDirectoryError(f"{path} exists and is not a directory; choose another path")
    if not path.exists():
        if not create:
            raise DataDirectoryError(f"{path} does not exist; start an engine on it first")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot create the data directory {path}: {exc.strerror}. Choose a path this "
                "user can write, or create it with the right permissions."
            ) from exc
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirectoryError(
            f"the data directory {path} is not readable and writable by this user; fix its "
            "permissions or choose another path"
        )


#: LMDB's data file inside the data directory.
DATA_FILE = "data.mdb"
#: Files that exist only beside a store that was opened: with one of them present, a missing or
#: empty data file is a lost store, not a new one. LMDB makes ``lock.mdb`` whenever it opens a
#: store (any aion version); this store makes the cursor key on open. Not among them:
#: ``engine.lock``, taken before LMDB creates anything, and ``waitpoint-keys.json``, which an
#: operator may put into a new directory before its first start (``require_waitpoint_key``).
_STORE_EVIDENCE = ("lock.mdb", CURSOR_KEY_FILE)

# LMDB 0.9's meta page (MDB_meta after the 16-byte page header, on 64-bit builds): mm_magic,
# mm_version, mm_address, mm_mapsize, two MDB_db records (md_pad, md_flags, md_depth,
# md_branch_pages, md_leaf_pages, md_overflow_pages, md_entries, md_root; the first one's md_pad
# holds the page size), mm_last_pg, mm_txnid. LMDB writes it in the machine's byte order.
_META = struct.Struct("=IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_PAGE_HEADER = 16
_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1


def _check_data_file(directory: Path) -> None:
    """Refuse a store whose data file is missing, empty or shorter than its pages, before LMDB
    maps it: LMDB would create a new, empty store in place of a lost one, and touching a page
    beyond the end of a truncated file kills the process with SIGBUS.

    Raises:
        StoreFormatError: the data file is missing or empty beside the files of an existing
            store, or holds fewer bytes than its last committed page needs.
    """
    path = directory / DATA_FILE
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        size = None
    except OSError as exc:
        raise DataDirectoryError(f"cannot read {path}: {exc.strerror}") from exc
    if not size:
        evidence = [name for name in _STORE_EVIDENCE if (directory / name).exists()]
        if evidence:
            names = ", ".join(evidence)
            raise StoreFormatError(
                f"damaged or missing store: restore from backup. {path} is "
                f"{'missing' if size is None else 'empty'}, but the data directory holds the "
                f"files of a store ({names}): its data is lost. Restore the directory from a "
                "backup. If it never held data (the very first start was interrupted), remove "
                f"{names} from {directory} to start an empty store."
            )
        return  # a new store
    if struct.calcsize("P") != 8:
        return  # a 32-bit build: not the layout read below (LMDB checks what it can)
    damage = _damage(path, size)
    if damage is not None:
        raise StoreFormatError(
            f"damaged or missing store: restore from backup. {path} {damage}. Restore the "
            "data directory from a backup; aion does not open the file, as reading the pages "
            "it lacks would crash the process."
        )


def _damage(path: Path, size: int) -> str | None:
    """What is wrong with the data file of ``size`` bytes according to LMDB's meta pages, or
    None: intact as far as they tell, or not an LMDB 0.9 file at all (LMDB refuses it on
    open)."""
    need = _PAGE_HEADER + _META.size
    try:
        with open(path, "rb") as file:
            head = file.read(need)
            if len(head) < need:
                return f"holds only {size} bytes, less than one LMDB meta page: it was cut short"
            first = _META.unpack_from(head, _PAGE_HEADER)
            magic, version, psize = first[0], first[1], first[4]
            if magic != _MDB_MAGIC or version != _MDB_DATA_VERSION or psize < need:
                return None
            file.seek(psize)
            page = file.read(need)
    except OSError as exc:
        raise DataDirectoryError(f"cannot read {path}: {exc.strerror}") from exc
    if len(page) < need:
        return f"holds only {size} bytes, less than LMDB's two meta pages: it was cut short"
    second = _META.unpack_from(page, _PAGE_HEADER)
    if second[0] != _MDB_MAGIC:
        return "has an unreadable second meta page (LMDB's record of the last commits)"
    newest = max(first, second, key=lambda meta: meta[-1])  # LMDB uses the newest commit's
    end = (newest[-2] + 1) * psize
    if size < end:
        return (
            f"holds {size} bytes, but its last committed page ends at byte {end}: the file "
            "was cut short (a failed copy, a full disk, a truncation)"
        )
    return None
