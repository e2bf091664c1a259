"""Owner-only secret files: reads refuse what others could read, writes never expose a secret."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from aion._secretfile import read_private, write_private
from aion.errors import DataDirectoryError

WHAT = "test secret file"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_private(tmp_path / "secret", what=WHAT, limit=10) is None


def test_a_missing_parent_directory_reads_as_none_a_file_in_its_place_is_refused(
    tmp_path: Path,
) -> None:
    assert read_private(tmp_path / "no" / "secret", what=WHAT, limit=10) is None
    (tmp_path / "data").write_text("")
    with pytest.raises(DataDirectoryError, match="exists and is not a directory"):
        read_private(tmp_path / "data" / "secret", what=WHAT, limit=10)


def test_create_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert write_private(tmp_path / "secret", b"first", what=WHAT, replace=False)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret") == 0o600
    assert not write_private(tmp_path / "secret", b"second", what=WHAT, replace=False)
    assert read_private(tmp_path / "secret", what=WHAT, limit=100) == b"first"
    assert names(tmp_path) == ["secret"]  # no temporary file left


def test_replace_swaps_the_content(tmp_path: Path) -> None:
    write_private(tmp_path / "secret", b"first", what=WHAT, replace=False)
    assert write_private(tmp_path / "secret", b"second", what=WHAT, replace=True)
    assert read_private(tmp_path / "secret", what=WHAT, limit=100) == b"second"
    assert mode_of(tmp_path / "secret") == 0o600
    assert names(tmp_path) == ["secret"]


def test_reads_stop_at_the_limit(tmp_path: Path) -> None:
    write_private(tmp_path / "secret", b"x" * 200_000, what=WHAT, replace=True)
    assert read_private(tmp_path / "secret", what=WHAT, limit=5) == b"xxxxx"
    assert len(read_private(tmp_path / "secret", what=WHAT, limit=150_001) or b"") == 150_001
    assert len(read_private(tmp_path / "secret", what=WHAT, limit=10**6) or b"") == 200_000


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700])
def test_a_file_others_could_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    write_private(path, b"s", what=WHAT, replace=True)
    path.chmod(mode)
    with pytest.raises(DataDirectoryError, match=f"{mode:04o}") as info:
        read_private(path, what=WHAT, limit=10)
    assert f"the {WHAT} {path}" in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_a_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir(mode=0o700)
    with pytest.raises(DataDirectoryError, match=f"not a regular file.*new {WHAT}"):
        read_private(tmp_path / "secret", what=WHAT, limit=10)


def test_without_hard_links_creation_falls_back_to_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert write_private(tmp_path / "secret", b"first", what=WHAT, replace=False)
    assert not write_private(tmp_path / "secret", b"second", what=WHAT, replace=False)
    assert read_private(tmp_path / "secret", what=WHAT, limit=100) == b"first"
    assert names(tmp_path) == ["secret"]


def test_a_failed_write_names_the_file_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DataDirectoryError, match="No space left") as info:
        write_private(tmp_path / "secret", b"s", what=WHAT, replace=True)
    assert f"cannot write the {WHAT} {tmp_path / 'secret'}" in str(info.value)
    assert names(tmp_path) == []
