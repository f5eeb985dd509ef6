"""Every RPC for an unprivileged user with auth enabled: allowed or denied as etcd decides
(with its CVE fixes: nested txn ops, wide watches, lease keys, root-only calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from cluster.proto.authpb import auth_pb2 as authpb
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.v3electionpb import v3election_pb2 as epb
from cluster.proto.v3electionpb import v3election_pb2_grpc as epb_grpc
from cluster.proto.v3lockpb import v3lock_pb2 as lockpb
from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock_grpc
from tests.unit.server.live import LiveMember

DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


@dataclass
class Secured:
    live: LiveMember
    root: list[tuple[str, str]]
    alice: list[tuple[str, str]]
    lease: int  # root's lease, with /other/leased attached


@pytest.fixture
async def secured(live: LiveMember) -> AsyncIterator[Secured]:
    auth = pb_grpc.AuthStub(live.channel)
    kv = live.kv
    await auth.UserAdd(pb.AuthUserAddRequest(name="root", password="root-pw"))
    await auth.RoleAdd(pb.AuthRoleAddRequest(name="root"))
    await auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
    await auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="alice-pw"))
    await auth.RoleAdd(pb.AuthRoleAddRequest(name="app"))
    perm = authpb.Permission(permType=authpb.Permission.READWRITE, key=b"/app/", range_end=b"/app0")
    await auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    await auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="app"))
    await kv.Put(pb.PutRequest(key=b"/app/a", value=b"1"))
    lease = await pb_grpc.LeaseStub(live.channel).LeaseGrant(pb.LeaseGrantRequest(TTL=60))
    await kv.Put(pb.PutRequest(key=b"/other/leased", value=b"x", lease=lease.ID))
    await auth.AuthEnable(pb.AuthEnableRequest())
    root = await auth.Authenticate(pb.AuthenticateRequest(name="root", password="root-pw"))
    alice = await auth.Authenticate(pb.AuthenticateRequest(name="alice", password="alice-pw"))
    yield Secured(live, [("token", root.token)], [("token", alice.token)], lease.ID)


async def _outcome(call: Awaitable[Any]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if (exc.code(), exc.details()) == DENIED:
            return "denied"
        return f"error: {exc.details()}"
    return "allowed"


def _rpcs(s: Secured) -> dict[str, Callable[[list[tuple[str, str]]], Awaitable[Any]]]:
    ch = s.live.channel
    kv, lease = pb_grpc.KVStub(ch), pb_grpc.LeaseStub(ch)
    cluster, maint = pb_grpc.ClusterStub(ch), pb_grpc.MaintenanceStub(ch)
    auth, lock = pb_grpc.AuthStub(ch), lock_grpc.LockStub(ch)
    election = epb_grpc.ElectionStub(ch)
    inside = pb.RequestOp(request_put=pb.PutRequest(key=b"/app/t", value=b"v"))
    outside = pb.RequestOp(request_range=pb.RangeRequest(key=b"/other/x"))
    nested = pb.RequestOp(request_txn=pb.TxnRequest(success=[outside]))

    async def first_snapshot_chunk(md: list[tuple[str, str]]) -> None:
        async for _ in maint.Snapshot(pb.SnapshotRequest(), metadata=md):
            return

    return {
        "Range inside": lambda md: kv.Range(pb.RangeRequest(key=b"/app/a"), metadata=md),
        "Range prefix inside": lambda md: kv.Range(
            pb.RangeRequest(key=b"/app/", range_end=b"/app0"), metadata=md
        ),
        "Range outside": lambda md: kv.Range(pb.RangeRequest(key=b"/other/x"), metadata=md),
        "Range wider": lambda md: kv.Range(pb.RangeRequest(key=b"/", range_end=b"0"), metadata=md),
        "Put inside": lambda md: kv.Put(pb.PutRequest(key=b"/app/b", value=b"v"), metadata=md),
        "Put outside": lambda md: kv.Put(pb.PutRequest(key=b"/other/b", value=b"v"), metadata=md),
        "Delete outside": lambda md: kv.DeleteRange(
            pb.DeleteRangeRequest(key=b"/other/b"), metadata=md
        ),
        "Txn inside": lambda md: kv.Txn(pb.TxnRequest(success=[inside]), metadata=md),
        "Txn failure branch outside": lambda md: kv.Txn(
            pb.TxnRequest(success=[inside], failure=[outside]), metadata=md
        ),
        "Txn nested outside": lambda md: kv.Txn(pb.TxnRequest(success=[nested]), metadata=md),
        "Txn compare outside": lambda md: kv.Txn(
            pb.TxnRequest(
                compare=[pb.Compare(key=b"/other/x", target=pb.Compare.VERSION, version=0)],
                success=[inside],
            ),
            metadata=md,
        ),
        "Compact": lambda md: kv.Compact(pb.CompactionRequest(revision=1), metadata=md),
        "LeaseGrant": lambda md: lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), metadata=md),
        "LeaseTimeToLive keys outside": lambda md: lease.LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=s.lease, keys=True), metadata=md
        ),
        "LeaseRevoke keys outside": lambda md: lease.LeaseRevoke(
            pb.LeaseRevokeRequest(ID=s.lease), metadata=md
        ),
        "MemberList": lambda md: cluster.MemberList(pb.MemberListRequest(), metadata=md),
        "MemberAdd": lambda md: cluster.MemberAdd(
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), metadata=md
        ),
        "MemberRemove": lambda md: cluster.MemberRemove(pb.MemberRemoveRequest(ID=1), metadata=md),
        "Status": lambda md: maint.Status(pb.StatusRequest(), metadata=md),
        "Alarm": lambda md: maint.Alarm(pb.AlarmRequest(), metadata=md),
        "Defragment": lambda md: maint.Defragment(pb.DefragmentRequest(), metadata=md),
        "HashKV": lambda md: maint.HashKV(pb.HashKVRequest(), metadata=md),
        "Snapshot": first_snapshot_chunk,
        "UserList": lambda md: auth.UserList(pb.AuthUserListRequest(), metadata=md),
        "UserAdd": lambda md: auth.UserAdd(
            pb.AuthUserAddRequest(name="mallory", password="x"), metadata=md
        ),
        "RoleGrantPermission": lambda md: auth.RoleGrantPermission(
            pb.AuthRoleGrantPermissionRequest(
                name="app", perm=authpb.Permission(permType=authpb.Permission.READ, key=b"/")
            ),
            metadata=md,
        ),
        "AuthDisable": lambda md: auth.AuthDisable(pb.AuthDisableRequest(), metadata=md),
        "AuthStatus": lambda md: auth.AuthStatus(pb.AuthStatusRequest(), metadata=md),
        "Lock outside": lambda md: lock.Lock(
            lockpb.LockRequest(name=b"/other/lock", lease=s.lease), metadata=md
        ),
        "Election leader outside": lambda md: election.Leader(
            epb.LeaderRequest(name=b"/other/election"), metadata=md
        ),
    }


ALICE_ALLOWED = {
    "Range inside",
    "Range prefix inside",
    "Put inside",
    "Txn inside",
    "LeaseGrant",
    "Status",
    "AuthStatus",
}


async def test_every_rpc_for_an_unprivileged_user(secured: Secured) -> None:
    got = {name: await _outcome(call(secured.alice)) for name, call in _rpcs(secured).items()}
    want = {name: "allowed" if name in ALICE_ALLOWED else "denied" for name in got}
    assert got == want


async def test_root_may_do_everything_and_nobody_gets_in_without_a_user(
    secured: Secured,
) -> None:
    rpcs = _rpcs(secured)
    for name in ("Range outside", "Txn nested outside", "MemberList", "HashKV", "UserList"):
        assert await _outcome(rpcs[name](secured.root)) == "allowed", name
    for name in ("Range inside", "Put inside"):
        assert await _outcome(rpcs[name]([])) == "error: etcdserver: user name is empty", name
    bad = [("token", "forged.9999")]
    assert await _outcome(rpcs["Range inside"](bad)) == "error: etcdserver: invalid auth token"
