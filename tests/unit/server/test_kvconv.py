"""kvconv against a real KVStore on a temporary backend: conversions, validation, errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster.mvcc import CorruptStoreError, KeyValue, KVStore
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2
from cluster.server import kvconv
from cluster.server.kvconv import RequestError
from cluster.storage.backend import Backend

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    be = Backend(str(tmp_path / "member" / "snap" / "db"), quota_bytes=64 * 1024 * 1024)
    yield be
    be.close()


@pytest.fixture
def store(backend: Backend) -> KVStore:
    return KVStore(backend, max_txn_ops=8)


def put(store: KVStore, key: bytes, value: bytes, **kw: object) -> pb.PutResponse:
    return kvconv.apply_put(store, pb.PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]


def rng(store: KVStore, key: bytes, **kw: object) -> pb.RangeResponse:
    return kvconv.do_range(store, pb.RangeRequest(key=key, **kw))  # type: ignore[arg-type]


def kv(
    key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0
) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=key,
        value=value,
        create_revision=create,
        mod_revision=mod,
        version=version,
        lease=lease,
    )


def put_op(key: bytes, value: bytes = b"", **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]


def get_op(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))  # type: ignore[arg-type]


def del_op(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, **kw))  # type: ignore[arg-type]


def txn_op(**kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(**kw))  # type: ignore[arg-type]


@contextlib.contextmanager
def raises(code: grpc.StatusCode, message: str) -> Iterator[pytest.ExceptionInfo[RequestError]]:
    """Expect a RequestError with exactly this code and message."""
    with pytest.raises(RequestError) as info:
        yield info
    assert (info.value.code, info.value.message) == (code, message)


# -- put / range / delete ----------------------------------------------------------------------


def test_put_and_range_convert_every_field(store: KVStore) -> None:
    first = put(store, b"a", b"1")
    assert first == pb.PutResponse(header=pb.ResponseHeader(revision=2))
    assert not first.HasField("prev_kv")
    second = put(store, b"a", b"2", prev_kv=True, lease=0)
    assert second.header.revision == 3
    assert second.prev_kv == kv(b"a", b"1", 2, 2, 1)
    put(store, b"b", b"3")
    got = rng(store, b"a", range_end=b"c")
    assert got == pb.RangeResponse(
        header=pb.ResponseHeader(revision=4),
        kvs=[kv(b"a", b"2", 2, 3, 2), kv(b"b", b"3", 4, 4, 1)],
        count=2,
    )
    assert rng(store, b"a", revision=2).kvs == [kv(b"a", b"1", 2, 2, 1)]
    limited = rng(store, b"a", range_end=b"\0", limit=1)
    assert (len(limited.kvs), limited.more, limited.count) == (1, True, 2)
    desc = rng(
        store,
        b"a",
        range_end=b"\0",
        sort_order=pb.RangeRequest.DESCEND,
        sort_target=pb.RangeRequest.MOD,
    )
    assert [k.key for k in desc.kvs] == [b"b", b"a"]
    assert rng(store, b"a", range_end=b"\0", keys_only=True).kvs[0].value == b""
    counted = rng(store, b"a", range_end=b"\0", count_only=True)
    assert (list(counted.kvs), counted.count) == ([], 2)
    filtered = rng(store, b"a", range_end=b"\0", min_create_revision=3)
    assert [k.key for k in filtered.kvs] == [b"b"]


def test_put_keeps_lease_and_value_when_asked(backend: Backend) -> None:
    store = KVStore(backend, lease_exists=lambda lease: lease == 7)
    put(store, b"k", b"v", lease=7)
    resp = put(store, b"k", b"", ignore_value=True, ignore_lease=True, prev_kv=True)
    assert resp.prev_kv.lease == 7
    assert rng(store, b"k").kvs == [kv(b"k", b"v", 2, 3, 2, lease=7)]
    put(store, b"k", b"w", ignore_lease=True)
    assert rng(store, b"k").kvs == [kv(b"k", b"w", 2, 4, 3, lease=7)]
    put(store, b"k", b"", ignore_value=True)  # no ignore_lease: the lease goes
    assert rng(store, b"k").kvs == [kv(b"k", b"w", 2, 5, 4)]
    with raises(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found") as err:
        put(store, b"k", b"v", lease=8)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with raises(INVALID, "etcdserver: key not found") as err:
        put(store, b"missing", b"", ignore_lease=True)
    assert err.value.code == INVALID


def test_delete_range_with_prev_kvs(store: KVStore) -> None:
    for key in (b"a", b"b", b"c"):
        put(store, key, key.upper())
    changes: list[KeyValue] = []
    resp = kvconv.apply_delete_range(
        store, pb.DeleteRangeRequest(key=b"a", range_end=b"c", prev_kv=True), changes=changes
    )
    assert resp == pb.DeleteRangeResponse(
        header=pb.ResponseHeader(revision=5),
        deleted=2,
        prev_kvs=[kv(b"a", b"A", 2, 2, 1), kv(b"b", b"B", 3, 3, 1)],
    )
    assert changes == [KeyValue(b"a", mod_revision=5), KeyValue(b"b", mod_revision=5)]
    nothing = kvconv.apply_delete_range(store, pb.DeleteRangeRequest(key=b"zzz"))
    assert nothing == pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=5))
    assert [k.key for k in rng(store, b"\0", range_end=b"\0").kvs] == [b"c"]


def test_changes_are_reported_for_every_write(store: KVStore) -> None:
    changes: list[KeyValue] = []
    kvconv.apply_request(store, pb.PutRequest(key=b"a", value=b"1"), changes=changes)
    kvconv.apply_request(
        store, pb.TxnRequest(success=[put_op(b"b", b"2"), del_op(b"a")]), changes=changes
    )
    assert changes == [
        KeyValue(b"a", 2, 2, 1, b"1"),
        KeyValue(b"b", 3, 3, 1, b"2"),
        KeyValue(b"a", mod_revision=3),
    ]


def test_range_errors_carry_etcd_codes_and_messages(store: KVStore) -> None:
    for i in range(4):
        put(store, b"k", b"%d" % i)
    with raises(OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision") as e:
        rng(store, b"k", revision=6)
    assert e.value.code == OUT_OF_RANGE
    kvconv.apply_compaction(store, pb.CompactionRequest(revision=4))
    with raises(OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted") as e:
        rng(store, b"k", revision=3)
    assert e.value.code == OUT_OF_RANGE
    assert rng(store, b"k", revision=4).kvs[0].value == b"2"
    with raises(INVALID, "etcdserver: key is not provided"):
        rng(store, b"")
    with raises(INVALID, "etcdserver: invalid sort option"):
        rng(store, b"k", sort_order=7)


def test_compaction(store: KVStore) -> None:
    for i in range(3):
        put(store, b"k", b"%d" % i)
    resp = kvconv.apply_compaction(store, pb.CompactionRequest(revision=3, physical=True))
    assert resp == pb.CompactionResponse(header=pb.ResponseHeader(revision=4))
    assert store.compact_revision == 3
    with raises(OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"):
        kvconv.apply_compaction(store, pb.CompactionRequest(revision=3))
    with raises(OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision") as e:
        kvconv.apply_compaction(store, pb.CompactionRequest(revision=5))
    assert e.value == RequestError(*kvconv.ERR_FUTURE_REV)
    assert store.compact_revision == 3


# -- txn ---------------------------------------------------------------------------------------


def test_txn_branches_and_response_ops(store: KVStore) -> None:
    put(store, b"a", b"1")
    put(store, b"gone", b"x")
    req = pb.TxnRequest(
        compare=[
            pb.Compare(key=b"a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"1")
        ],
        success=[
            put_op(b"b", b"2", prev_kv=True),
            get_op(b"a", range_end=b"c"),
            del_op(b"gone", prev_kv=True),
        ],
        failure=[put_op(b"b", b"never")],
    )
    resp = kvconv.apply_txn(store, req)
    h4 = pb.ResponseHeader(revision=4)
    assert resp == pb.TxnResponse(
        header=h4,
        succeeded=True,
        responses=[
            pb.ResponseOp(response_put=pb.PutResponse(header=h4)),
            pb.ResponseOp(
                response_range=pb.RangeResponse(
                    header=h4,
                    kvs=[kv(b"a", b"1", 2, 2, 1), kv(b"b", b"2", 4, 4, 1)],
                    count=2,
                )
            ),
            pb.ResponseOp(
                response_delete_range=pb.DeleteRangeResponse(
                    header=h4,
                    deleted=1,
                    prev_kvs=[kv(b"gone", b"x", 3, 3, 1)],
                )
            ),
        ],
    )
    again = kvconv.apply_txn(store, req)  # "a" still "1": success again, "gone" now missing
    assert again.succeeded and again.responses[2].response_delete_range.deleted == 0
    failing = pb.TxnRequest(
        compare=[
            pb.Compare(key=b"a", target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=5)
        ],
        success=[put_op(b"b", b"never")],
        failure=[put_op(b"c", b"3")],
    )
    resp = kvconv.apply_txn(store, failing)
    assert not resp.succeeded
    assert resp.responses[0].WhichOneof("response") == "response_put"
    assert rng(store, b"c").kvs[0].value == b"3"


def test_nested_txn(store: KVStore) -> None:
    put(store, b"a", b"1")
    inner_ok = pb.TxnRequest(
        compare=[
            pb.Compare(key=b"a", target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=2)
        ],
        success=[put_op(b"x", b"inner"), get_op(b"a")],
    )
    inner_fail = pb.TxnRequest(
        compare=[
            pb.Compare(
                key=b"missing",
                target=pb.Compare.CREATE,
                result=pb.Compare.GREATER,
                create_revision=0,
            )
        ],
        success=[put_op(b"y", b"never")],
    )
    req = pb.TxnRequest(
        success=[
            pb.RequestOp(request_txn=inner_ok),
            pb.RequestOp(request_txn=inner_fail),
            get_op(b"x"),
        ]
    )
    resp = kvconv.apply_txn(store, req)
    h3 = pb.ResponseHeader(revision=3)
    assert resp == pb.TxnResponse(
        header=h3,
        succeeded=True,
        responses=[
            pb.ResponseOp(
                response_txn=pb.TxnResponse(
                    header=pb.ResponseHeader(),  # etcd leaves a nested txn's header empty
                    succeeded=True,
                    responses=[
                        pb.ResponseOp(response_put=pb.PutResponse(header=h3)),
                        pb.ResponseOp(
                            response_range=pb.RangeResponse(
                                header=h3,
                                kvs=[kv(b"a", b"1", 2, 2, 1)],
                                count=1,
                            )
                        ),
                    ],
                )
            ),
            pb.ResponseOp(response_txn=pb.TxnResponse(header=pb.ResponseHeader())),
            pb.ResponseOp(
                response_range=pb.RangeResponse(
                    header=h3,
                    kvs=[kv(b"x", b"inner", 3, 3, 1)],
                    count=1,
                )
            ),
        ],
    )
    # The empty failed nested txn is still there, as a present (empty) oneof.
    assert resp.responses[1].WhichOneof("response") == "response_txn"
    assert resp.responses[1].response_txn.HasField("header")


def test_compare_targets_and_mismatched_oneof(backend: Backend) -> None:
    store = KVStore(backend, lease_exists=lambda lease: True)
    put(store, b"k", b"v", lease=9)

    def holds(**fields: object) -> bool:
        cmp = pb.Compare(key=b"k", **fields)  # type: ignore[arg-type]
        return kvconv.apply_txn(store, pb.TxnRequest(compare=[cmp])).succeeded

    eq = pb.Compare.EQUAL
    assert holds(target=pb.Compare.VALUE, result=eq, value=b"v")
    assert holds(target=pb.Compare.VERSION, result=eq, version=1)
    assert holds(target=pb.Compare.CREATE, result=eq, create_revision=2)
    assert holds(target=pb.Compare.MOD, result=pb.Compare.LESS, mod_revision=3)
    assert holds(target=pb.Compare.LEASE, result=eq, lease=9)
    assert holds(target=pb.Compare.VALUE, result=pb.Compare.NOT_EQUAL, value=b"w")
    # The target names the field: another oneof member reads as zero, as in etcd.
    assert holds(target=pb.Compare.VERSION, result=pb.Compare.GREATER, mod_revision=5)
    assert not holds(target=pb.Compare.VERSION, result=eq, mod_revision=1)
    # A range compare holds only if it holds for every key in it.
    put(store, b"k2", b"v")
    assert holds(target=pb.Compare.VALUE, result=eq, value=b"v", range_end=b"k3")
    put(store, b"k3", b"other")
    assert not holds(target=pb.Compare.VALUE, result=eq, value=b"v", range_end=b"k4")
    # A missing key: fields compare as 0, a value never matches.
    assert kvconv.apply_txn(
        store,
        pb.TxnRequest(
            compare=[pb.Compare(key=b"nope", target=pb.Compare.VERSION, result=eq, version=0)]
        ),
    ).succeeded
    assert not kvconv.apply_txn(
        store,
        pb.TxnRequest(
            compare=[pb.Compare(key=b"nope", target=pb.Compare.VALUE, result=eq, value=b"")]
        ),
    ).succeeded


def test_read_only_txn_changes_nothing(store: KVStore) -> None:
    put(store, b"a", b"1")
    req = pb.TxnRequest(success=[get_op(b"a")], failure=[get_op(b"b")])
    assert kvconv.is_txn_read_only(req)
    changes: list[KeyValue] = []
    resp = kvconv.apply_txn(store, req, changes=changes)
    assert resp.header.revision == 2 and store.current_revision == 2 and changes == []
    assert resp.responses[0].response_range.kvs == [kv(b"a", b"1", 2, 2, 1)]
    assert not kvconv.is_txn_read_only(pb.TxnRequest(failure=[put_op(b"a")]))
    assert not kvconv.is_txn_read_only(pb.TxnRequest(success=[pb.RequestOp()]))
    assert kvconv.is_txn_read_only(pb.TxnRequest())


def test_txn_errors_at_apply_leave_the_store_unchanged(store: KVStore) -> None:
    put(store, b"a", b"1")
    req = pb.TxnRequest(success=[put_op(b"b", b"2"), get_op(b"a", revision=50)])
    with raises(OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"):
        kvconv.apply_txn(store, req)
    req = pb.TxnRequest(success=[put_op(b"b", b"2"), put_op(b"c", ignore_value=True)])
    with raises(INVALID, "etcdserver: key not found"):
        kvconv.apply_txn(store, req)
    assert store.current_revision == 2
    assert rng(store, b"b").count == 0


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.PutRequest(value=b"v"), "etcdserver: key is not provided"),
        (pb.PutRequest(key=b"k", value=b"v", ignore_value=True), "etcdserver: value is provided"),
        (pb.PutRequest(key=b"k", lease=1, ignore_lease=True), "etcdserver: lease is provided"),
        (pb.RangeRequest(range_end=b"z"), "etcdserver: key is not provided"),
        (
            pb.RangeRequest(key=b"k", sort_target=pb.RangeRequest.SortTarget.ValueType(9)),
            "etcdserver: invalid sort option",
        ),
        (pb.DeleteRangeRequest(range_end=b"z"), "etcdserver: key is not provided"),
        (pb.TxnRequest(compare=[pb.Compare(version=1)]), "etcdserver: key is not provided"),
        (pb.TxnRequest(failure=[put_op(b"")]), "etcdserver: key is not provided"),
        (pb.TxnRequest(success=[txn_op(success=[del_op(b"")])]), "etcdserver: key is not provided"),
        (pb.TxnRequest(success=[pb.RequestOp()]), "etcdserver: key not found"),
        (
            pb.TxnRequest(success=[put_op(b"k", b"1"), put_op(b"k", b"2")]),
            "etcdserver: duplicate key given in txn request",
        ),
        (
            pb.TxnRequest(success=[del_op(b"a", range_end=b"z"), put_op(b"k")]),
            "etcdserver: duplicate key given in txn request",
        ),
        (
            pb.TxnRequest(success=[put_op(b"k"), txn_op(failure=[put_op(b"k")])]),
            "etcdserver: duplicate key given in txn request",
        ),
        (
            pb.TxnRequest(success=[put_op(b"k%d" % i) for i in range(9)]),
            "etcdserver: too many operations in txn request",
        ),
        # A nested txn gets what its parent leaves: 8 - 6 = 2 ops.
        (
            pb.TxnRequest(
                success=[*(get_op(b"a") for _ in range(5)), txn_op(success=[get_op(b"a")] * 3)]
            ),
            "etcdserver: too many operations in txn request",
        ),
    ],
)
def test_validate_refuses_with_etcd_messages(request_: kvconv.WriteRequest, message: str) -> None:
    with raises(INVALID, message) as err:
        kvconv.validate(request_, 8)
    assert err.value.code == INVALID


def test_validate_accepts_good_requests() -> None:
    both_branches = pb.TxnRequest(success=[put_op(b"k", b"1")], failure=[put_op(b"k", b"2")])
    nested_budget = pb.TxnRequest(
        success=[*(get_op(b"a") for _ in range(5)), txn_op(success=[get_op(b"a")] * 2)]
    )
    for req in (
        pb.PutRequest(key=b"k"),
        pb.PutRequest(key=b"k", ignore_value=True, ignore_lease=True),
        pb.RangeRequest(key=b"k", sort_order=pb.RangeRequest.DESCEND),
        pb.DeleteRangeRequest(key=b"k", range_end=b"\0"),
        both_branches,
        nested_budget,
        pb.TxnRequest(),
        pb.CompactionRequest(revision=-3),  # judged when applied, as etcd
    ):
        kvconv.validate(req, 8)
    with pytest.raises(TypeError):
        kvconv.validate(pb.LeaseGrantRequest(), 8)  # type: ignore[arg-type]
    # The per-type functions, as the servicer would call them.
    kvconv.validate_put(pb.PutRequest(key=b"k"), 8)
    kvconv.validate_range(pb.RangeRequest(key=b"k"), 8)
    kvconv.validate_delete(pb.DeleteRangeRequest(key=b"k"), 8)
    kvconv.validate_txn(both_branches, 8)
    kvconv.validate_compaction(pb.CompactionRequest(revision=1), 8)


def test_check_size() -> None:
    req = pb.PutRequest(key=b"k", value=b"x" * 100)
    kvconv.check_size(req, req.ByteSize())
    with raises(INVALID, "etcdserver: request is too large") as err:
        kvconv.check_size(req, req.ByteSize() - 1)
    assert err.value.code == INVALID


# -- headers and errors ------------------------------------------------------------------------


def test_fill_header_keeps_a_revision_already_set() -> None:
    resp = pb.PutResponse(header=pb.ResponseHeader(revision=5))
    kvconv.fill_header(resp.header, cluster_id=1, member_id=2, raft_term=3, revision=9)
    assert resp.header == pb.ResponseHeader(cluster_id=1, member_id=2, revision=5, raft_term=3)
    empty = pb.CompactionResponse()
    kvconv.fill_header(empty.header, cluster_id=1, member_id=2, raft_term=3, revision=9)
    assert empty.header.revision == 9


def test_request_error() -> None:
    err = RequestError(*kvconv.ERR_NO_LEADER)
    assert (err.code, err.message, str(err)) == (
        grpc.StatusCode.UNAVAILABLE,
        "etcdserver: no leader",
        "etcdserver: no leader",
    )
    assert err == RequestError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    assert kvconv.ERR_TIMEOUT == (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")


def test_corrupt_store_is_not_a_request_error(
    store: KVStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(*_: object) -> None:
        raise CorruptStoreError("mvcc: revision 3.0 is missing")

    monkeypatch.setattr(store, "range_request", corrupt)
    with pytest.raises(CorruptStoreError):
        rng(store, b"k")
