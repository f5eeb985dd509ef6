"""The LMDB backend: buckets, the write batch, crash consistency, identity, quota, snapshots."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from cluster.storage import backend as backend_module
from cluster.storage.backend import (
    CHUNK_DATA,
    CHUNK_TRAILER,
    RETIRED_SUFFIX,
    Backend,
    BackendError,
    BackendQuotaError,
    DataDirMismatchError,
    SnapshotStreamError,
    commit_snapshot,
    install_snapshot,
    prepare_snapshot,
    release_retired,
)
from cluster.storage.fs import CountingFileSystem

MEMBER, CLUSTER = 0x8E9E05C52164694D, 0xCDF818194E3A8C32
REPO = Path(__file__).resolve().parents[3]


def db_path(root: Path) -> str:
    return str(root / "member" / "snap" / "db")


@pytest.fixture
def be(tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(db_path(tmp_path), quota_bytes=64 * 1024 * 1024)
    yield backend
    backend.close()


def fill(be: Backend, n: int, index: int, prefix: bytes = b"k") -> None:
    batch = be.batch()
    for i in range(n):
        batch.put("key", b"%s%06d" % (prefix, i), b"value-%d" % i)
    batch.set_consistent_index(index, 2)
    be.commit()


def dump(be: Backend) -> dict[str, list[tuple[bytes, bytes]]]:
    return {b: be.range(b, b"", b"\xff" * 8) for b in Backend.BUCKETS}


def test_buckets_exist_with_etcds_names(be: Backend) -> None:
    assert Backend.BUCKETS == (
        "alarm",
        "key",
        "meta",
        "lease",
        "auth",
        "authUsers",
        "authRoles",
        "members",
        "members_removed",
        "cluster",
    )
    assert sorted(be.env.dbs()) == sorted(name.encode() for name in Backend.BUCKETS)
    assert os.path.isfile(be.path)  # subdir=False: one file, as bbolt's db
    assert be.env.info()["map_size"] == 64 * 1024 * 1024
    assert be.consistent_index() == (0, 0)


def test_buckets_are_separate_namespaces(be: Backend) -> None:
    batch = be.batch()
    for bucket in Backend.BUCKETS:
        batch.put(bucket, b"same", bucket.encode())
    be.commit()
    assert [be.get(b, b"same") for b in Backend.BUCKETS] == [b.encode() for b in Backend.BUCKETS]
    with pytest.raises(KeyError):
        batch.put("nope", b"k", b"v")


def test_batch_reads_its_own_writes_before_commit(be: Backend) -> None:
    batch = be.batch()
    batch.put("key", b"a", b"1")
    batch.put("key", b"b", b"2")
    assert batch.delete("key", b"a")
    assert not batch.delete("key", b"zzz")
    batch.put("key", b"c", b"3")
    assert batch.get("key", b"a") is None
    assert batch.get("key", b"b") == b"2"
    assert batch.range("key", b"a", b"z") == [(b"b", b"2"), (b"c", b"3")]
    assert batch.pending == 5
    # Committed readers do not see the open batch.
    assert be.get("key", b"b") is None
    with be.read_txn() as rtx:
        assert rtx.range("key", b"", b"\xff") == []
    be.commit()
    assert batch.pending == 0
    assert be.get("key", b"b") == b"2"
    assert be.range("key", b"a", b"z") == [(b"b", b"2"), (b"c", b"3")]


def test_batch_reads_without_open_transaction_see_committed_data(be: Backend) -> None:
    fill(be, 3, index=1)
    batch = be.batch()
    assert not batch.active
    assert batch.get("key", b"k000001") == b"value-1"
    assert batch.range("key", b"k000001") == [(b"k000001", b"value-1")]
    assert not batch.active  # reading did not take the writer lock


def test_range_is_byte_ordered_half_open_and_limited(be: Backend) -> None:
    batch = be.batch()
    for key in [b"\x00", b"a", b"ab", b"b", b"\x80", b"\xff\xff"]:
        batch.put("key", key, key)
    be.commit()
    keys = [k for k, _ in be.range("key", b"", b"\xff\xff\xff")]
    assert keys == [b"\x00", b"a", b"ab", b"b", b"\x80", b"\xff\xff"]
    assert [k for k, _ in be.range("key", b"a", b"b")] == [b"a", b"ab"]
    assert [k for k, _ in be.range("key", b"a", b"\xff", limit=2)] == [b"a", b"ab"]
    assert be.range("key", b"ab") == [(b"ab", b"ab")]  # no end: the key alone
    assert be.range("key", b"aa") == []
    assert be.range("key", b"c", b"c") == []
    assert be.range("key", b"\xff\xff\xff", b"\xff\xff\xff\xff") == []


def test_read_txn_is_a_consistent_snapshot(be: Backend) -> None:
    fill(be, 2, index=1)
    with be.read_txn() as rtx:
        fill(be, 5, index=2, prefix=b"later")
        assert rtx.range("key", b"", b"\xff") == [
            (b"k000000", b"value-0"),
            (b"k000001", b"value-1"),
        ]
        assert rtx.consistent_index() == (1, 2)
    assert be.consistent_index() == (2, 2)
    assert len(be.range("key", b"", b"\xff")) == 7


def test_commit_if_due_by_count(tmp_path: Path) -> None:
    with Backend(db_path(tmp_path), batch_limit=3, batch_interval=1.0) as be:
        batch = be.batch()
        assert not be.commit_if_due(0.0)  # nothing pending
        batch.put("key", b"a", b"1")
        batch.put("key", b"b", b"2")
        assert not be.commit_if_due(0.01)
        assert be.get("key", b"a") is None
        batch.put("key", b"c", b"3")
        assert batch.pending == 3
        assert be.commit_if_due(0.02)
        assert batch.pending == 0
        assert be.get("key", b"c") == b"3"
        assert not be.commit_if_due(0.03)


def test_commit_if_due_by_time(tmp_path: Path) -> None:
    with Backend(db_path(tmp_path), batch_limit=1000, batch_interval=0.1) as be:
        batch = be.batch()
        batch.put("key", b"a", b"1")
        assert not be.commit_if_due(0.0)  # the first call starts the interval
        assert not be.commit_if_due(0.05)
        assert not be.commit_if_due(0.0999)
        assert be.commit_if_due(0.1)
        assert be.get("key", b"a") == b"1"
        assert not be.commit_if_due(0.5)  # due, but nothing pending
        batch.put("key", b"b", b"2")
        assert be.commit_if_due(0.6)  # an idle stretch: committed at once
        batch.put("key", b"c", b"3")
        assert not be.commit_if_due(0.65)  # the interval restarted at 0.6
        be.commit(now=0.66)
        batch.put("key", b"d", b"4")
        assert not be.commit_if_due(0.7)  # a forced commit restarts it too
        assert be.commit_if_due(0.77)


def test_consistent_index_is_committed_with_the_data(be: Backend) -> None:
    batch = be.batch()
    batch.put("key", b"x", b"1")
    batch.set_consistent_index(7, 3)
    assert batch.consistent_index() == (7, 3)
    assert be.consistent_index() == (0, 0)  # not yet committed
    be.commit()
    assert be.consistent_index() == (7, 3)
    assert be.get("meta", b"consistent_index") == (7).to_bytes(8, "big") + (3).to_bytes(8, "big")
    batch.set_consistent_index(7, 3)  # idempotent re-apply is fine
    with pytest.raises(ValueError, match="behind"):
        batch.set_consistent_index(6, 3)


def test_an_aborted_batch_reports_the_committed_consistent_index_again(be: Backend) -> None:
    batch = be.batch()
    batch.set_consistent_index(4, 1)
    be.commit()
    batch.put("key", b"x", b"1")
    batch.set_consistent_index(9, 2)
    assert batch.consistent_index() == (9, 2)
    batch.abort()
    assert batch.consistent_index() == (4, 1)
    batch.set_consistent_index(5, 1)  # not "behind" the aborted 9
    be.commit()
    assert be.consistent_index() == (5, 1)


def test_uncommitted_batch_is_lost_exactly_and_index_agrees(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    be = Backend(path)
    batch = be.batch()
    for index in range(1, 4):  # three applied entries, committed
        batch.put("key", b"k%d" % index, b"v%d" % index)
        batch.set_consistent_index(index, 1)
    be.commit()
    for index in range(4, 7):  # three more, never committed
        batch.put("key", b"k%d" % index, b"v%d" % index)
        batch.set_consistent_index(index, 1)
    batch.abort()  # the process dies: LMDB never saw a commit
    be.env.close()

    again = Backend(path)
    try:
        assert again.consistent_index() == (3, 1)
        assert again.range("key", b"", b"\xff") == [(b"k%d" % i, b"v%d" % i) for i in (1, 2, 3)]
    finally:
        again.close()


def test_process_killed_mid_batch_keeps_committed_data_and_its_index(tmp_path: Path) -> None:
    """A real crash: the child commits batches, then dies with one open (os._exit)."""
    path = db_path(tmp_path)
    script = textwrap.dedent(
        f"""
        import os
        from cluster.storage.backend import Backend
        be = Backend({path!r})
        b = be.batch()
        for index in range(1, 101):
            b.put("key", b"%08d" % index, b"x" * 100)
            b.set_consistent_index(index, 5)
            if index % 40 == 0:
                be.commit()
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    with Backend(path) as be:
        index, term = be.consistent_index()
        assert (index, term) == (80, 5)
        keys = [k for k, _ in be.range("key", b"", b"\xff")]
        assert keys == [b"%08d" % i for i in range(1, index + 1)]


def test_close_commits_the_pending_batch(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    be = Backend(path)
    be.batch().put("lease", b"l1", b"ttl")
    be.batch().set_consistent_index(9, 2)
    be.close()
    be.close()  # idempotent
    with Backend(path) as again:
        assert again.get("lease", b"l1") == b"ttl"
        assert again.consistent_index() == (9, 2)


def test_the_batch_belongs_to_the_thread_that_began_it(be: Backend) -> None:
    be.batch().put("key", b"a", b"1")
    errors: list[Exception] = []

    def other() -> None:
        try:
            be.batch().put("key", b"b", b"2")
        except BackendError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])
    be.commit()

    def write_and_commit() -> None:  # once committed, any thread may begin the next batch
        be.batch().put("key", b"c", b"3")
        be.commit()

    t = threading.Thread(target=write_and_commit)
    t.start()
    t.join()
    assert be.range("key", b"", b"\xff") == [(b"a", b"1"), (b"c", b"3")]


def test_member_ids_round_trip_and_mismatch_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with Backend(path) as be:
        assert be.member_ids() is None
        be.check_member_ids(MEMBER, CLUSTER)  # a fresh backend belongs to anyone
        be.set_member_ids(MEMBER, CLUSTER)
    with Backend(path) as be:
        assert be.member_ids() == (MEMBER, CLUSTER)
        be.check_member_ids(MEMBER, CLUSTER)
        with pytest.raises(DataDirMismatchError) as err:
            be.check_member_ids(0xABC, CLUSTER)
        assert str(err.value) == (
            f"data dir {tmp_path} belongs to member 8e9e05c52164694d of cluster "
            "cdf818194e3a8c32, not member abc of cluster cdf818194e3a8c32: remove this member "
            "and add a fresh one instead of reusing its data dir"
        )
        with pytest.raises(DataDirMismatchError, match="not member 8e9e05c52164694d of cluster 1:"):
            be.check_member_ids(MEMBER, 1)


def test_sizes(be: Backend) -> None:
    empty_in_use = be.size_in_use_bytes()
    assert 0 < empty_in_use <= be.size_bytes() == os.path.getsize(be.path)
    batch = be.batch()
    for i in range(2000):
        batch.put("key", b"%08d" % i, os.urandom(200))
    be.commit()
    grown = be.size_in_use_bytes()
    assert grown > empty_in_use + 2000 * 200
    assert be.size_bytes() >= grown
    assert be.size_bytes() == os.path.getsize(be.path)  # looked up again after the commit
    for i in range(2000):
        batch.delete("key", b"%08d" % i)
    be.commit()
    # Freed pages stay in the file (as with bbolt) but are no longer in use.
    assert be.size_in_use_bytes() < grown // 4
    assert be.size_bytes() >= grown


def test_writing_beyond_the_quota_raises_a_clear_error(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    be = Backend(path, quota_bytes=256 * 1024)
    fill(be, 10, index=1)
    batch = be.batch()
    with pytest.raises(BackendQuotaError) as err:
        for i in range(10_000):
            batch.put("key", b"big%06d" % i, b"x" * 1000)
            batch.set_consistent_index(2 + i, 2)
    assert str(err.value) == "etcdserver: mvcc: database space exceeded"
    assert isinstance(err.value.__cause__, lmdb.MapFullError)
    assert err.value.lost_writes > 0
    # The failed batch is gone as a whole; what was committed stays, with its index.
    assert batch.pending == 0 and not batch.active
    assert be.consistent_index() == (1, 2)
    assert batch.consistent_index() == (1, 2)  # the batch forgot the lost writes' index too
    assert len(be.range("key", b"", b"\xff")) == 10
    fill(be, 5, index=2, prefix=b"small")  # small writes still fit
    be.close()
    assert os.path.getsize(path) <= 256 * 1024


def test_quota_is_rounded_to_pages_and_defaults_to_two_gib(tmp_path: Path) -> None:
    with Backend(db_path(tmp_path / "a"), quota_bytes=100_000) as be:
        assert be.env.info()["map_size"] % os.sysconf("SC_PAGE_SIZE") == 0
        assert be.env.info()["map_size"] >= 100_000
    with Backend(db_path(tmp_path / "b")) as be:
        assert be.env.info()["map_size"] == 2 * 1024**3
        assert be.size_bytes() < 1024 * 1024  # the map is not preallocated


# -- backend snapshots ------------------------------------------------------------


def populated(root: Path) -> Backend:
    be = Backend(db_path(root))
    batch = be.batch()
    for i in range(3000):
        batch.put("key", b"%08d" % i, b"v" * (i % 300))
    batch.put("lease", b"\x00\x01", b"lease")
    batch.put("members", b"m1", b"peer")
    batch.set_consistent_index(3001, 4)
    be.set_member_ids(MEMBER, CLUSTER)  # commits the batch too
    return be


def test_snapshot_stream_installs_an_identical_database(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")
    src.batch().put("key", b"uncommitted", b"x")  # only committed data is streamed
    chunks = list(src.snapshot_chunks(chunk_size=16 * 1024))
    expected = dump(src)
    src.batch().abort()
    assert len(chunks) > 3
    assert all(c[0] == CHUNK_DATA for c in chunks[:-1]) and chunks[-1][0] == CHUNK_TRAILER
    assert all(len(c) == 1 + 16 * 1024 for c in chunks[:-2])
    assert not [n for n in os.listdir(os.path.dirname(src.path)) if "snapshot" in n]

    target = tmp_path / "follower"
    old = Backend(db_path(target))
    fill(old, 10, index=1, prefix=b"stale")
    old.close()  # the caller closes the backend, installs, reopens
    install_snapshot(db_path(target), iter(chunks))
    assert sorted(os.listdir(os.path.dirname(db_path(target)))) == ["db", "db-lock"]
    with Backend(db_path(target)) as be:
        assert dump(be) == expected
        assert be.get("key", b"uncommitted") is None
        assert be.consistent_index() == (3001, 4)
        assert be.member_ids() == (MEMBER, CLUSTER)
        fill(be, 1, index=3002)  # a working database
    src.close()


def test_snapshot_stream_into_a_new_path(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    install_snapshot(str(new_dir / "db"), src.snapshot_chunks())
    with Backend(str(new_dir / "db")) as be:
        assert dump(be) == dump(src)
    src.close()


def _damaged(chunks: list[bytes], how: str) -> list[bytes]:
    out = list(chunks)
    if how == "flipped data byte":
        bad = bytearray(out[1])
        bad[100] ^= 0x01
        out[1] = bytes(bad)
    elif how == "missing trailer":
        out.pop()
    elif how == "missing data chunk":
        del out[1]
    elif how == "bad trailer digest":
        bad = bytearray(out[-1])
        bad[1] ^= 0x80
        out[-1] = bytes(bad)
    elif how == "short trailer":
        out[-1] = out[-1][:-1]
    elif how == "chunk after trailer":
        out.append(out[0])
    elif how == "unknown kind":
        out[0] = b"\x07" + out[0][1:]
    elif how == "empty chunk":
        out.insert(1, b"")
    elif how == "nothing":
        out = []
    return out


@pytest.mark.parametrize(
    "how, message",
    [
        ("flipped data byte", "sha256 mismatch"),
        ("missing trailer", "without its trailer"),
        ("missing data chunk", "bytes received, sender sent"),
        ("bad trailer digest", "sha256 mismatch"),
        ("short trailer", "trailer of 39 bytes"),
        ("chunk after trailer", "after the trailer"),
        ("unknown kind", "unknown kind 7"),
        ("empty chunk", "chunk 1 is empty"),
        ("nothing", "without its trailer"),
    ],
)
def test_damaged_stream_is_refused_and_old_db_untouched(
    tmp_path: Path, how: str, message: str
) -> None:
    src = populated(tmp_path / "leader")
    chunks = list(src.snapshot_chunks(chunk_size=8 * 1024))
    src.close()
    target = db_path(tmp_path / "follower")
    old = Backend(target)
    fill(old, 10, index=1, prefix=b"old")
    old.close()
    before = Path(target).read_bytes()

    with pytest.raises(SnapshotStreamError, match=message):
        install_snapshot(target, _damaged(chunks, how))
    assert Path(target).read_bytes() == before
    assert not os.path.exists(target + ".tmp")
    with Backend(target) as be:
        assert be.consistent_index() == (1, 2)


def test_stream_failing_midway_removes_the_temp_file(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")
    chunks = list(src.snapshot_chunks(chunk_size=8 * 1024))
    src.close()

    def broken_connection() -> Iterator[bytes]:
        yield from chunks[:3]
        raise ConnectionResetError("peer went away")

    target = tmp_path / "follower" / "db"
    target.parent.mkdir()
    (target.parent / "db.tmp").write_bytes(b"left from an earlier crash")
    with pytest.raises(ConnectionResetError):
        install_snapshot(str(target), broken_connection())
    assert os.listdir(target.parent) == []


def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(b"not an lmdb file" * 512)
    with pytest.raises(BackendError, match=f"backend: cannot open {path}: "):
        Backend(path)


def test_read_txn_items_lists_a_bucket_in_key_order(be: Backend) -> None:
    batch = be.batch()
    for key in (b"b", b"\xff\x00", b"a", b"\x00"):
        batch.put("lease", key, key * 2)
    be.commit()
    with be.read_txn() as rtx:
        assert list(rtx.items("lease")) == [
            (b"\x00", b"\x00\x00"),
            (b"a", b"aa"),
            (b"b", b"bb"),
            (b"\xff\x00", b"\xff\x00\xff\x00"),
        ]
        assert list(rtx.items("auth")) == []


def test_defrag_shrinks_the_file_and_keeps_everything(be: Backend) -> None:
    batch = be.batch()
    for i in range(2000):
        batch.put("key", b"%08d" % i, os.urandom(200))
    be.commit()
    for i in range(1990):
        batch.delete("key", b"%08d" % i)
    batch.put("meta", b"x", b"uncommitted")  # committed by defrag first
    batch.set_consistent_index(7, 3)
    before, contents = be.size_bytes(), None
    be.defrag()
    contents = dump(be)
    assert be.size_bytes() < before // 4
    assert be.size_bytes() == os.path.getsize(be.path)
    assert len(contents["key"]) == 10
    assert be.get("meta", b"x") == b"uncommitted"
    assert be.consistent_index() == (7, 3)
    assert not os.path.exists(be.path + ".defrag")
    batch.put("key", b"after", b"1")  # the batch goes on in the new environment
    be.commit()
    be.close()
    reopened = Backend(be.path, quota_bytes=64 * 1024 * 1024)
    try:
        assert reopened.get("key", b"after") == b"1"
        assert dump(reopened)["key"][:10] == contents["key"]
    finally:
        reopened.close()


def test_defrag_that_cannot_write_its_copy_leaves_the_db_in_use(
    be: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(be, 10, index=4)

    def broken(fd: int, compact: bool = False) -> None:
        raise lmdb.Error("disk full")

    env = be.env
    monkeypatch.setattr(be, "env", type("Env", (), {"copyfd": staticmethod(broken)})())
    with pytest.raises(lmdb.Error):
        be.defrag()
    monkeypatch.setattr(be, "env", env)
    assert not os.path.exists(be.path + ".defrag")
    assert len(dump(be)["key"]) == 10


def test_an_installed_snapshot_names_the_receiving_member(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")
    src.set_member_ids(0x1, 0xC)
    new_dir = tmp_path / "follower"
    new_dir.mkdir()
    install_snapshot(str(new_dir / "db"), src.snapshot_chunks(), member_ids=(0x2, 0xC))
    with Backend(str(new_dir / "db")) as be:
        assert be.member_ids() == (0x2, 0xC)
        be.check_member_ids(0x2, 0xC)
        assert dump(be)["key"] == dump(src)["key"]
    assert not (new_dir / "db.tmp").exists()
    assert not (new_dir / "db.tmp-lock").exists()
    src.close()


# -- replacing a large db without freeing it all at once ------------------------------


def test_a_replaced_db_is_retired_then_released_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = populated(tmp_path / "leader")
    target = db_path(tmp_path / "follower")
    old = Backend(target)
    fill(old, 500, index=1, prefix=b"stale")
    old.close()
    old_bytes = Path(target).read_bytes()
    prepare_snapshot(target, src.snapshot_chunks())
    commit_snapshot(target)
    retired = Path(target + RETIRED_SUFFIX)
    assert retired.read_bytes() == old_bytes  # the old file, not yet freed
    with Backend(target) as be:
        assert dump(be) == dump(src)  # the new one is in place meanwhile
    sizes: list[int] = []
    real_truncate = os.ftruncate
    monkeypatch.setattr(backend_module, "RELEASE_STEP", 64 * 1024)
    monkeypatch.setattr(backend_module, "RELEASE_PAUSE", 0)

    def recording_truncate(fd: int, n: int) -> None:
        sizes.append(n)
        real_truncate(fd, n)

    monkeypatch.setattr(os, "ftruncate", recording_truncate)
    assert release_retired(target)
    assert not retired.exists()
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 0
    assert len(sizes) == -(-len(old_bytes) // (64 * 1024))  # one 64 KiB step at a time
    assert not release_retired(target)  # nothing left to release
    src.close()


def test_a_retired_db_left_by_a_crash_is_replaced_by_the_next(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")
    target = db_path(tmp_path / "follower")
    os.makedirs(os.path.dirname(target))
    Path(target + RETIRED_SUFFIX).write_bytes(b"left by a crash")
    Backend(target).close()
    first = Path(target).read_bytes()
    install_snapshot(target, src.snapshot_chunks())  # releases what it retired
    assert not Path(target + RETIRED_SUFFIX).exists()
    prepare_snapshot(target, src.snapshot_chunks())
    commit_snapshot(target)
    assert Path(target + RETIRED_SUFFIX).read_bytes() != first  # the db just replaced
    assert release_retired(target)
    src.close()


def test_release_leaves_a_db_retired_meanwhile_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(tmp_path / "db")
    retired = Path(target + RETIRED_SUFFIX)
    retired.write_bytes(b"x" * 100)
    real_free = backend_module.free_gradually

    def free_while_another_is_retired(fd: int) -> None:
        real_free(fd)
        retired.unlink()  # what replace_retiring does before naming the next old db
        retired.write_bytes(b"newer")

    monkeypatch.setattr(backend_module, "RELEASE_PAUSE", 0)
    monkeypatch.setattr(backend_module, "free_gradually", free_while_another_is_retired)
    assert release_retired(target)
    assert retired.read_bytes() == b"newer"  # left for its own release
    monkeypatch.setattr(backend_module, "free_gradually", real_free)
    assert release_retired(target)
    assert not retired.exists()


def test_a_crash_before_the_rename_leaves_the_live_db_whole(tmp_path: Path) -> None:
    target = db_path(tmp_path)
    with Backend(target) as be:
        fill(be, 200, index=3)
        expected = dump(be)
    os.link(target, target + RETIRED_SUFFIX)  # replace_retiring's link; then the crash
    live = Path(target).read_bytes()
    assert release_retired(target)  # what the member does when it starts again
    assert not Path(target + RETIRED_SUFFIX).exists()
    assert Path(target).read_bytes() == live  # only the second name went
    with Backend(target) as be:
        assert dump(be) == expected


def test_defrag_retires_the_old_file(be: Backend) -> None:
    fill(be, 300, index=2)
    before = Path(be.path).read_bytes()
    be.defrag()
    assert Path(be.path + RETIRED_SUFFIX).read_bytes() == before
    assert release_retired(be.path)
    assert len(dump(be)["key"]) == 300


def test_a_received_snapshot_is_synced_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "SYNC_EVERY", 100 * 1024)
    src = populated(tmp_path / "leader")
    fs = CountingFileSystem()
    target = db_path(tmp_path / "follower")
    os.makedirs(os.path.dirname(target))
    prepare_snapshot(target, src.snapshot_chunks(chunk_size=32 * 1024), fs)
    size = os.path.getsize(target + ".tmp")
    assert size > 300 * 1024
    # never more than SYNC_EVERY plus one chunk unsynced, and synced whole at the end
    gaps = [b - a for a, b in zip([0, *fs.synced_at], fs.synced_at, strict=False)]
    assert max(gaps) <= 100 * 1024 + 32 * 1024
    assert fs.synced_at[-1] == size
    src.close()


def test_the_snapshot_copy_is_freed_by_a_thread_after_streaming(tmp_path: Path) -> None:
    src = populated(tmp_path / "leader")

    def open_copies() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(str(tmp_path)) and ".db-snapshot-" in target:
                    names.append(target)
        return names

    chunks = src.snapshot_chunks(chunk_size=64 * 1024)
    assert len(open_copies()) == 1  # the unlinked copy
    streamed = list(chunks)
    assert streamed[-1][0] == CHUNK_TRAILER
    for t in threading.enumerate():
        if t.name == "free-snapshot-copy":
            t.join(10)
    assert open_copies() == []
    src.close()
