"""A damaged or missing ``data.mdb`` is refused before it is mapped (issue 12, item 9).

A truncated data file used to kill every command with SIGBUS (LMDB maps the file, and reading a
page past its end is a bus error), and a deleted or emptied one was silently replaced by an empty
store beside the existing key files. Now both are refused with "damaged or missing store: restore
from backup", naming the file. Truncated stores are opened in child processes: should the check
ever fail, the child dies of the signal instead of the test run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aion
from aion.errors import StoreFormatError
from aion.store import LmdbStore, Write
from aion.store._cursors import CURSOR_KEY_FILE

from ._util import record

DAMAGED = "damaged or missing store: restore from backup"


@aion.workflow
async def noop(ctx: aion.Context) -> int:
    return 1


def make_store(data: Path, *, engine: bool = False) -> int:
    """A store with enough rows to span many pages; returns the size of its data file."""

    async def fill() -> None:
        if engine:  # an engine also leaves its waitpoint key ring
            async with aion.Engine(data, workflows=[noop]) as e:
                await e.start(noop, workflow_id="n")
                await e.wait_idle()
            return
        async with LmdbStore(data) as store:
            for batch in range(10):
                workflows = [record(f"w{batch}-{i}", created=i) for i in range(100)]
                await store.commit(Write(workflows=workflows))

    anyio.run(fill)
    return (data / "data.mdb").stat().st_size


def aion_cli(data: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aion.cli", *argv, "--data", str(data)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_refused(result: subprocess.CompletedProcess[str], data: Path) -> None:
    assert result.returncode == 1, (
        f"exit {result.returncode}"
        + (f" ({signal.Signals(-result.returncode).name})" if result.returncode < 0 else "")
        + f": {result.stderr}"
    )
    assert DAMAGED in result.stderr and str(data / "data.mdb") in result.stderr
    assert "Traceback" not in result.stderr


# --- truncated ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda size: size // 2, id="half"),
        pytest.param(lambda size: size - 4096, id="last page"),
        pytest.param(lambda size: 5000, id="after the second meta page"),
        pytest.param(lambda size: 4100, id="inside the second meta page"),
        pytest.param(lambda size: 100, id="inside the first meta page"),
    ],
)
def test_aion_list_refuses_a_truncated_store_instead_of_dying(tmp_path: Path, cut: object) -> None:
    data = tmp_path / "data"
    size = make_store(data)
    cut_size = cut(size)  # type: ignore[operator]
    os.truncate(data / "data.mdb", cut_size)
    assert_refused(aion_cli(data, "list"), data)
    assert (data / "data.mdb").stat().st_size == cut_size  # nothing was written


def test_recover_and_an_engine_refuse_a_truncated_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = make_store(data)
    os.truncate(data / "data.mdb", size // 2)
    assert_refused(aion_cli(data, "recover"), data)
    assert_refused(aion_cli(data, "recover", "--apply"), data)
    engine = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, anyio, aion\n"
            "async def main():\n"
            "    async with aion.Engine(sys.argv[1]):\n"
            "        pass\n"
            "try:\n"
            "    anyio.run(main)\n"
            "except aion.errors.StoreFormatError as exc:\n"
            "    print(exc, file=sys.stderr)\n"
            "    sys.exit(3)\n",
            str(data),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert engine.returncode == 3, engine.stderr
    assert DAMAGED in engine.stderr


# --- missing or empty -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_data_file_is_refused_not_replaced(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    make_store(data, engine=True)
    assert (data / "waitpoint-keys.json").exists()
    if damage == "deleted":
        (data / "data.mdb").unlink()
    else:
        os.truncate(data / "data.mdb", 0)
    before = sorted(p.name for p in data.iterdir())
    for argv in (["list"], ["approvals"], ["recover"], ["recover", "--apply"]):
        result = aion_cli(data, *argv)
        assert_refused(result, data)
        assert ("missing" if damage == "deleted" else "empty") in result.stderr
    with pytest.raises(StoreFormatError, match=DAMAGED):
        LmdbStore(data)
    with pytest.raises(StoreFormatError, match=DAMAGED):
        LmdbStore(data, role="client")

    async def start_engine() -> None:
        async with aion.Engine(data, workflows=[noop]):
            pass

    with pytest.raises(StoreFormatError, match=DAMAGED):
        anyio.run(start_engine)
    assert sorted(p.name for p in data.iterdir()) == before  # no new store in its place
    assert damage == "emptied" or not (data / "data.mdb").exists()


@pytest.mark.parametrize("left", ["lock.mdb", CURSOR_KEY_FILE])
def test_any_file_of_a_store_shows_that_one_was_there(tmp_path: Path, left: str) -> None:
    """LMDB leaves ``lock.mdb`` beside every store it opened (any aion version), the store its
    cursor key: either one is enough to refuse."""
    data = tmp_path / "data"
    make_store(data, engine=True)
    for name in ("data.mdb", "lock.mdb", CURSOR_KEY_FILE):
        if name != left:
            (data / name).unlink()
    with pytest.raises(StoreFormatError, match=DAMAGED) as refused:
        LmdbStore(data)
    assert left in str(refused.value) and str(data / "data.mdb") in str(refused.value)
    assert not (data / "data.mdb").exists()


@pytest.mark.parametrize(
    "present", [[], ["notes.txt"], ["engine.lock"], ["waitpoint-keys.json", "engine.lock"]]
)
def test_a_directory_without_a_store_still_gets_a_new_one(
    tmp_path: Path, present: list[str]
) -> None:
    """A brand-new directory, one with nothing of a store in it, one whose only aion file is
    the engine lock (taken before LMDB creates anything), or one an operator provisioned with
    a waitpoint key ring before its first start (``require_waitpoint_key=True``)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in present:
        (data / name).write_text("")
    with LmdbStore(data) as store:
        anyio.run(store.commit, Write(workflows=[record("w")]))
    with LmdbStore(data) as store:
        assert anyio.run(store.get_workflow, "w") is not None


def test_an_intact_store_with_a_larger_file_opens(tmp_path: Path) -> None:
    """Extra bytes past the last page (a file grown, then not used) are not damage."""
    data = tmp_path / "data"
    size = make_store(data)
    os.truncate(data / "data.mdb", size + 8192)
    with LmdbStore(data, role="client") as store:
        assert len(anyio.run(lambda: store.list_workflows(limit=1000)).items) == 1000
