"""The store against a plain model of etcd's semantics, through restarts (hypothesis).

The model keeps the whole key space as a dict per revision, so every read at
every revision has an obvious answer: random puts, deletes, txns (with
compares, reads and duplicate-key mistakes) and compactions run on both, and
their answers and all readable history must agree, before and after reopening
the backend.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.mvcc import (
    CompactedError,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResult,
    DuplicateKeyError,
    FutureRevisionError,
    KeyValue,
    KVStore,
    MVCCError,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
)

from .conftest import Member

KEYS = [b"a", b"b", b"c", b"d"]
VALUES = [b"", b"x", b"y", b"z"]
T, R = CompareTarget, CompareResult

State = dict[bytes, KeyValue]


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


@dataclass
class Model:
    rev: int = 1
    compacted: int = -1
    states: dict[int, State] = field(default_factory=lambda: {1: {}})

    def at(self, rev: int) -> State:
        if rev > self.rev:
            raise FutureRevisionError()
        if rev <= 0:
            rev = self.rev
        if rev < self.compacted:
            raise CompactedError()
        return self.states[rev]

    def range(self, start: bytes, end: bytes, rev: int = 0) -> list[KeyValue]:
        state = self.at(rev)
        return [state[k] for k in sorted(state) if in_range(k, start, end)]

    def commit(self, work: State, changed: bool) -> None:
        if changed:
            self.rev += 1
            self.states[self.rev] = work

    @staticmethod
    def put(work: State, rev: int, key: bytes, value: bytes, lease: int = 0) -> None:
        old = work.get(key)
        if old is None:
            work[key] = KeyValue(key, rev, rev, 1, value, lease)
        else:
            work[key] = KeyValue(key, old.create_revision, rev, old.version + 1, value, lease)

    @staticmethod
    def delete(work: State, start: bytes, end: bytes) -> int:
        gone = [k for k in work if in_range(k, start, end)]
        for k in gone:
            del work[k]
        return len(gone)

    def compact(self, rev: int) -> None:
        if rev <= self.compacted:
            raise CompactedError()
        if rev > self.rev:
            raise FutureRevisionError()
        self.compacted = rev


def holds(state: State, c: Compare) -> bool:
    kv = state.get(c.key)
    if kv is None:
        if c.target == T.VALUE:
            return False
        kv = KeyValue(c.key)
    have: Any = {
        T.VALUE: kv.value,
        T.VERSION: kv.version,
        T.CREATE: kv.create_revision,
        T.MOD: kv.mod_revision,
        T.LEASE: kv.lease,
    }[T(c.target)]
    cmp: int = (have > c.value) - (have < c.value)
    outcome = {R.EQUAL: cmp == 0, R.NOT_EQUAL: cmp != 0, R.GREATER: cmp > 0, R.LESS: cmp < 0}
    return outcome[R(c.result)]


def duplicate(ops: list[Any]) -> bool:
    puts = [op.key for op in ops if isinstance(op, PutRequest)]
    dels = [op for op in ops if isinstance(op, DeleteRangeRequest)]
    return len(puts) != len(set(puts)) or any(
        in_range(k, d.key, d.range_end) for k in puts for d in dels
    )


key = st.sampled_from(KEYS)
range_end = st.sampled_from([b"", b"", b"\x00", b"b", b"c", b"e"])
value = st.sampled_from(VALUES)
lease = st.sampled_from([0, 0, 3, 5])
put = st.builds(PutRequest, key, value, lease)
delete = st.builds(DeleteRangeRequest, key, range_end)
get = st.builds(RangeRequest, key, range_end)
compare = st.one_of(
    st.builds(Compare, key, st.just(T.VALUE), st.sampled_from(list(R)), value),
    st.builds(
        Compare,
        key,
        st.sampled_from([T.VERSION, T.CREATE, T.MOD, T.LEASE]),
        st.sampled_from(list(R)),
        st.integers(0, 8),
    ),
)
branch = st.lists(st.one_of(put, delete, get), max_size=4)
op = st.one_of(
    st.tuples(st.just("put"), put),
    st.tuples(st.just("put"), put),
    st.tuples(st.just("del"), delete),
    st.tuples(st.just("txn"), st.tuples(st.lists(compare, max_size=2), branch, branch)),
    # revisions to compact at or read at, counted back from the current one
    st.tuples(st.just("compact"), st.integers(-1, 8)),
    st.tuples(st.just("check"), st.integers(-1, 12)),
    st.tuples(st.just("restart"), st.none()),
)


def check_all(model: Model, kv: KVStore) -> None:
    assert (kv.current_revision, kv.compact_revision) == (model.rev, model.compacted)
    for rev in range(max(model.compacted, 1), model.rev + 1):
        for start, end in ((b"\x00", b"\x00"), (b"b", b""), (b"b", b"d")):
            assert kv.range(start, end, revision=rev).kvs == model.range(start, end, rev)


def run_txn(
    model: Model, kv: KVStore, compares: list[Compare], success: list[Any], failure: list[Any]
) -> None:
    if duplicate(success) or duplicate(failure):
        try:
            kv.txn(compares, success, failure)
        except DuplicateKeyError:
            return
        raise AssertionError("duplicate keys accepted")
    state = model.at(0)
    ok = all(holds(state, c) for c in compares)
    result = kv.txn(compares, success, failure)
    assert result.succeeded == ok
    work, rev, changed = dict(state), model.rev + 1, False
    for req, resp in zip(success if ok else failure, result.responses, strict=True):
        if isinstance(req, PutRequest):
            Model.put(work, rev, req.key, req.value, req.lease)
            changed = True
            assert isinstance(resp, PutResult) and resp.revision == rev
        elif isinstance(req, DeleteRangeRequest):
            n = Model.delete(work, req.key, req.range_end)
            changed = changed or n > 0
            assert isinstance(resp, DeleteRangeResult) and resp.deleted == n
        else:
            want = [work[k] for k in sorted(work) if in_range(k, req.key, req.range_end)]
            assert isinstance(resp, RangeResult) and resp.kvs == want
            assert resp.revision == (rev if changed else model.rev)
    model.commit(work, changed)
    assert result.revision == model.rev


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(op, max_size=40))
def test_store_matches_the_model(ops: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        member = Member(tmp + "/db")
        try:
            model = Model()
            for name, arg in ops:
                kv = member.store
                if name == "put":
                    work = dict(model.at(0))
                    Model.put(work, model.rev + 1, arg.key, arg.value, arg.lease)
                    assert kv.put_request(arg).revision == model.rev + 1
                    model.commit(work, True)
                elif name == "del":
                    work = dict(model.at(0))
                    n = Model.delete(work, arg.key, arg.range_end)
                    assert kv.delete_range_request(arg).deleted == n
                    model.commit(work, n > 0)
                elif name == "txn":
                    run_txn(model, kv, *arg)
                elif name in ("compact", "check"):
                    arg = model.rev - arg
                    expected: Any
                    try:
                        if name == "compact":
                            model.compact(arg)
                            expected = None
                        else:
                            expected = model.range(b"\x00", b"\x00", arg)
                    except MVCCError as err:
                        expected = type(err)
                    try:
                        if name == "compact":
                            got: Any = kv.compact(arg) and None
                        else:
                            got = kv.range(b"\x00", b"\x00", revision=arg).kvs
                    except MVCCError as err:
                        got = type(err)
                    assert got == expected
                else:
                    before = kv.hash_kv()
                    kv = member.restart()
                    check_all(model, kv)
                    assert kv.hash_kv() == before
            check_all(model, member.store)
            before = member.store.hash_kv()
            check_all(model, member.restart())
            assert member.store.hash_kv() == before
        finally:
            member.close()
