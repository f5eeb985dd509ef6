"""``cluster.faults``: every crash point fires where it says, and the power-loss file system.

Each crash point is tested in a real process armed by ``ETCD_PY_CRASH`` (a small script that
drives the storage code; the point must end it with status 137 the n-th time, after one line
on stderr), then what it left on disk is opened again here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster import faults
from cluster.faults import CrashPlan, PowerLossFileSystem, parse_crash
from cluster.mvcc.store import SCHEDULED_COMPACT_KEY, KVStore
from cluster.raft import Entry, EntryType, HardState, Ready
from cluster.storage.backend import Backend
from cluster.storage.durable import open_raft_log
from cluster.storage.fs import OsFileSystem
from tests.e2e.procs import ROOT

MEMBER, CLUSTER = 0x8E9E05C52164694D, 0xCDF818194E3A8C32

PRELUDE = f"""
import sys
from cluster.raft import ConfState, Entry, EntryType, HardState, Ready
from cluster.storage.backend import Backend
from cluster.storage.durable import open_raft_log
M, C = {MEMBER}, {CLUSTER}
D = sys.argv[1]

def ready(i):
    return Ready(hard_state=HardState(1, 1, i),
                 entries=[Entry(1, i, EntryType.NORMAL, b"v%d" % i)], must_sync=True)
"""


def _run(script: str, tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (faults.CRASH_ENV,)}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(tmp)],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _crashed_at(done: subprocess.CompletedProcess[str], point: str, time: int = 1) -> None:
    assert done.returncode == faults.EXIT_STATUS, done.stderr
    assert f"crash point {point} reached (time {time})" in done.stderr, done.stderr


def _last_index(tmp: Path) -> int:
    store = open_raft_log(str(tmp), MEMBER, CLUSTER)
    try:
        return store.storage.last_index()
    finally:
        store.close()


# -- arming ------------------------------------------------------------------------------


def test_specs_parse_and_bad_ones_are_refused() -> None:
    assert parse_crash("wal-after-save") == CrashPlan("wal-after-save", 1)
    assert parse_crash("compact-mid:7") == CrashPlan("compact-mid", 7)
    with pytest.raises(ValueError, match="unknown crash point 'nope'"):
        parse_crash("nope")
    with pytest.raises(ValueError, match="not a count"):
        parse_crash("wal-after-save:0")
    with pytest.raises(ValueError, match="not a count"):
        parse_crash("wal-after-save:x")


def test_unarmed_by_default_and_a_bad_variable_stops_the_member_with_one_line(
    tmp_path: Path,
) -> None:
    assert faults.CRASH is None and faults.POWER_LOSS is False
    assert type(faults.file_system()) is OsFileSystem
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "--data-dir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, faults.CRASH_ENV: "wal-save"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {faults.CRASH_ENV}='wal-save': unknown crash point 'wal-save' (one of "
        + ", ".join(faults.POINTS)
        + ")"
    ]


def test_only_the_nth_time_of_the_armed_point_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    fired: list[int] = []

    def fake_exit(status: int) -> None:
        fired.append(status)

    monkeypatch.setattr(faults, "_exit", fake_exit)
    monkeypatch.setattr(faults, "CRASH", CrashPlan("backend-after-commit", 3))
    for _ in range(2):
        faults.crash_point("backend-after-commit")
        faults.crash_point("wal-after-save")
    assert fired == []
    faults.crash_point("backend-after-commit")
    assert fired == [137]


# -- each point, in a real process -------------------------------------------------------


def test_wal_before_save(tmp_path: Path) -> None:
    done = _run(
        """
        store = open_raft_log(D, M, C)
        for i in (1, 2, 3):
            store.save(ready(i))
            print(i, flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: "wal-before-save:2"},
    )
    _crashed_at(done, "wal-before-save", 2)
    assert done.stdout.split() == ["1"]
    assert _last_index(tmp_path) == 1  # the second batch never reached the WAL


def test_wal_after_save(tmp_path: Path) -> None:
    done = _run(
        """
        store = open_raft_log(D, M, C)
        for i in (1, 2, 3):
            store.save(ready(i))
            print(i, flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: "wal-after-save:2"},
    )
    _crashed_at(done, "wal-after-save", 2)
    assert done.stdout.split() == ["1"]
    assert _last_index(tmp_path) == 2  # durable, though the process never went on


@pytest.mark.parametrize(
    "point, kept", [("backend-before-commit", b"1"), ("backend-after-commit", b"2")]
)
def test_backend_commit(tmp_path: Path, point: str, kept: bytes) -> None:
    done = _run(
        """
        be = Backend(D + "/db")
        for v in (b"1", b"2"):
            be.batch().put("key", b"k", v)
            be.commit()
            print(v.decode(), flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: f"{point}:2"},
    )
    _crashed_at(done, point, 2)
    assert done.stdout.split() == ["1"]
    with Backend(str(tmp_path / "db")) as be:
        assert be.get("key", b"k") == kept


def test_snapshot_save_leaves_a_snap_file_that_recovery_does_not_trust(tmp_path: Path) -> None:
    done = _run(
        """
        store = open_raft_log(D, M, C)
        for i in range(1, 11):
            store.save(ready(i))
        store.snapshot(10, ConfState(frozenset({M})))
        print("snapshot saved", flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: "snapshot-save"},
    )
    _crashed_at(done, "snapshot-save")
    assert done.stdout == ""
    snaps = [n for n in os.listdir(tmp_path / "member" / "snap") if n.endswith(".snap")]
    assert snaps == ["0000000000000001-000000000000000a.snap"]
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    try:
        assert store.storage.snapshot().metadata.index == 0  # no WAL marker: not used
        assert store.storage.last_index() == 10
    finally:
        store.close()


def test_snapshot_apply_crashes_with_the_leaders_db_in_place(tmp_path: Path) -> None:
    done = _run(
        """
        import asyncio
        from types import SimpleNamespace
        from cluster.server.member import Member

        leader = Backend(D + "/leader.db")
        leader.batch().put("key", b"k", b"leader's")
        leader.batch().set_consistent_index(50, 2)
        leader.commit()
        image = b"".join(len(c).to_bytes(4, "big") + c for c in leader.snapshot_chunks())
        mine = Backend(D + "/member/snap/db")
        mine.batch().set_consistent_index(5, 1)
        mine.commit()


        async def install() -> None:
            loop = asyncio.get_running_loop()
            stub = SimpleNamespace(backend=mine, id=M, cluster_id=C, _loop=loop)
            await Member._install_backend(stub, image)  # type: ignore[arg-type]

        asyncio.run(install())
        print("installed", flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: "snapshot-apply"},
    )
    _crashed_at(done, "snapshot-apply")
    assert done.stdout == ""
    with Backend(str(tmp_path / "member" / "snap" / "db")) as be:
        assert be.consistent_index() == (50, 2)
        assert be.get("key", b"k") == b"leader's"
        assert be.member_ids() == (MEMBER, CLUSTER)
    assert not (tmp_path / "member" / "snap" / "db.tmp").exists()
    # the replaced db, not yet freed: the member releases it when it starts again
    assert (tmp_path / "member" / "snap" / "db.retired").exists()


def test_compact_mid_loses_the_uncommitted_compaction(tmp_path: Path) -> None:
    done = _run(
        """
        from cluster.mvcc.store import KVStore
        be = Backend(D + "/db")
        kv = KVStore(be)
        for v in (b"a", b"b", b"c"):
            kv.put(b"foo", v)
        be.commit()
        kv.compact(3)
        print("compacted", flush=True)
        """,
        tmp_path,
        {faults.CRASH_ENV: "compact-mid"},
    )
    _crashed_at(done, "compact-mid")
    assert done.stdout == ""
    with Backend(str(tmp_path / "db")) as be:
        kv = KVStore(be)
        assert kv.compact_revision == -1  # one batch: the compaction is replayed from the WAL
        assert kv.range(b"foo", revision=2).kvs[0].value == b"a"


def test_compact_mid_fires_after_the_scheduled_revision_before_any_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crashed(Exception):
        pass

    def fake_exit(status: int) -> None:
        raise Crashed

    monkeypatch.setattr(faults, "_exit", fake_exit)
    monkeypatch.setattr(faults, "CRASH", CrashPlan("compact-mid"))
    with Backend(str(tmp_path / "db")) as be:
        kv = KVStore(be)
        for v in (b"a", b"b", b"c"):
            kv.put(b"foo", v)
        with pytest.raises(Crashed):
            kv.compact(3)
        batch = be.batch()
        assert batch.get("meta", SCHEDULED_COMPACT_KEY) is not None
        assert batch.get("meta", b"finishedCompactRev") is None
        assert len(batch.range("key", b"\x00", b"\xff")) == 3  # nothing removed yet
        batch.abort()


# -- power loss --------------------------------------------------------------------------


def test_power_loss_file_holds_writes_until_sync(tmp_path: Path) -> None:
    fs = PowerLossFileSystem()
    path = str(tmp_path / "f")
    f = fs.open_append(path)
    f.write(b"abc")
    f.write(b"def")
    assert f.size() == 6
    assert os.path.getsize(path) == 0  # nothing reached the OS
    assert fs.read_bytes(path) == b"abcdef"  # as through the page cache
    f.sync()
    assert Path(path).read_bytes() == b"abcdef"
    f.write(b"ghi")
    f.truncate(7)  # takes back unsynced bytes first
    assert (f.size(), fs.read_bytes(path)) == (7, b"abcdefg")
    f.truncate(2)  # and synced ones below that
    assert (f.size(), Path(path).read_bytes()) == (2, b"ab")
    f.write(b"xyz")
    fs.rename(path, path + ".new")
    assert fs.read_bytes(path + ".new") == b"abxyz"
    f.close()  # closing makes nothing durable
    assert Path(path + ".new").read_bytes() == b"ab"


def test_power_loss_a_sigkill_loses_exactly_what_was_not_fsynced(tmp_path: Path) -> None:
    done = _run(
        """
        import os, signal
        from cluster import faults
        assert type(faults.file_system()).__name__ == "PowerLossFileSystem"
        store = open_raft_log(D, M, C)
        store.save(ready(1))
        store.save(ready(2))
        store.wal.save(HardState(1, 1, 3), [Entry(1, 3, EntryType.NORMAL, b"v3")], sync=False)
        store.wal.save(HardState(1, 1, 3), [], sync=False)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
        {faults.POWER_LOSS_ENV: "1"},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "WAL and snapshot writes stay in memory until fsync" in done.stderr
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    try:
        assert store.storage.last_index() == 2
        assert store.storage.hard_state == HardState(1, 1, 2)
    finally:
        store.close()


def test_power_loss_a_later_fsync_makes_earlier_unsynced_writes_durable(tmp_path: Path) -> None:
    fs = PowerLossFileSystem()
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER, fs=fs)
    one, two = Entry(1, 1, EntryType.NORMAL, b"v1"), Entry(1, 2, EntryType.NORMAL, b"v2")
    segment = tmp_path / "member" / "wal" / store.wal.segment_names()[-1]
    size = segment.stat().st_size
    store.save(Ready(hard_state=HardState(1, 1, 1), entries=[one], must_sync=False))
    assert segment.stat().st_size == size  # held in memory
    store.save(Ready(hard_state=HardState(1, 1, 2), entries=[two], must_sync=True))
    store.close()
    assert _last_index(tmp_path) == 2
