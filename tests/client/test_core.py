"""The client's server-free parts: ranges, the txn builder, error mapping, the retry policy
and the watch resume bookkeeping."""

from __future__ import annotations

import grpc
import pytest

from cluster.client import (
    CompactedError,
    Compare,
    ConnectionFailedError,
    DeadlineExceededError,
    EtcdError,
    LeaseNotFoundError,
    NoLeaderError,
    Op,
    RequestTimeoutError,
    UnavailableError,
    WatchCanceledError,
    prefix_range_end,
)
from cluster.client._core import Backoff, WatchSpec, WatchState, is_retryable, parse_endpoints
from cluster.client.errors import classify
from cluster.client.txn import key_range, txn_is_read_only, txn_request
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2


def test_prefix_ranges() -> None:
    assert prefix_range_end(b"a") == b"b"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"
    assert key_range("/svc/", prefix=True) == (b"/svc/", b"/svc0")
    assert key_range("", prefix=True) == (b"\0", b"\0")
    assert key_range("a", range_end="c") == (b"a", b"c")
    assert key_range(b"k") == (b"k", b"")
    with pytest.raises(ValueError):
        key_range("a", prefix=True, range_end="b")


def test_compare_builder() -> None:
    c = (Compare.value("k") == "v").pb
    assert (c.target, c.result, c.key, c.value) == (pb.Compare.VALUE, pb.Compare.EQUAL, b"k", b"v")
    c = (Compare.mod_revision("k") < 5).pb
    assert (c.target, c.result, c.mod_revision) == (pb.Compare.MOD, pb.Compare.LESS, 5)
    c = (Compare.version("p/", prefix=True) > 0).pb
    assert (c.result, c.range_end) == (pb.Compare.GREATER, b"p0")
    c = (Compare.create_revision("k") != 0).pb
    assert (c.target, c.result, c.WhichOneof("target_union")) == (
        pb.Compare.CREATE, pb.Compare.NOT_EQUAL, "create_revision",
    )  # fmt: skip
    assert (Compare.lease("k").eq(7)).pb.lease == 7
    with pytest.raises(TypeError):
        Compare.version("k") == "1"  # noqa: B015 - builds (and rejects) a compare
    with pytest.raises(TypeError):
        hash(Compare.value("k"))


def test_txn_read_only_detection() -> None:
    ro = txn_request([], [Op.get("a"), Op.txn([], [Op.get("b")])], [Op.get("c")])
    assert txn_is_read_only(ro)
    assert not txn_is_read_only(txn_request([], [Op.get("a")], [Op.put("a", "1")]))
    assert not txn_is_read_only(txn_request([], [Op.txn([], [], [Op.delete("a")])], []))


def test_error_mapping() -> None:
    u = grpc.StatusCode.UNAVAILABLE
    assert classify(u, "etcdserver: no leader") is NoLeaderError
    assert classify(u, "etcdserver: request timed out") is RequestTimeoutError
    assert classify(u, "failed to connect to all addresses; ...") is ConnectionFailedError
    assert classify(u, "etcdserver: not capable") is UnavailableError
    assert classify(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found") is (
        LeaseNotFoundError
    )
    assert classify(grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found") is (
        LeaseNotFoundError
    )
    assert classify(grpc.StatusCode.UNKNOWN, "context deadline exceeded") is DeadlineExceededError
    assert classify(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster") is EtcdError


def test_retry_policy() -> None:
    refused = ConnectionFailedError(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    broken = ConnectionFailedError("Socket closed")
    timed_out = RequestTimeoutError("etcdserver: request timed out")
    for err in (refused, broken, timed_out, NoLeaderError("etcdserver: no leader")):
        assert is_retryable(err, idempotent=True)
    assert is_retryable(refused, idempotent=False)
    assert is_retryable(NoLeaderError("etcdserver: no leader"), idempotent=False)
    assert not is_retryable(broken, idempotent=False)  # may have been applied
    assert not is_retryable(timed_out, idempotent=False)
    assert not is_retryable(DeadlineExceededError("deadline"), idempotent=True)
    assert not is_retryable(EtcdError("etcdserver: key is not provided"), idempotent=True)


def test_backoff_tries_every_endpoint_then_waits() -> None:
    b = Backoff(3, budget=5)
    assert [b.next_delay() for _ in range(2)] == [0.0, 0.0]
    third = b.next_delay()
    assert third is not None and 0.03 < third < 0.07
    assert Backoff(1, budget=0).next_delay() is None


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://a:1, b:2") == (["a:1", "b:2"], False)
    assert parse_endpoints(["https://a:1"]) == (["a:1"], True)
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


def _events(*revs: int) -> pb.WatchResponse:
    return pb.WatchResponse(
        header=pb.ResponseHeader(revision=revs[-1]),
        events=[
            kv_pb2.Event(kv=kv_pb2.KeyValue(key=f"k{r}".encode(), mod_revision=r)) for r in revs
        ],
    )


def test_watch_state_resumes_without_gaps_or_repeats() -> None:
    st = WatchState(WatchSpec.build("k", prefix=True))
    assert st.create_request().create_request.start_revision == 0
    st.handle(pb.WatchResponse(header=pb.ResponseHeader(revision=10), created=True, watch_id=3))
    assert st.next_revision == 11 and st.watch_id == 3
    got = st.handle(_events(11, 12))
    assert got is not None and [e.revision for e in got] == [11, 12]
    # the stream breaks; the new one starts after the last delivered revision
    assert st.create_request().create_request.start_revision == 13
    st.handle(pb.WatchResponse(header=pb.ResponseHeader(revision=14), created=True))
    again = st.handle(_events(12, 13, 14))  # a repeat of 12 is dropped
    assert again is not None and [e.revision for e in again] == [13, 14]
    assert st.handle(_events(14)) is None
    # progress notifications move the resume point without events
    prog = st.handle(pb.WatchResponse(header=pb.ResponseHeader(revision=20)))
    assert prog is not None and prog.is_progress_notify and st.next_revision == 21
    # fragments are joined into one batch
    assert st.handle(pb.WatchResponse(fragment=True, events=_events(21).events)) is None
    joined = st.handle(_events(21))
    assert joined is not None and [e.revision for e in joined] == [21, 21]


def test_watch_state_errors() -> None:
    st = WatchState(WatchSpec.build("k", start_revision=5))
    assert st.create_request().create_request.start_revision == 5
    with pytest.raises(CompactedError) as e:
        st.handle(pb.WatchResponse(canceled=True, compact_revision=9))
    assert e.value.compact_revision == 9
    with pytest.raises(WatchCanceledError):
        st.handle(pb.WatchResponse(canceled=True, cancel_reason="some reason"))
    with pytest.raises(ValueError):
        WatchSpec.build("k", filters=["noputs"])  # type: ignore[list-item]
