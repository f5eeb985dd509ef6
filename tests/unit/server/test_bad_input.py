"""Bad input, each case against a live member: a clear etcd-style error, nothing changed
(the same revision and HashKV before and after), and the member keeps serving.

Covered elsewhere: a peer of another cluster id (test_transport.py), a WAL, snapshot or
backend of another member or cluster in the data dir (storage/test_durable.py,
storage/test_backend.py), MemberAdd errors (test_cluster_servicer.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.unit.server.live import LiveMember

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def member(live: LiveMember) -> AsyncIterator[LiveMember]:
    for i in range(3):
        await live.kv.Put(pb.PutRequest(key=f"/data/{i}".encode(), value=b"v"))
    rev = (await live.kv.Put(pb.PutRequest(key=b"/data/x", value=b"1"))).header.revision
    await live.kv.Put(pb.PutRequest(key=b"/data/x", value=b"2"))
    await live.kv.Compact(pb.CompactionRequest(revision=rev))
    yield live


async def _state(live: LiveMember) -> tuple[int, int]:
    resp = await live.maintenance.HashKV(pb.HashKVRequest())
    return resp.header.revision, resp.hash


async def _refused(
    live: LiveMember, call: Awaitable[Any], code: grpc.StatusCode, message: str
) -> None:
    """``call`` fails with (code, message), changes nothing, and the member still serves."""
    before = await _state(live)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert (e.value.code(), e.value.details()) == (code, message)
    assert await _state(live) == before
    got = await live.kv.Range(pb.RangeRequest(key=b"/data/0"))
    assert got.kvs[0].value == b"v"


def _put(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


async def test_keys_values_and_sizes(member: LiveMember) -> None:
    kv = member.kv
    await _refused(member, kv.Put(pb.PutRequest(key=b"", value=b"v")), INVALID,
                   "etcdserver: key is not provided")  # fmt: skip
    too_large = (INVALID, "etcdserver: request is too large")
    big = b"x" * (1536 * 1024 + 1)
    await _refused(member, kv.Put(pb.PutRequest(key=b"k", value=big)), *too_large)
    await _refused(member, kv.Put(pb.PutRequest(key=big, value=b"v")), *too_large)
    # a 2 MiB request: past what the gRPC server takes at all
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await kv.Put(pb.PutRequest(key=b"k", value=b"x" * (2 * 1024 * 1024 + 1024)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # range_end below key: an empty range, as etcd answers (a watch of one is refused:
    # test_watches); a delete of one deletes nothing
    before = await _state(member)
    assert (await kv.Range(pb.RangeRequest(key=b"/data/1", range_end=b"/data/0"))).count == 0
    empty = await kv.DeleteRange(pb.DeleteRangeRequest(key=b"/data/1", range_end=b"/data/0"))
    assert empty.deleted == 0 and await _state(member) == before


async def test_revisions(member: LiveMember) -> None:
    kv = member.kv
    # a negative revision reads the current one, as etcd does
    latest = await kv.Range(pb.RangeRequest(key=b"/data/x", revision=-1))
    assert latest.kvs[0].value == b"2"
    await _refused(member, kv.Range(pb.RangeRequest(key=b"/data/x", revision=2)), OUT_OF_RANGE,
                   "etcdserver: mvcc: required revision has been compacted")  # fmt: skip
    future = "etcdserver: mvcc: required revision is a future revision"
    await _refused(member, kv.Range(pb.RangeRequest(key=b"/data/x", revision=10**6)),
                   OUT_OF_RANGE, future)  # fmt: skip
    await _refused(member, kv.Compact(pb.CompactionRequest(revision=10**6)), OUT_OF_RANGE,
                   future)  # fmt: skip


async def test_txns(member: LiveMember) -> None:
    kv = member.kv
    ops = [_put(f"/t/{i}".encode()) for i in range(129)]
    await _refused(member, kv.Txn(pb.TxnRequest(success=ops)), INVALID,
                   "etcdserver: too many operations in txn request")  # fmt: skip
    dup = pb.TxnRequest(success=[_put(b"/t/a"), _put(b"/t/a")])
    await _refused(member, kv.Txn(dup), INVALID, "etcdserver: duplicate key given in txn request")
    # nested 30 deep: applied as one write
    nested = pb.TxnRequest(success=[_put(b"/t/deep")])
    for _ in range(30):
        nested = pb.TxnRequest(success=[pb.RequestOp(request_txn=nested)])
    before = await _state(member)
    assert (await kv.Txn(nested)).succeeded
    assert (await kv.Range(pb.RangeRequest(key=b"/t/deep"))).count == 1
    assert (await _state(member))[0] == before[0] + 1
    # nested past protobuf's decoding depth (sent as raw bytes): refused, nothing changed
    raw = _put(b"/t/deeper").SerializeToString()
    for _ in range(80):
        txn = _field(2, raw)  # TxnRequest.success
        raw = _field(4, txn)  # RequestOp.request_txn
    call = member.channel.unary_unary("/etcdserverpb.KV/Txn")
    before = await _state(member)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(txn)
    assert e.value.code() == INVALID
    assert e.value.details().startswith("etcdserver: malformed request: Error parsing message")
    assert await _state(member) == before


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    out = bytearray([number << 3 | 2])
    n = len(payload)
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


async def test_leases(member: LiveMember) -> None:
    kv, lease = member.kv, pb_grpc.LeaseStub(member.channel)
    await _refused(member, kv.Put(pb.PutRequest(key=b"/l", value=b"v", lease=0x1234)),
                   NOT_FOUND, "etcdserver: requested lease not found")  # fmt: skip
    # etcd raises a TTL of 0 or below to its minimum rather than refusing it
    for ttl in (0, -5):
        granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl))
        assert member.member.lessor.min_ttl == granted.TTL
    revoked = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
    await lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked.ID))
    await _refused(member, lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked.ID)), NOT_FOUND,
                   "etcdserver: requested lease not found")  # fmt: skip
    # keep-alive for a revoked lease: TTL 0, as etcd answers
    async for resp in lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=revoked.ID)])):
        assert (resp.ID, resp.TTL) == (revoked.ID, 0)
        break


async def test_watches(member: LiveMember) -> None:
    watch = pb_grpc.WatchStub(member.channel)
    requests = [
        pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/data/x", start_revision=2)),
        pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/a", watch_id=7)),
        pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/b", watch_id=7)),
    ]
    answers = []
    call = watch.Watch(iter(requests))
    async for resp in call:
        answers.append(resp)
        if len(answers) == 4:
            break
    call.cancel()
    compacted = [a for a in answers if a.compact_revision]
    assert compacted and compacted[0].canceled  # compacted start: told so, and canceled
    reused = [a for a in answers if a.canceled and not a.compact_revision]
    assert reused[0].cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    assert (await member.kv.Range(pb.RangeRequest(key=b"/data/0"))).count == 1


async def test_non_utf8_keys_are_stored_byte_exact(member: LiveMember) -> None:
    key, value = b"/bin/\xff\xfe\x00\x80", b"\x00\xff\x10"
    await member.kv.Put(pb.PutRequest(key=key, value=value))
    got = await member.kv.Range(pb.RangeRequest(key=key))
    assert (got.kvs[0].key, got.kvs[0].value) == (key, value)


METHODS = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Auth/UserAdd",
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=64))
async def test_malformed_protobuf_bytes_never_hurt_the_member(
    member: LiveMember, method: str, raw: bytes
) -> None:
    """Random bytes on a raw channel: refused or taken as some valid request, never a crash."""
    call = member.channel.unary_unary(method)
    try:
        await call(raw, timeout=5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() != grpc.StatusCode.UNKNOWN or exc.details(), exc
    got = await member.kv.Range(pb.RangeRequest(key=b"/data/0"))
    assert got.kvs[0].value == b"v"
