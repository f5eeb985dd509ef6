"""Put, range and delete: revisions, versions, generations, range forms, options, errors."""

from __future__ import annotations

import pytest

from cluster.mvcc import (
    EmptyKeyError,
    FutureRevisionError,
    InvalidSortOptionError,
    KeyNotFoundError,
    KeyValue,
    KVStore,
    LeaseNotFound,
    LeaseProvidedError,
    Revision,
    SortOrder,
    SortTarget,
    ValueProvidedError,
)

from .conftest import Member

ALL = (b"\x00", b"\x00")  # key and range_end for every key


def keys(kv: KVStore, key: bytes = b"\x00", end: bytes = b"\x00", **opts: object) -> list[bytes]:
    return [x.key for x in kv.range(key, end, **opts).kvs]  # type: ignore[arg-type]


def test_empty_store_is_at_revision_one(kv: KVStore) -> None:
    assert (kv.current_revision, kv.compact_revision) == (1, -1)
    r = kv.range(*ALL)
    assert (r.kvs, r.count, r.more, r.revision) == ([], 0, False, 1)


def test_versions_and_revisions_across_delete_and_recreate(kv: KVStore) -> None:
    assert kv.put(b"foo", b"v1").revision == 2
    assert kv.put(b"foo", b"v2").revision == 3
    assert kv.range(b"foo").kvs == [KeyValue(b"foo", 2, 3, 2, b"v2")]
    d = kv.delete_range(b"foo")
    assert (d.deleted, d.revision) == (1, 4)
    assert kv.range(b"foo").kvs == []
    assert kv.put(b"foo", b"v3").revision == 5  # a new generation
    assert kv.range(b"foo").kvs == [KeyValue(b"foo", 5, 5, 1, b"v3")]
    # history: each revision still reads as it was
    assert kv.range(b"foo", revision=2).kvs == [KeyValue(b"foo", 2, 2, 1, b"v1")]
    assert kv.range(b"foo", revision=3).kvs == [KeyValue(b"foo", 2, 3, 2, b"v2")]
    assert kv.range(b"foo", revision=4).kvs == []
    assert kv.range(b"foo", revision=1).kvs == []
    assert kv.range(b"foo", revision=-3).kvs[0].value == b"v3"  # <= 0 reads now
    assert kv.range(b"foo", revision=4).revision == 5  # the store's revision, not the one read
    with pytest.raises(
        FutureRevisionError, match=r"^mvcc: required revision is a future revision$"
    ):
        kv.range(b"foo", revision=6)


def test_put_options(kv: KVStore) -> None:
    kv.put(b"k", b"v", lease=7)
    r = kv.put(b"k", b"w", prev_kv=True)
    assert r.prev_kv == KeyValue(b"k", 2, 2, 1, b"v", 7)
    assert kv.range(b"k").kvs[0].lease == 0  # a put without lease detaches it
    kv.put(b"k", lease=9, ignore_value=True)
    assert kv.range(b"k").kvs == [KeyValue(b"k", 2, 4, 3, b"w", 9)]
    kv.put(b"k", b"x", ignore_lease=True)
    assert kv.range(b"k").kvs == [KeyValue(b"k", 2, 5, 4, b"x", 9)]
    assert kv.put(b"new", b"1", prev_kv=True).prev_kv is None
    with pytest.raises(KeyNotFoundError, match=r"^etcdserver: key not found$"):
        kv.put(b"missing", ignore_value=True)
    with pytest.raises(KeyNotFoundError):
        kv.put(b"missing", ignore_lease=True)
    with pytest.raises(ValueProvidedError, match=r"^etcdserver: value is provided$"):
        kv.put(b"k", b"v", ignore_value=True)
    with pytest.raises(LeaseProvidedError, match=r"^etcdserver: lease is provided$"):
        kv.put(b"k", lease=1, ignore_lease=True)
    assert kv.current_revision == 6


def test_lease_hook(member: Member) -> None:
    kv = KVStore(member.backend, lease_exists=lambda lease: lease == 5)
    kv.put(b"a", lease=5)
    with pytest.raises(LeaseNotFound, match=r"^etcdserver: requested lease not found$"):
        kv.put(b"a", lease=6)
    assert kv.current_revision == 2


def test_empty_key_is_refused(kv: KVStore) -> None:
    for call in (
        lambda: kv.put(b"", b"v"),
        lambda: kv.range(b""),
        lambda: kv.range(b"", b"\x00"),
        lambda: kv.delete_range(b"", b"\x00"),
    ):
        with pytest.raises(EmptyKeyError, match=r"^etcdserver: key is not provided$"):
            call()
    assert kv.current_revision == 1


@pytest.fixture
def abc(kv: KVStore) -> KVStore:
    for key in (b"a", b"ab", b"abc", b"abd", b"b", b"c", b"\xff"):
        kv.put(key, key.upper())
    return kv


def test_range_end_forms(abc: KVStore) -> None:
    kv = abc
    assert keys(kv, b"ab", b"") == [b"ab"]  # empty range_end: the key alone
    assert keys(kv, b"zz", b"") == []
    assert keys(kv, b"ab", b"ac") == [b"ab", b"abc", b"abd"]  # a prefix
    assert keys(kv, b"abc", b"b") == [b"abc", b"abd"]  # [key, range_end)
    assert keys(kv, b"b", b"\x00") == [b"b", b"c", b"\xff"]  # from key on
    assert keys(kv) == [b"a", b"ab", b"abc", b"abd", b"b", b"c", b"\xff"]
    assert keys(kv, b"c", b"a") == []  # range_end before key


def test_limit_more_count(abc: KVStore) -> None:
    kv = abc
    r = kv.range(*ALL, limit=3)
    assert [x.key for x in r.kvs] == [b"a", b"ab", b"abc"]
    assert (r.count, r.more) == (7, True)
    r = kv.range(*ALL, limit=7)
    assert (len(r.kvs), r.count, r.more) == (7, 7, False)
    r = kv.range(*ALL, limit=-1)
    assert (len(r.kvs), r.more) == (7, False)
    r = kv.range(b"a", b"b", count_only=True)
    assert (r.kvs, r.count, r.more) == ([], 4, False)
    r = kv.range(b"a", b"b", count_only=True, limit=1)
    assert (r.kvs, r.count, r.more) == ([], 4, False)
    kv.delete_range(b"ab", b"ac")
    assert kv.range(*ALL, count_only=True).count == 4
    assert kv.range(*ALL, count_only=True, revision=8).count == 7


def test_keys_only(abc: KVStore) -> None:
    r = abc.range(b"a", b"b", keys_only=True)
    assert [(x.key, x.value, x.version) for x in r.kvs] == [
        (b"a", b"", 1),
        (b"ab", b"", 1),
        (b"abc", b"", 1),
        (b"abd", b"", 1),
    ]


@pytest.fixture
def sortable(kv: KVStore) -> KVStore:
    # key  create  mod  version  value
    # a    2       7    3        z
    # b    3       3    1        x
    # c    4       6    2        y
    kv.put(b"a", b"q")
    kv.put(b"b", b"x")
    kv.put(b"c", b"q")
    kv.put(b"a", b"r")
    kv.put(b"c", b"y")
    kv.put(b"a", b"z")
    return kv


@pytest.mark.parametrize(
    ("target", "ascending"),
    [
        (SortTarget.KEY, [b"a", b"b", b"c"]),
        (SortTarget.VERSION, [b"b", b"c", b"a"]),
        (SortTarget.CREATE, [b"a", b"b", b"c"]),
        (SortTarget.MOD, [b"b", b"c", b"a"]),
        (SortTarget.VALUE, [b"b", b"c", b"a"]),
    ],
)
def test_sort_targets_and_orders(
    sortable: KVStore, target: SortTarget, ascending: list[bytes]
) -> None:
    kv = sortable
    assert keys(kv, sort_target=target, sort_order=SortOrder.ASCEND) == ascending
    assert keys(kv, sort_target=target, sort_order=SortOrder.DESCEND) == ascending[::-1]
    # NONE sorts ascending by a target other than the key; by key it is key order anyway
    assert keys(kv, sort_target=target) == ascending
    r = kv.range(*ALL, sort_target=target, sort_order=SortOrder.DESCEND, limit=2)
    assert ([x.key for x in r.kvs], r.count, r.more) == (ascending[::-1][:2], 3, True)


def test_sort_ties_keep_key_order(kv: KVStore) -> None:
    for key in (b"c", b"a", b"b"):
        kv.put(key, b"same")
    assert keys(kv, sort_target=SortTarget.VALUE) == [b"a", b"b", b"c"]
    assert keys(kv, sort_target=SortTarget.VERSION, sort_order=SortOrder.DESCEND) == [
        b"a",
        b"b",
        b"c",
    ]


def test_invalid_sort_option(kv: KVStore) -> None:
    with pytest.raises(InvalidSortOptionError, match=r"^etcdserver: invalid sort option$"):
        kv.range(b"a", sort_order=3)
    with pytest.raises(InvalidSortOptionError):
        kv.range(b"a", sort_target=9)


def test_min_max_filters(sortable: KVStore) -> None:
    kv = sortable
    assert keys(kv, min_mod_revision=6) == [b"a", b"c"]
    assert keys(kv, max_mod_revision=6) == [b"b", b"c"]
    assert keys(kv, min_create_revision=3) == [b"b", b"c"]
    assert keys(kv, max_create_revision=3) == [b"a", b"b"]
    assert keys(kv, min_mod_revision=4, max_create_revision=3) == [b"a"]
    r = kv.range(*ALL, min_mod_revision=4, limit=1)
    # count is before the filters (as etcd); limit applies after them
    assert ([x.key for x in r.kvs], r.count, r.more) == ([b"a"], 3, True)
    assert keys(kv, max_mod_revision=5, revision=5) == [b"a", b"b", b"c"]


def test_delete_range(abc: KVStore) -> None:
    kv = abc
    rev = kv.current_revision
    d = kv.delete_range(b"nothing")
    assert (d.deleted, d.revision, d.prev_kvs, d.changes) == (0, rev, [], [])
    assert kv.current_revision == rev  # deleting nothing is not a write
    d = kv.delete_range(b"ab", b"ac", prev_kv=True)
    assert (d.deleted, d.revision) == (3, rev + 1)
    assert [(x.key, x.value) for x in d.prev_kvs] == [
        (b"ab", b"AB"),
        (b"abc", b"ABC"),
        (b"abd", b"ABD"),
    ]
    assert d.changes == [KeyValue(k, mod_revision=rev + 1) for k in (b"ab", b"abc", b"abd")]
    assert keys(kv) == [b"a", b"b", b"c", b"\xff"]
    d = kv.delete_range(b"b", b"\x00")
    assert (d.deleted, d.prev_kvs) == (3, [])
    assert keys(kv) == [b"a"]
    assert kv.delete_range(b"a").deleted == 1
    assert kv.range(*ALL).kvs == []
    assert len(keys(kv, revision=rev)) == 7


def test_changes_and_sub_revisions_in_the_key_bucket(member: Member, kv: KVStore) -> None:
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.delete_range(b"a", b"c")
    rows = member.backend.batch().range("key", b"", b"\xff" * 18)
    assert [k for k, _ in rows] == [
        Revision(2).to_bytes(),
        Revision(3).to_bytes(),
        Revision(4, 0).to_bytes(tombstone=True),
        Revision(4, 1).to_bytes(tombstone=True),
    ]


def test_writes_stay_in_the_batch_and_reads_see_them(member: Member, kv: KVStore) -> None:
    kv.put(b"a", b"1")
    assert member.backend.batch().active
    assert member.backend.range("key", b"", b"\xff" * 18) == []  # nothing committed
    assert kv.range(b"a").kvs[0].value == b"1"
    member.backend.commit()
    assert not member.backend.batch().active
    assert kv.range(b"a").kvs[0].value == b"1"  # via a read transaction now
    assert len(member.backend.range("key", b"", b"\xff" * 18)) == 1
    assert member.backend.consistent_index() == (0, 0)  # the applier's business
