"""The real etcdctl (3.4) talks to servicers built on our generated code.

A stub gRPC server records what etcdctl sends and answers with canned
responses; etcdctl's JSON output shows how it decoded them. No store is
involved: this checks method paths, field numbers and types end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.mvccpb import kv_pb2

pytestmark = pytest.mark.etcdctl

CLUSTER_ID, MEMBER_ID = 0xCDF818194E3A8C32, 0x8E9E05C52164694D
KV = kv_pb2.KeyValue(
    key=b"foo", value=b"bar", create_revision=2, mod_revision=5, version=3, lease=0x1234
)


def _header() -> pb.ResponseHeader:
    return pb.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=9, raft_term=2)


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Message]] = []

    def __call__(self, method: str, request: Message) -> None:
        self.requests.append((method, request))


class _KV(pb_grpc.KVServicer):
    def __init__(self, record: _Recorder) -> None:
        self.record = record

    def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        self.record("Range", request)
        return pb.RangeResponse(header=_header(), kvs=[KV], more=True, count=7)

    def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        self.record("Put", request)
        return pb.PutResponse(header=_header(), prev_kv=KV)

    def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        self.record("Txn", request)
        ops = [
            pb.ResponseOp(response_put=pb.PutResponse(header=_header())),
            pb.ResponseOp(response_range=pb.RangeResponse(header=_header(), kvs=[KV], count=1)),
        ]
        return pb.TxnResponse(header=_header(), succeeded=True, responses=ops)


class _Lease(pb_grpc.LeaseServicer):
    def __init__(self, record: _Recorder) -> None:
        self.record = record

    def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Any
    ) -> pb.LeaseTimeToLiveResponse:
        self.record("LeaseTimeToLive", request)
        return pb.LeaseTimeToLiveResponse(
            header=_header(), ID=request.ID, TTL=-1, grantedTTL=60, keys=[b"a"]
        )

    def LeaseKeepAlive(
        self, requests: Iterator[pb.LeaseKeepAliveRequest], context: Any
    ) -> Iterator[pb.LeaseKeepAliveResponse]:
        for request in requests:
            self.record("LeaseKeepAlive", request)
            yield pb.LeaseKeepAliveResponse(header=_header(), ID=request.ID, TTL=42)


class _Cluster(pb_grpc.ClusterServicer):
    def __init__(self, record: _Recorder) -> None:
        self.record = record

    def MemberList(self, request: pb.MemberListRequest, context: Any) -> pb.MemberListResponse:
        self.record("MemberList", request)
        members = [
            pb.Member(
                ID=MEMBER_ID,
                name="default",
                peerURLs=["http://localhost:2380"],
                clientURLs=["http://localhost:2379"],
            ),
            pb.Member(ID=7, peerURLs=["http://10.0.0.2:2380"], isLearner=True),
        ]
        return pb.MemberListResponse(header=_header(), members=members)

    def MemberAdd(self, request: pb.MemberAddRequest, context: Any) -> pb.MemberAddResponse:
        self.record("MemberAdd", request)
        added = pb.Member(ID=99, peerURLs=request.peerURLs, isLearner=request.isLearner)
        return pb.MemberAddResponse(header=_header(), member=added, members=[added])


class _Maintenance(pb_grpc.MaintenanceServicer):
    def __init__(self, record: _Recorder) -> None:
        self.record = record

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        self.record("Status", request)
        return pb.StatusResponse(
            header=_header(),
            version="3.4.23",
            dbSize=20480,
            leader=MEMBER_ID,
            raftIndex=11,
            raftTerm=2,
            raftAppliedIndex=10,
            errors=["e1"],
            dbSizeInUse=16384,
        )


@pytest.fixture
def server() -> Iterator[tuple[str, _Recorder]]:
    record = _Recorder()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_KVServicer_to_server(_KV(record), srv)
    pb_grpc.add_LeaseServicer_to_server(_Lease(record), srv)
    pb_grpc.add_ClusterServicer_to_server(_Cluster(record), srv)
    pb_grpc.add_MaintenanceServicer_to_server(_Maintenance(record), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", record
    finally:
        srv.stop(None)


def _etcdctl(endpoint: str, *args: str, stdin: str | None = None) -> str:
    # Only our flags: no ETCDCTL_* settings leak in from the caller's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    done = subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", "--dial-timeout=5s", "--command-timeout=10s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_get_sends_every_range_flag_and_decodes_the_response(
    server: tuple[str, _Recorder],
) -> None:
    endpoint, record = server
    out = _etcdctl(
        endpoint,
        "get",
        "foo",
        "--prefix",
        "--limit=5",
        "--sort-by=MODIFY",
        "--order=DESCEND",
        "--rev=3",
        "--consistency=s",
        "--keys-only",
        "-w",
        "json",
    )
    assert record.requests == [
        (
            "Range",
            pb.RangeRequest(
                key=b"foo",
                range_end=b"fop",
                limit=5,
                revision=3,
                sort_order=pb.RangeRequest.DESCEND,
                sort_target=pb.RangeRequest.MOD,
                serializable=True,
                keys_only=True,
            ),
        ),
    ]
    got = json.loads(out)
    assert got["header"] == {
        "cluster_id": CLUSTER_ID,
        "member_id": MEMBER_ID,
        "revision": 9,
        "raft_term": 2,
    }
    assert got["kvs"] == [
        {
            "key": "Zm9v",
            "create_revision": 2,
            "mod_revision": 5,
            "version": 3,
            "value": "YmFy",
            "lease": 0x1234,
        }
    ]
    assert (got["more"], got["count"]) == (True, 7)


def test_put_with_lease_and_prev_kv(server: tuple[str, _Recorder]) -> None:
    endpoint, record = server
    out = _etcdctl(endpoint, "put", "k", "v", "--lease=1234", "--prev-kv")
    assert record.requests == [
        ("Put", pb.PutRequest(key=b"k", value=b"v", lease=0x1234, prev_kv=True)),
    ]
    assert out.split() == ["OK", "foo", "bar"]


def test_txn_compares_and_ops(server: tuple[str, _Recorder]) -> None:
    endpoint, record = server
    script = 'mod("k") > "5"\nversion("a") = "0"\nvalue("d") != "x"\n\nput k v\nget k\n\ndel k\n\n'
    out = _etcdctl(endpoint, "txn", "-w", "json", stdin=script)
    [(method, request)] = record.requests
    assert method == "Txn" and isinstance(request, pb.TxnRequest)
    assert request == pb.TxnRequest(
        compare=[
            pb.Compare(result=pb.Compare.GREATER, target=pb.Compare.MOD, key=b"k", mod_revision=5),
            pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=b"a", version=0),
            pb.Compare(result=pb.Compare.NOT_EQUAL, target=pb.Compare.VALUE, key=b"d", value=b"x"),
        ],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=b"v")),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k")),
        ],
        failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k"))],
    )
    # etcdctl sent the zero version explicitly: the oneof keeps it.
    assert request.compare[1].WhichOneof("target_union") == "version"
    got = json.loads(out)
    assert got["succeeded"] is True
    assert got["responses"][1]["Response"]["ResponseRange"]["kvs"][0]["value"] == "YmFy"


def test_lease_time_to_live_and_keep_alive_stream(server: tuple[str, _Recorder]) -> None:
    endpoint, record = server
    got = json.loads(_etcdctl(endpoint, "lease", "timetolive", "1234", "--keys", "-w", "json"))
    assert (got["id"], got["ttl"], got["granted-ttl"], got["keys"]) == (0x1234, -1, 60, ["YQ=="])
    out = _etcdctl(endpoint, "lease", "keep-alive", "--once", "1234")
    assert "keepalived with TTL(42)" in out
    assert record.requests == [
        ("LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=0x1234, keys=True)),
        ("LeaseKeepAlive", pb.LeaseKeepAliveRequest(ID=0x1234)),
    ]


def test_members_and_status(server: tuple[str, _Recorder]) -> None:
    endpoint, record = server
    members = json.loads(_etcdctl(endpoint, "member", "list", "-w", "json"))["members"]
    assert [(m["ID"], m.get("isLearner", False)) for m in members] == [
        (MEMBER_ID, False),
        (7, True),
    ]
    _etcdctl(endpoint, "member", "add", "n2", "--peer-urls=http://a:2380", "--learner")
    [status] = json.loads(_etcdctl(endpoint, "endpoint", "status", "-w", "json"))
    assert {k: status["Status"][k] for k in ("dbSize", "dbSizeInUse", "raftAppliedIndex")} == {
        "dbSize": 20480,
        "dbSizeInUse": 16384,
        "raftAppliedIndex": 10,
    }
    assert status["Status"]["errors"] == ["e1"]
    methods = [m for m, _ in record.requests]
    assert methods[:2] == ["MemberList", "MemberAdd"]
    assert record.requests[1][1] == pb.MemberAddRequest(peerURLs=["http://a:2380"], isLearner=True)
    assert set(methods[2:]) == {"Status"}
