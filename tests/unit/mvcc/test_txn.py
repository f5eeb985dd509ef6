"""Txn: compares, branches, nesting, one revision per txn, validation that changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cluster.mvcc import (
    CompactedError,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResult,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    KeyNotFoundError,
    KeyValue,
    KVStore,
    LeaseNotFoundError,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
    RequestOp,
    Revision,
    TooManyOpsError,
    TxnRequest,
    TxnResult,
)

from .conftest import Member

EQ, GT, LT, NE = (
    CompareResult.EQUAL,
    CompareResult.GREATER,
    CompareResult.LESS,
    CompareResult.NOT_EQUAL,
)
T = CompareTarget
Put, Del, Get, Txn = PutRequest, DeleteRangeRequest, RangeRequest, TxnRequest


def state(member: Member) -> tuple[int, int, list[KeyValue], list[tuple[bytes, bytes]]]:
    kv = member.store
    rows = member.backend.batch().range("key", b"", b"\xff" * 18)
    return kv.current_revision, kv.compact_revision, kv.range(b"\x00", b"\x00").kvs, rows


@pytest.fixture
def k(kv: KVStore) -> KVStore:
    kv.put(b"k", b"m")  # 2
    kv.put(b"other", b"o")  # 3
    kv.put(b"k", b"m", lease=7)  # 4: k is create 2, mod 4, version 2, value m, lease 7
    return kv


@pytest.mark.parametrize(
    ("target", "below", "equal", "above"),
    [
        (T.VALUE, b"l", b"m", b"n"),
        (T.VERSION, 1, 2, 3),
        (T.CREATE, 1, 2, 3),
        (T.MOD, 3, 4, 5),
        (T.LEASE, 6, 7, 8),
    ],
)
def test_compare_every_target_and_result(
    k: KVStore, target: T, below: bytes | int, equal: bytes | int, above: bytes | int
) -> None:
    want = {
        EQ: (False, True, False),
        NE: (True, False, True),
        GT: (True, False, False),  # the key's field is greater than the operand
        LT: (False, False, True),
    }
    for result, outcomes in want.items():
        for operand, outcome in zip((below, equal, above), outcomes, strict=True):
            r = k.txn([Compare(b"k", target, result, operand)])
            assert r.succeeded is outcome, (target, result, operand)
    assert k.current_revision == 4


def test_compare_missing_key(k: KVStore) -> None:
    def holds(target: T, result: CompareResult, value: bytes | int) -> bool:
        return k.txn([Compare(b"missing", target, result, value)]).succeeded

    assert holds(T.VERSION, EQ, 0)
    assert holds(T.CREATE, EQ, 0)
    assert holds(T.MOD, LT, 1)
    assert holds(T.LEASE, EQ, 0)
    assert not holds(T.VALUE, EQ, b"")  # a missing value never compares
    assert not holds(T.VALUE, NE, b"x")


def test_compare_over_a_range_needs_every_key(kv: KVStore) -> None:
    kv.put(b"p/1", b"a")
    kv.put(b"p/2", b"b")
    assert kv.txn([Compare(b"p/", T.VERSION, EQ, 1, range_end=b"p0")]).succeeded
    assert not kv.txn([Compare(b"p/", T.VALUE, EQ, b"a", range_end=b"p0")]).succeeded
    assert kv.txn([Compare(b"p/", T.CREATE, GT, 0, range_end=b"\x00")]).succeeded
    assert not kv.txn([Compare(b"q/", T.VALUE, EQ, b"", range_end=b"q0")]).succeeded


def test_all_compares_must_hold_and_wrong_operand_kind_is_zero(k: KVStore) -> None:
    assert k.txn([Compare(b"k", T.VERSION, EQ, 2), Compare(b"other", T.VALUE, EQ, b"o")]).succeeded
    assert not k.txn(
        [Compare(b"k", T.VERSION, EQ, 2), Compare(b"other", T.VALUE, EQ, b"x")]
    ).succeeded
    assert k.txn([Compare(b"k", T.VERSION, GT, b"nonsense")]).succeeded  # operand read as 0
    assert k.txn([Compare(b"k", T.VALUE, GT, 5)]).succeeded  # operand read as b""


def test_branches_run_in_one_revision(member: Member, k: KVStore) -> None:
    r = k.txn(
        [Compare(b"k", T.VALUE, EQ, b"m")],
        [
            Put(b"a", b"1"),
            Get(b"a"),
            Put(b"b", b"2", prev_kv=True),
            Del(b"other", prev_kv=True),
            Get(b"\x00", b"\x00"),
        ],
        [Put(b"never", b"x")],
    )
    assert r.succeeded and r.revision == 5 and k.current_revision == 5
    put_a, get_a, put_b, del_other, get_all = r.responses
    assert isinstance(put_a, PutResult) and put_a.revision == 5
    assert isinstance(get_a, RangeResult)
    assert get_a.kvs == [KeyValue(b"a", 5, 5, 1, b"1")] and get_a.revision == 5  # sees the put
    assert isinstance(put_b, PutResult) and put_b.prev_kv is None
    assert isinstance(del_other, DeleteRangeResult)
    assert (del_other.deleted, del_other.revision) == (1, 5)
    assert del_other.prev_kvs[0].value == b"o"
    assert isinstance(get_all, RangeResult)
    assert [x.key for x in get_all.kvs] == [b"a", b"b", b"k"]
    assert [x.key for x in r.changes] == [b"a", b"b", b"other"]
    assert r.changes[2] == KeyValue(b"other", mod_revision=5)
    rows = [
        key for key, _ in member.backend.batch().range("key", Revision(5).to_bytes(), b"\xff" * 18)
    ]
    assert rows == [
        Revision(5, 0).to_bytes(),
        Revision(5, 1).to_bytes(),
        Revision(5, 2).to_bytes(True),
    ]
    assert k.range(b"never").kvs == []
    # the failure branch
    r = k.txn([Compare(b"k", T.VALUE, EQ, b"nope")], [Put(b"never", b"x")], [Put(b"else", b"y")])
    assert not r.succeeded and r.revision == 6
    assert k.range(b"never").count == 0 and k.range(b"else").count == 1


def test_txns_that_change_nothing_keep_the_revision(k: KVStore) -> None:
    r = k.txn([], [Get(b"k"), Get(b"other")])
    assert r.revision == 4 and r.changes == [] and k.current_revision == 4
    r = k.txn([], [Del(b"missing"), Get(b"k")])  # a write txn that wrote nothing
    assert r.revision == 4 and k.current_revision == 4
    delete = r.responses[0]
    assert isinstance(delete, DeleteRangeResult) and (delete.deleted, delete.revision) == (0, 4)
    assert k.txn().revision == 4  # the empty txn
    r = k.txn([], [Put(b"x", b"1"), Put(b"y", b"2"), Put(b"z", b"3")])
    assert r.revision == 5 and k.current_revision == 5


def test_nested_txn(k: KVStore) -> None:
    r = k.txn(
        [],
        [
            Put(b"k", b"changed"),
            # nested compares see the store before the txn: k is still "m"
            Txn(
                [Compare(b"k", T.VALUE, EQ, b"m")],
                [Put(b"n1", b"yes"), Get(b"k")],
                [Put(b"n1", b"no")],
            ),
            Txn(
                [Compare(b"k", T.VALUE, EQ, b"changed")], [Put(b"n2", b"yes")], [Put(b"n2", b"no")]
            ),
        ],
    )
    assert r.revision == 5
    _, inner1, inner2 = r.responses
    assert isinstance(inner1, TxnResult) and isinstance(inner2, TxnResult)
    assert inner1.succeeded and not inner2.succeeded
    assert inner1.revision == 0  # etcd leaves a nested txn's header empty
    got = inner1.responses[1]
    assert isinstance(got, RangeResult) and got.kvs[0].value == b"changed"
    assert k.range(b"n1").kvs[0].value == b"yes"
    assert k.range(b"n2").kvs[0].value == b"no"
    assert k.range(b"n1").kvs[0].mod_revision == k.range(b"k").kvs[0].mod_revision == 5


@pytest.mark.parametrize(
    "ops",
    [
        [Put(b"a"), Put(b"a")],
        [Put(b"a"), Del(b"a")],
        [Del(b"a"), Put(b"a")],
        [Put(b"ab"), Del(b"a", b"b")],
        [Put(b"ab"), Del(b"a", b"\x00")],  # etcd misses this one: a \0 end is not infinity there
        [Put(b"a"), Txn([], [Put(b"a")])],
        [Txn([], [Put(b"a")]), Put(b"a")],
        [Txn([], [Put(b"a")]), Txn([], [], [Put(b"a")])],
        [Txn([], [Del(b"a")]), Put(b"a")],
        [Del(b"a"), Txn([], [], [Put(b"a")])],
        [Txn([], [Del(b"a")]), Txn([], [Put(b"a")])],
        [Txn([], [Txn([], [Put(b"a")]), Put(b"a")])],
    ],
)
def test_duplicate_keys_in_a_branch(member: Member, k: KVStore, ops: list[object]) -> None:
    before = state(member)
    for success, failure in ((ops, []), ([], ops)):
        with pytest.raises(
            DuplicateKeyError, match=r"^etcdserver: duplicate key given in txn request$"
        ):
            k.txn([], success, failure)  # type: ignore[arg-type]
    assert state(member) == before


@pytest.mark.parametrize(
    "ops",
    [
        [Del(b"a"), Del(b"a"), Del(b"a", b"b")],
        [Put(b"a"), Put(b"b"), Get(b"a"), Get(b"a")],
        [Txn([], [Put(b"a")], [Put(b"a")])],  # only one branch runs
        [Txn([], [Put(b"a")]), Txn([], [Del(b"a")])],  # a later sibling's delete: as etcd
    ],
)
def test_not_duplicates(k: KVStore, ops: list[object]) -> None:
    k.txn([], ops)  # type: ignore[arg-type]


def test_too_many_ops(member: Member) -> None:
    kv = KVStore(member.backend, max_txn_ops=3)
    three: list[RequestOp] = [Put(b"a"), Put(b"b"), Put(b"c")]
    kv.txn([Compare(b"a", T.VERSION, EQ, 0)] * 3, three, three)
    cases: list[tuple[list[Compare], list[RequestOp], list[RequestOp]]] = [
        ([], [*three, Put(b"d")], []),
        ([], [], [*three, Get(b"d")]),
        ([Compare(b"a", T.VERSION, EQ, 0)] * 4, [], []),
        # a nested txn may use what its parent leaves: 3 - 1 = 2
        ([], [Txn([], [Put(b"x"), Put(b"y"), Put(b"z")])], []),
    ]
    for compares, success, failure in cases:
        with pytest.raises(
            TooManyOpsError, match=r"^etcdserver: too many operations in txn request$"
        ):
            kv.txn(compares, success, failure)
    kv.txn([], [Txn([], [Put(b"x"), Put(b"y")])], [])
    assert kv.current_revision == 3


def test_failing_requests_change_nothing(member: Member) -> None:
    kv = KVStore(member.backend, lease_exists=lambda lease: lease == 1)
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.put(b"a", b"3")
    kv.compact(3)
    good = Put(b"new", b"x")
    bad: list[tuple[type[Exception], Callable[[], object]]] = [
        (EmptyKeyError, lambda: kv.txn([Compare(b"", T.VERSION, EQ, 0)], [good])),
        (EmptyKeyError, lambda: kv.txn([], [good, Get(b"")])),
        (EmptyKeyError, lambda: kv.txn([], [good], [Del(b"")])),
        (EmptyKeyError, lambda: kv.txn([], [good, Txn([], [Put(b"")])])),
        (KeyNotFoundError, lambda: kv.txn([], [good, None])),  # type: ignore[list-item]
        (LeaseNotFoundError, lambda: kv.txn([], [good, Put(b"c", lease=2)])),
        (LeaseNotFoundError, lambda: kv.txn([], [good, Txn([], [Put(b"c", lease=2)])])),
        (KeyNotFoundError, lambda: kv.txn([], [good, Put(b"zz", ignore_value=True)])),
        (KeyNotFoundError, lambda: kv.txn([], [good, Put(b"zz", ignore_lease=True)])),
        (FutureRevisionError, lambda: kv.txn([], [good, Get(b"a", revision=5)])),
        (CompactedError, lambda: kv.txn([], [good, Get(b"a", revision=2)])),
        (FutureRevisionError, lambda: kv.txn([], [Get(b"a"), Get(b"a", revision=5)])),
        (CompactedError, lambda: kv.txn([], [Get(b"a", revision=2)])),
    ]
    before = state(member)
    for error, call in bad:
        with pytest.raises(error):
            call()
        assert state(member) == before, error
    # checks follow the branch taken: the failure branch's bad lease does not matter
    r = kv.txn([], [good], [Put(b"c", lease=2), Put(b"zz", ignore_value=True)])
    assert r.succeeded and kv.current_revision == 5
    r = kv.txn([], [Put(b"c", lease=1), Put(b"b", ignore_value=True, prev_kv=True)])
    assert kv.range(b"b").kvs[0].value == b"2"
