"""Compaction, HashKV, and rebuilding the store from the backend on open."""

from __future__ import annotations

from pathlib import Path

import pytest
from crc32c import crc32c

from cluster.mvcc import (
    CompactedError,
    FutureRevisionError,
    KeyValue,
    KVStore,
    Revision,
    encode_kv,
)
from cluster.mvcc.store import FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY
from cluster.storage.backend import Backend, BackendQuotaError

from .conftest import Member

ALL = (b"\x00", b"\x00")


def rows(member: Member) -> list[bytes]:
    return [k for k, _ in member.backend.batch().range("key", b"", b"\xff" * 18)]


def history(kv: KVStore) -> None:
    kv.put(b"a", b"a1")  # 2
    kv.put(b"b", b"b1")  # 3
    kv.put(b"a", b"a2")  # 4
    kv.delete_range(b"b")  # 5
    kv.put(b"c", b"c1")  # 6
    kv.put(b"a", b"a3")  # 7
    kv.put(b"c", b"c2")  # 8


def snapshot(kv: KVStore) -> dict[int, object]:
    """Every readable revision's full range, and the revisions."""
    out: dict[int, object] = {-1: (kv.current_revision, kv.compact_revision)}
    for rev in range(max(kv.compact_revision, 1), kv.current_revision + 1):
        out[rev] = kv.range(*ALL, revision=rev).kvs
    return out


def test_compact_bounds(kv: KVStore) -> None:
    history(kv)
    with pytest.raises(FutureRevisionError):
        kv.compact(9)
    kv.compact(4)
    for rev in (3, 4):
        with pytest.raises(CompactedError, match=r"^mvcc: required revision has been compacted$"):
            kv.compact(rev)
    assert kv.compact_revision == 4


def test_reads_around_the_compact_revision(member: Member, kv: KVStore) -> None:
    history(kv)
    before = snapshot(kv)
    kv.compact(5)
    for rev in range(1, 5):
        with pytest.raises(CompactedError):
            kv.range(b"a", revision=rev)
    after = snapshot(kv)
    for rev in range(5, 9):
        assert after[rev] == before[rev], rev
    assert kv.range(b"a").kvs[0].version == 3  # versions count compacted puts too
    assert kv.range(b"a").kvs[0].create_revision == 2
    # b's tombstone at 5 is the compact revision: kept until the next compaction
    assert rows(member) == [
        Revision(4).to_bytes(),
        Revision(5).to_bytes(True),
        Revision(6).to_bytes(),
        Revision(7).to_bytes(),
        Revision(8).to_bytes(),
    ]
    kv.compact(7)
    assert rows(member) == [Revision(6).to_bytes(), Revision(7).to_bytes(), Revision(8).to_bytes()]
    assert kv.index.key_index(b"b") is None  # the deleted key is gone
    assert [x.key for x in kv.range(*ALL, revision=7).kvs] == [b"a", b"c"]
    assert kv.range(b"c", revision=7).kvs[0].value == b"c1"  # history after 7 kept


def test_compaction_is_recorded_and_survives_restart(member: Member) -> None:
    history(member.store)
    member.store.compact(6)
    raw = member.backend.batch().get("meta", FINISHED_COMPACT_KEY)
    assert raw == Revision(6).to_bytes()
    assert member.backend.batch().get("meta", SCHEDULED_COMPACT_KEY) == raw
    before = snapshot(member.store)
    kv = member.restart()
    assert snapshot(kv) == before
    assert (kv.current_revision, kv.compact_revision) == (8, 6)
    with pytest.raises(CompactedError):
        kv.range(b"a", revision=5)
    with pytest.raises(CompactedError):
        kv.compact(6)


def test_compacting_a_deletion_at_the_head_keeps_the_revision(member: Member) -> None:
    kv = member.store
    kv.put(b"a", b"1")  # 2
    kv.delete_range(b"a")  # 3
    kv.compact(3)
    kv = member.restart()
    assert (kv.current_revision, kv.compact_revision) == (3, 3)
    assert kv.put(b"a", b"2").revision == 4
    kv.compact(4)
    kv = member.restart()
    assert (kv.current_revision, kv.compact_revision) == (4, 4)
    assert kv.range(b"a").kvs[0].create_revision == 4


def test_a_scheduled_compaction_resumes_on_open(tmp_path: Path) -> None:
    a, b = Member(str(tmp_path / "a")), Member(str(tmp_path / "b"))
    try:
        for m in (a, b):
            history(m.store)
        a.store.compact(6)
        # b crashed after recording the compaction, before doing it
        b.backend.batch().put("meta", SCHEDULED_COMPACT_KEY, Revision(6).to_bytes())
        kv = b.restart()
        assert kv.compact_revision == 6
        assert b.backend.batch().get("meta", FINISHED_COMPACT_KEY) == Revision(6).to_bytes()
        assert rows(a) == rows(b)
        assert snapshot(a.store) == snapshot(kv)
        assert a.store.hash_kv() == kv.hash_kv()
    finally:
        a.close()
        b.close()


def test_hash_kv(tmp_path: Path) -> None:
    a, b = Member(str(tmp_path / "a")), Member(str(tmp_path / "b"))
    try:
        for m in (a, b):
            history(m.store)
        assert a.store.hash_kv() == b.store.hash_kv()
        assert a.store.hash_kv()[1] == -1
        h5 = a.store.hash_kv(5)
        a.store.put(b"a", b"later")
        assert a.store.hash_kv(5) == h5  # later writes do not count
        assert a.store.hash_kv() != b.store.hash_kv()
        b.store.put(b"a", b"other")
        assert a.store.hash_kv() != b.store.hash_kv()  # values count
        for m in (a, b):
            m.store.compact(6)
        assert a.store.hash_kv(8) == b.store.hash_kv(8)
        assert a.store.hash_kv(8)[1] == 6
        with pytest.raises(CompactedError):
            a.store.hash_kv(5)
        with pytest.raises(FutureRevisionError):
            a.store.hash_kv(10)
        before = [a.store.hash_kv(r) for r in range(6, 10)]
        assert [a.restart().hash_kv(r) for r in range(6, 10)] == before
    finally:
        a.close()
        b.close()


def test_hash_kv_is_etcds_crc32c_and_compact_returns_its_hash(kv: KVStore) -> None:
    kv.put(b"foo", b"bar")
    key, value = Revision(2).to_bytes(), encode_kv(KeyValue(b"foo", 2, 2, 1, b"bar"))
    assert kv.hash_kv() == (crc32c(b"key" + key + value), -1)
    h = kv.compact(2)
    assert (h.hash, h.compact_revision, h.revision) == (crc32c(b"key" + key + value), -1, 2)


def test_restart_rebuilds_the_same_store(member: Member) -> None:
    history(member.store)
    member.store.txn([], [], [])
    before = snapshot(member.store)
    kv = member.restart()
    assert snapshot(kv) == before
    # and carries on from where it was
    assert kv.put(b"c", b"c3").revision == 9
    assert kv.range(b"c").kvs[0].version == 3


def test_rebuild_after_the_batch_is_lost(member: Member) -> None:
    kv = member.store
    kv.put(b"a", b"1")
    member.backend.commit()
    kv.put(b"a", b"2")
    kv.put(b"b", b"1")
    member.backend.batch().abort()  # as after a crash or a failed commit
    kv.rebuild()
    assert kv.current_revision == 2
    assert kv.range(b"a").kvs[0].value == b"1"
    assert kv.put(b"b", b"x").revision == 3


def test_quota_error_puts_the_store_back_to_what_is_committed(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"), quota_bytes=1 << 20)
    try:
        kv = KVStore(backend)
        kv.put(b"small", b"1")
        backend.commit()
        with pytest.raises(BackendQuotaError):
            for i in range(100):
                kv.put(b"big%d" % i, b"x" * 100_000)
        assert kv.current_revision == 2
        assert [x.key for x in kv.range(*ALL).kvs] == [b"small"]
    finally:
        backend.close()
