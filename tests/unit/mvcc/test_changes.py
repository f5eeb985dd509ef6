"""``KVStore.changes``: the revision-ordered history of writes that watchers catch up from."""

from __future__ import annotations

import random

import pytest

from cluster.mvcc import (
    CompactedError,
    DeleteRangeRequest,
    FutureRevisionError,
    KeyValue,
    KVStore,
    PutRequest,
)

from .conftest import Member


def write_history(kv: KVStore) -> list[KeyValue]:
    """Revisions 2..9; every change in order, as the write results list them."""
    out: list[KeyValue] = []
    out += kv.put(b"a", b"a1").changes  # 2
    out += kv.put(b"b", b"b1").changes  # 3
    out += kv.txn(success=[PutRequest(b"c", b"c1"), PutRequest(b"a", b"a2")]).changes  # 4
    out += kv.delete_range(b"a", b"c").changes  # 5: a and b
    out += kv.put(b"a", b"a3").changes  # 6
    out += kv.txn(success=[DeleteRangeRequest(b"c"), PutRequest(b"d", b"d1")]).changes  # 7
    out += kv.put(b"c", b"c2").changes  # 8
    out += kv.put(b"b", b"b2").changes  # 9
    return out


def test_every_change_in_revision_order(kv: KVStore) -> None:
    history = write_history(kv)
    assert kv.changes(1) == (history, 9)
    assert kv.changes(0, 0) == (history, 9)
    # a deletion is the key with its deletion revision, as in a write's changes
    assert kv.changes(5, 5) == ([KeyValue(b"a", mod_revision=5), KeyValue(b"b", mod_revision=5)], 5)
    for start in range(1, 11):
        for end in range(start, 10):
            want = [c for c in history if start <= c.mod_revision <= end]
            assert kv.changes(start, end) == (want, end), (start, end)


def test_key_ranges(kv: KVStore) -> None:
    history = write_history(kv)
    assert kv.changes(1, key=b"a", range_end=b"")[0] == [c for c in history if c.key == b"a"]
    assert kv.changes(1, key=b"b", range_end=b"d")[0] == [
        c for c in history if b"b" <= c.key < b"d"
    ]
    assert kv.changes(1, key=b"c", range_end=b"\x00")[0] == [c for c in history if c.key >= b"c"]
    assert kv.changes(3, 7, key=b"zz", range_end=b"")[0] == []


def test_limit_reads_whole_revisions(kv: KVStore) -> None:
    history = write_history(kv)
    # revision 4 and 5 have two rows each: a limit never splits them
    assert kv.changes(2, limit=1) == (history[:1], 2)
    assert kv.changes(2, limit=2) == (history[:2], 3)
    assert kv.changes(2, limit=3) == (history[:4], 4)
    assert kv.changes(4, limit=1) == (history[2:4], 4)
    assert kv.changes(5, limit=1) == (history[4:6], 5)
    assert kv.changes(2, limit=100) == (history, 9)
    # the limit counts rows read, not changes returned
    assert kv.changes(2, key=b"d", range_end=b"", limit=3) == ([], 4)
    # paging with the limit yields the whole history, once
    got: list[KeyValue] = []
    start = 1
    while start <= kv.current_revision:
        part, through = kv.changes(start, limit=2)
        assert through >= start
        got += part
        start = through + 1
    assert got == history


def test_bounds(kv: KVStore) -> None:
    history = write_history(kv)
    with pytest.raises(FutureRevisionError):
        kv.changes(1, 10)
    assert kv.changes(10) == ([], 9)  # nothing after the current revision (yet)
    kv.compact(5)
    with pytest.raises(CompactedError):
        kv.changes(4)
    # complete from the compact revision on: its own changes are kept
    assert kv.changes(5) == ([c for c in history if c.mod_revision >= 5], 9)


def test_sees_uncommitted_and_committed_writes(member: Member, kv: KVStore) -> None:
    history = write_history(kv)
    assert member.backend.batch().active
    assert kv.changes(1)[0] == history
    member.backend.commit()
    assert not member.backend.batch().active
    assert kv.changes(1)[0] == history
    kv = member.restart()
    assert kv.changes(1)[0] == history


def test_random_history_against_write_results(kv: KVStore) -> None:
    rng = random.Random(7)
    keys = [b"k%d" % i for i in range(6)]
    history: list[KeyValue] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.6:
            history += kv.put(rng.choice(keys), b"v%d" % rng.randrange(100)).changes
        elif op < 0.8:
            a, b = sorted(rng.sample(keys, 2))
            history += kv.delete_range(a, b).changes
        else:
            picked = rng.sample(keys, 3)
            ops = [
                PutRequest(k, b"t") if rng.random() < 0.5 else DeleteRangeRequest(k) for k in picked
            ]
            history += kv.txn(success=ops).changes
    cur = kv.current_revision
    for _ in range(50):
        start = rng.randrange(1, cur + 1)
        a, b = sorted(rng.sample(keys, 2))
        limit = rng.randrange(0, 20)
        got, through = kv.changes(start, key=a, range_end=b, limit=limit)
        assert start <= through <= cur or (limit == 0 and through == cur)
        assert got == [c for c in history if start <= c.mod_revision <= through and a <= c.key < b]


def test_delete_keys_deletes_many_at_one_revision(kv: KVStore) -> None:
    store = kv
    for i in range(300):  # more than a txn may hold
        store.put(f"k{i:03}".encode(), b"v")
    before = store.current_revision
    result = store.delete_keys([f"k{i:03}".encode() for i in range(300)] + [b"absent"])
    assert result.deleted == 300
    assert store.current_revision == result.revision == before + 1
    assert [kv.key for kv in result.changes] == [f"k{i:03}".encode() for i in range(300)]
    assert {kv.mod_revision for kv in result.changes} == {before + 1}
    assert store.range(b"k", b"l").count == 0
    nothing = store.delete_keys([b"absent"])
    assert (nothing.deleted, nothing.changes, store.current_revision) == (0, [], before + 1)
