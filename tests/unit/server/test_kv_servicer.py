"""The KV servicer over a real grpc.aio server, with a member that applies straight to a KVStore.

Driven by our generated client stub and by the real etcdctl (3.4): errors must
arrive with etcd's codes and messages, and bad requests must never reach the
member (that is, Raft).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cluster.mvcc import CompactedError, KVStore
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.mvccpb import kv_pb2
from cluster.server import kvconv
from cluster.server.kv import KVMember, KVServicer, grpc_server_options
from cluster.server.kvconv import RequestError, WriteRequest
from cluster.storage.backend import Backend

CLUSTER_ID, MEMBER_ID, TERM = 0xCDF818194E3A8C32, 0x8E9E05C52164694D, 7
MAX_REQUEST_BYTES = 4096
MAX_TXN_OPS = 8


class FakeMember:
    """No Raft: writes are applied at once, reads are local; headers as the member fills them."""

    max_request_bytes = MAX_REQUEST_BYTES
    max_txn_ops = MAX_TXN_OPS

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.writes: list[WriteRequest] = []
        self.reads: list[pb.RangeRequest] = []
        self.fail: Exception | None = None
        self.answer: object = None  # a response to return instead of applying

    def _fill(self, header: pb.ResponseHeader) -> None:
        kvconv.fill_header(
            header,
            cluster_id=CLUSTER_ID,
            member_id=MEMBER_ID,
            raft_term=TERM,
            revision=self.store.current_revision,
        )

    async def write(self, request: WriteRequest) -> object:
        self.writes.append(request)
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        resp = kvconv.apply_request(self.store, request)
        self._fill(resp.header)
        return resp

    async def read(self, request: pb.RangeRequest) -> pb.RangeResponse:
        self.reads.append(request)
        if self.fail is not None:
            raise self.fail
        resp = kvconv.do_range(self.store, request)
        self._fill(resp.header)
        return resp


def _is_kv_member(member: KVMember) -> KVMember:
    return member  # mypy: FakeMember satisfies the protocol


@dataclass
class Harness:
    member: FakeMember
    stub: pb_grpc.KVStub
    endpoint: str


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[Harness]:
    backend = Backend(str(tmp_path / "db"), quota_bytes=64 * 1024 * 1024)
    member = FakeMember(KVStore(backend, max_txn_ops=MAX_TXN_OPS))
    server = grpc.aio.server(options=grpc_server_options(MAX_REQUEST_BYTES))
    pb_grpc.add_KVServicer_to_server(KVServicer(_is_kv_member(member)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    endpoint = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(endpoint)
    try:
        yield Harness(member, pb_grpc.KVStub(channel), endpoint)
    finally:
        await channel.close()
        await server.stop(None)
        backend.close()


async def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details()


def _header(revision: int) -> pb.ResponseHeader:
    return pb.ResponseHeader(
        cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=revision, raft_term=TERM
    )


def _put(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _get(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


# -- the generated stub ------------------------------------------------------------------------


async def test_requests_round_trip_with_headers(kv: Harness) -> None:
    stub = kv.stub
    assert await stub.Put(pb.PutRequest(key=b"a", value=b"1")) == pb.PutResponse(header=_header(2))
    put = await stub.Put(pb.PutRequest(key=b"a", value=b"2", prev_kv=True))
    assert put.header == _header(3) and put.prev_kv.value == b"1"
    got = await stub.Range(pb.RangeRequest(key=b"a", range_end=b"b"))
    assert got == pb.RangeResponse(
        header=_header(3),
        kvs=[kv_pb2.KeyValue(key=b"a", value=b"2", create_revision=2, mod_revision=3, version=2)],
        count=1,
    )
    txn = await stub.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key=b"a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"2")
            ],
            success=[
                _put(b"b", b"x"),
                pb.RequestOp(request_txn=pb.TxnRequest(success=[_get(b"b")])),
            ],
        )
    )
    assert txn.header == _header(4) and txn.succeeded
    nested = txn.responses[1].response_txn.responses[0].response_range
    assert [k.value for k in nested.kvs] == [b"x"]
    deleted = await stub.DeleteRange(pb.DeleteRangeRequest(key=b"a", range_end=b"\0"))
    assert (deleted.header, deleted.deleted) == (_header(5), 2)
    compacted = await stub.Compact(pb.CompactionRequest(revision=4))
    assert compacted == pb.CompactionResponse(header=_header(5))
    assert [type(w).__name__ for w in kv.member.writes] == [
        "PutRequest",
        "PutRequest",
        "TxnRequest",
        "DeleteRangeRequest",
        "CompactionRequest",
    ]
    assert kv.member.reads == [pb.RangeRequest(key=b"a", range_end=b"b")]


async def test_read_only_txn_goes_through_write_and_serializable_reaches_read(
    kv: Harness,
) -> None:
    await kv.stub.Range(pb.RangeRequest(key=b"k", serializable=True))
    assert kv.member.reads == [pb.RangeRequest(key=b"k", serializable=True)]
    txn = pb.TxnRequest(success=[_get(b"k")], failure=[_get(b"j")])
    resp = await kv.stub.Txn(txn)
    assert resp.succeeded and resp.header == _header(1)
    assert kv.member.writes == [txn]


BAD_REQUESTS = [
    ("Put", pb.PutRequest(value=b"v"), "etcdserver: key is not provided"),
    (
        "Put",
        pb.PutRequest(key=b"k", value=b"v", ignore_value=True),
        "etcdserver: value is provided",
    ),
    ("Range", pb.RangeRequest(), "etcdserver: key is not provided"),
    (
        "Range",
        pb.RangeRequest(key=b"k", sort_order=pb.RangeRequest.SortOrder.ValueType(5)),
        "etcdserver: invalid sort option",
    ),
    ("DeleteRange", pb.DeleteRangeRequest(), "etcdserver: key is not provided"),
    (
        "Txn",
        pb.TxnRequest(success=[_put(b"k%d" % i) for i in range(MAX_TXN_OPS + 1)]),
        "etcdserver: too many operations in txn request",
    ),
    (
        "Txn",
        pb.TxnRequest(compare=[pb.Compare(key=b"k")] * (MAX_TXN_OPS + 1)),
        "etcdserver: too many operations in txn request",
    ),
    (
        "Txn",
        pb.TxnRequest(success=[_put(b"k"), _put(b"k")]),
        "etcdserver: duplicate key given in txn request",
    ),
    (
        "Txn",
        pb.TxnRequest(compare=[pb.Compare(target=pb.Compare.VERSION)]),
        "etcdserver: key is not provided",
    ),
    ("Txn", pb.TxnRequest(failure=[pb.RequestOp()]), "etcdserver: key not found"),
    (
        "Put",
        pb.PutRequest(key=b"k", value=b"x" * MAX_REQUEST_BYTES),
        "etcdserver: request is too large",
    ),
    (
        "Txn",
        pb.TxnRequest(success=[_get(b"k" * MAX_REQUEST_BYTES)]),
        "etcdserver: request is too large",
    ),
]


@pytest.mark.parametrize(("method", "request_", "message"), BAD_REQUESTS)
async def test_bad_requests_are_refused_before_the_member(
    kv: Harness, method: str, request_: object, message: str
) -> None:
    code, details = await _status(getattr(kv.stub, method)(request_))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert kv.member.writes == [] and kv.member.reads == []


async def test_beyond_the_transport_limit(kv: Harness) -> None:
    big = pb.PutRequest(key=b"k", value=b"x" * (MAX_REQUEST_BYTES + 600 * 1024))
    code, _ = await _status(kv.stub.Put(big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert kv.member.writes == []


async def test_store_errors_from_apply_and_read(kv: Harness) -> None:
    for i in range(3):
        await kv.stub.Put(pb.PutRequest(key=b"k", value=b"%d" % i))
    await kv.stub.Compact(pb.CompactionRequest(revision=3))
    compacted = (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    future = (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )
    assert await _status(kv.stub.Range(pb.RangeRequest(key=b"k", revision=2))) == compacted
    assert await _status(kv.stub.Range(pb.RangeRequest(key=b"k", revision=9))) == future
    assert await _status(kv.stub.Compact(pb.CompactionRequest(revision=2))) == compacted
    assert await _status(kv.stub.Compact(pb.CompactionRequest(revision=9))) == future
    txn = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k", revision=1))])
    assert await _status(kv.stub.Txn(txn)) == compacted
    missing = pb.PutRequest(key=b"nope", ignore_value=True)
    assert await _status(kv.stub.Put(missing)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: key not found",
    )
    assert (await kv.stub.Range(pb.RangeRequest(key=b"k"))).kvs[0].value == b"2"


@pytest.mark.parametrize(
    "spec",
    [
        kvconv.ERR_NO_LEADER,
        kvconv.ERR_TIMEOUT,
        kvconv.ERR_TIMEOUT_DUE_TO_LEADER_FAIL,
        kvconv.ERR_STOPPED,
        kvconv.ERR_NO_SPACE,
    ],
)
async def test_member_errors_arrive_as_etcd_statuses(
    kv: Harness, spec: tuple[grpc.StatusCode, str]
) -> None:
    kv.member.fail = RequestError(*spec)
    assert await _status(kv.stub.Put(pb.PutRequest(key=b"k"))) == spec
    assert await _status(kv.stub.Range(pb.RangeRequest(key=b"k"))) == spec
    assert await _status(kv.stub.Compact(pb.CompactionRequest(revision=1))) == spec


async def test_member_raising_a_store_error_is_mapped(kv: Harness) -> None:
    kv.member.fail = CompactedError()
    assert await _status(kv.stub.DeleteRange(pb.DeleteRangeRequest(key=b"k"))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )


async def test_member_answering_the_wrong_type_is_an_internal_failure(kv: Harness) -> None:
    kv.member.answer = pb.RangeResponse()
    code, _ = await _status(kv.stub.Put(pb.PutRequest(key=b"k")))
    assert code == grpc.StatusCode.UNKNOWN


# -- the real etcdctl --------------------------------------------------------------------------


async def _etcdctl(
    endpoint: str, *args: str, stdin: str | None = None, ok: bool = True
) -> tuple[str, str]:
    # Only our flags: no ETCDCTL_* settings leak in from the caller's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    proc = await asyncio.create_subprocess_exec(
        "etcdctl",
        f"--endpoints={endpoint}",
        "--dial-timeout=5s",
        "--command-timeout=10s",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else b""), 30)
    assert (proc.returncode == 0) == ok, (proc.returncode, out, err)
    return out.decode(), err.decode()


async def _etcdctl_error(endpoint: str, *args: str) -> str:
    _, err = await _etcdctl(endpoint, *args, ok=False)
    return err.rstrip("\n").rsplit("\n", 1)[-1]  # after clientv3's retry warnings


@pytest.mark.etcdctl
async def test_etcdctl_put_and_get(kv: Harness) -> None:
    ep = kv.endpoint
    assert (await _etcdctl(ep, "put", "foo/a", "1"))[0] == "OK\n"
    await _etcdctl(ep, "put", "foo/b", "2")
    await _etcdctl(ep, "put", "fop", "x")
    out, _ = await _etcdctl(ep, "put", "foo/a", "3", "--prev-kv")
    assert out == "OK\nfoo/a\n1\n"
    assert (await _etcdctl(ep, "get", "foo/", "--prefix"))[0] == "foo/a\n3\nfoo/b\n2\n"
    assert (await _etcdctl(ep, "get", "foo/a", "--rev=2"))[0] == "foo/a\n1\n"
    assert (await _etcdctl(ep, "get", "foo/", "--prefix", "--keys-only"))[0] == (
        "foo/a\n\nfoo/b\n\n"
    )
    got = json.loads((await _etcdctl(ep, "get", "foo/", "--prefix", "--limit=1", "-w", "json"))[0])
    assert got["header"] == {
        "cluster_id": CLUSTER_ID,
        "member_id": MEMBER_ID,
        "revision": 5,
        "raft_term": TERM,
    }
    assert (got["count"], got["more"], len(got["kvs"])) == (2, True, 1)
    assert got["kvs"][0]["create_revision"] == 2 and got["kvs"][0]["version"] == 2


@pytest.mark.etcdctl
async def test_etcdctl_del_with_prev_kv(kv: Harness) -> None:
    ep = kv.endpoint
    for key in ("k1", "k2", "l"):
        await _etcdctl(ep, "put", key, key.upper())
    assert (await _etcdctl(ep, "del", "k", "--prefix", "--prev-kv"))[0] == "2\nk1\nK1\nk2\nK2\n"
    assert (await _etcdctl(ep, "del", "k1"))[0] == "0\n"
    assert (await _etcdctl(ep, "get", "", "--from-key"))[0] == "l\nL\n"


@pytest.mark.etcdctl
async def test_etcdctl_txn(kv: Harness) -> None:
    ep = kv.endpoint
    await _etcdctl(ep, "put", "k1", "v1")
    script = 'value("k1") = "v1"\nversion("k2") = "0"\n\nput k2 yes\nget k1\n\nput k2 no\n\n'
    out, _ = await _etcdctl(ep, "txn", stdin=script)
    assert out == "SUCCESS\n\nOK\n\nk1\nv1\n"
    # Now version("k2") is 1: the failure branch.
    out, _ = await _etcdctl(ep, "txn", stdin=script)
    assert out == "FAILURE\n\nOK\n"
    assert (await _etcdctl(ep, "get", "k2"))[0] == "k2\nno\n"
    out, _ = await _etcdctl(ep, "txn", stdin='mod("k1") > "0"\n\ndel k2\nget k2\n\n\n')
    assert out == "SUCCESS\n\n1\n\n"
    message = await _etcdctl_error_stdin(ep, "\nput a 1\nput a 2\n\n\n")
    assert message == "Error: etcdserver: duplicate key given in txn request"
    assert kv.member.writes[-1:] == [
        pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=b"k1", target=pb.Compare.MOD, result=pb.Compare.GREATER, mod_revision=0
                )
            ],
            success=[
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k2")),
                _get(b"k2"),
            ],
        ),
    ]


async def _etcdctl_error_stdin(endpoint: str, script: str) -> str:
    _, err = await _etcdctl(endpoint, "txn", stdin=script, ok=False)
    return err.rstrip("\n").rsplit("\n", 1)[-1]


@pytest.mark.etcdctl
async def test_etcdctl_compaction_and_errors(kv: Harness) -> None:
    ep = kv.endpoint
    for i in range(4):
        await _etcdctl(ep, "put", "k", str(i))
    assert (await _etcdctl(ep, "compaction", "3"))[0] == "compacted revision 3\n"
    assert (await _etcdctl(ep, "compaction", "--physical", "4"))[0] == "compacted revision 4\n"
    assert await _etcdctl_error(ep, "get", "k", "--rev=2") == (
        "Error: etcdserver: mvcc: required revision has been compacted"
    )
    assert await _etcdctl_error(ep, "get", "k", "--rev=99") == (
        "Error: etcdserver: mvcc: required revision is a future revision"
    )
    assert await _etcdctl_error(ep, "compaction", "2") == (
        "Error: etcdserver: mvcc: required revision has been compacted"
    )
    assert await _etcdctl_error(ep, "put", "", "v") == "Error: etcdserver: key is not provided"
    assert await _etcdctl_error(ep, "put", "big", "x" * MAX_REQUEST_BYTES) == (
        "Error: etcdserver: request is too large"
    )
    assert (await _etcdctl(ep, "get", "k", "--rev=4"))[0] == "k\n2\n"
