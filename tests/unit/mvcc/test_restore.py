"""Opening a store on a backend rebuilds the same index as the writes built (the fast load path)."""

from __future__ import annotations

import gc
import random

import pytest

from cluster.mvcc import KeyValue, KVStore, PutRequest, Revision, encode_kv
from cluster.mvcc.index import TreeIndex
from cluster.mvcc.kv import KVCodecError, decode_index_fields
from cluster.mvcc.ops import DeleteRangeRequest
from cluster.mvcc.store import _long_lived_objects

from .conftest import Member

KEYS = [b"k%02d" % i for i in range(12)]


def views(index: TreeIndex, keys: list[bytes], low: int, high: int) -> dict[object, object]:
    """What reads see: each key's (modified, created main, version) at every revision in
    [low, high], every range's keys, and what a compaction would keep."""
    out: dict[object, object] = {"len": len(index)}
    for rev in range(max(low, 1), high + 1):
        for key in keys:
            got = index.get(key, rev)
            out[key, rev] = None if got is None else (got[0], got[1].main, got[2])
        out["range", rev] = index.range(b"k", b"l", rev)
        out["keep", rev] = index.keep(rev)
    return out


def random_history(kv: KVStore, rng: random.Random, steps: int) -> dict[bytes, int]:
    """Puts (some with leases), deletes, multi-op txns and compactions; the live keys'
    leases at the end (0 for none)."""
    leases: dict[bytes, int] = {}
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.45:
            key, lease = rng.choice(KEYS), rng.choice([0, 0, 7, 9])
            kv.put(key, b"v%d" % rng.randrange(1000), lease=lease)
            leases[key] = lease
        elif roll < 0.6:
            key = rng.choice(KEYS)
            end = key[:-1] + bytes([key[-1] + rng.choice([0, 3])]) if rng.random() < 0.3 else b""
            if end == key:
                end = b""
            for k in [k for k in leases if k == key or (end and key <= k < end)]:
                del leases[k]
            kv.delete_range(key, end)
        elif roll < 0.85:
            # several keys at one revision: sub-revisions > 0 (distinct keys, no put+delete)
            keys = rng.sample(KEYS, rng.randrange(1, 5))
            ops: list[PutRequest | DeleteRangeRequest] = []
            for key in keys:
                if rng.random() < 0.7:
                    lease = rng.choice([0, 7])
                    ops.append(PutRequest(key, b"t", lease))
                    leases[key] = lease
                else:
                    ops.append(DeleteRangeRequest(key))
                    leases.pop(key, None)
            kv.txn([], ops, [])
        elif kv.current_revision > max(kv.compact_revision, 1) + 2:
            kv.compact(rng.randrange(max(kv.compact_revision, 1) + 1, kv.current_revision + 1))
    return {k: v for k, v in leases.items() if v}


@pytest.mark.parametrize("seed", range(8))
def test_reopened_index_answers_as_the_written_one(member: Member, seed: int) -> None:
    rng = random.Random(seed)
    want_leases = random_history(member.store, rng, 150)
    before = member.store
    low, high = max(before.compact_revision, 1), before.current_revision
    expected = views(before.index, KEYS, low, high)
    kv = member.restart()
    assert (kv.current_revision, kv.compact_revision) == (high, before.compact_revision)
    assert views(kv.index, KEYS, low, high) == expected
    assert kv.loaded_leases() == want_leases
    # a later compaction leaves both indexes the same again
    if high > low:
        assert before.index.compact(high) == kv.index.compact(high)
        assert views(kv.index, KEYS, high, high) == views(before.index, KEYS, high, high)


def test_reopened_index_keeps_exact_created_revisions(member: Member) -> None:
    """A generation's first stored revision is its creation: loaded with its sub-revision."""
    kv = member.store
    kv.txn([], [PutRequest(b"a", b"1"), PutRequest(b"b", b"1")], [])  # b created at 2.1
    kv.put(b"b", b"2")
    live = kv.index.key_index(b"b")
    loaded = member.restart().index.key_index(b"b")
    assert live is not None and loaded is not None
    assert loaded.generations[0].created == live.generations[0].created == (2, 1)
    assert loaded.generations[0].revs == live.generations[0].revs


def test_restore_all_equals_restore_one_by_one() -> None:
    records = [
        (b"a", (2, 0), False, 2, 1),
        (b"b", (3, 0), True, 0, 0),  # a tombstone first: compaction kept only it
        (b"a", (4, 1), False, 2, 2),
        (b"b", (5, 0), False, 5, 1),
        (b"a", (6, 0), True, 0, 0),
    ]

    recs = [(k, Revision(*r), t, c, v) for k, r, t, c, v in records]
    one, bulk, into_nonempty = TreeIndex(), TreeIndex(), TreeIndex()
    for rec in recs:
        one.restore(*rec)
    bulk.restore_all(recs)
    into_nonempty.restore(*recs[0])
    into_nonempty.restore_all(recs[1:])
    for ti in (bulk, into_nonempty):
        assert repr(list(ti._tree.items())) == repr(list(one._tree.items()))
        assert list(ti._tree) == [b"a", b"b"]


def test_decode_index_fields() -> None:
    raw = encode_kv(KeyValue(b"key", 5, 9, 3, b"value", 77))
    assert decode_index_fields(raw) == (b"key", 5, 3, 77)
    assert decode_index_fields(encode_kv(KeyValue(b"gone"))) == (b"gone", 0, 0, 0)
    with pytest.raises(KVCodecError):
        decode_index_fields(b"\x0a\x05ab")


def test_long_lived_objects_pause_the_collector_and_freeze_many() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with _long_lived_objects(freeze_at=1000):
            assert not gc.isenabled()
            few = [[i] for i in range(10)]
        assert gc.isenabled() and gc.get_freeze_count() == frozen
        with _long_lived_objects(freeze_at=1000):
            many = [[i] for i in range(5000)]
        assert gc.isenabled() and gc.get_freeze_count() > frozen
        assert len(few) + len(many) == 5010
    finally:
        gc.unfreeze()


def test_a_rebuild_lets_go_of_the_old_index_before_building_the_new(
    member: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    kv = member.store
    for key in KEYS:
        kv.put(key, b"v")
    old = weakref.ref(kv.index)
    alive_while_building: list[bool] = []
    restore_all = TreeIndex.restore_all

    def watching(index: TreeIndex, records: object) -> None:
        alive_while_building.append(old() is not None)
        restore_all(index, records)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeIndex, "restore_all", watching)
    kv.rebuild()
    assert alive_while_building == [False]  # freed first: never two indexes at once
    assert len(kv.index) == len(KEYS)


def test_a_released_store_holds_no_index(member: Member) -> None:
    kv = member.store
    kv.put(b"a", b"1")
    kv.release()  # before a replacement store is built (a snapshot install)
    assert len(kv.index) == 0
