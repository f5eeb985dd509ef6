"""The generated protobuf modules speak etcd's v3 wire format.

Encoded bytes are checked against hand-computed encodings, and every message,
field number, field type, oneof, enum value and RPC (with its streaming kind)
is checked against a table written out from etcd's public API reference
(etcd 3.5, plus the purely additive 3.6 fields marked below).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import descriptor as _descriptor

from cluster.proto import generate
from cluster.proto.authpb import auth_pb2
from cluster.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from cluster.proto.mvccpb import kv_pb2
from cluster.proto.v3electionpb import v3election_pb2, v3election_pb2_grpc
from cluster.proto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc

FD = _descriptor.FieldDescriptor

# ---------------------------------------------------------------------------
# Hand-computed encodings
# ---------------------------------------------------------------------------


def test_range_request_encoding() -> None:
    req = rpc_pb2.RangeRequest(key=b"foo", range_end=b"fop", limit=5)
    # field 1 (key, LEN) = 0x0a, field 2 (range_end, LEN) = 0x12, field 3 (limit, VARINT) = 0x18
    assert req.SerializeToString() == bytes.fromhex("0a03666f6f1203666f701805")


def test_range_request_flags_encoding() -> None:
    req = rpc_pb2.RangeRequest(
        key=b"a",
        revision=7,
        sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.MOD,
        serializable=True,
        keys_only=True,
        count_only=True,
        min_mod_revision=1,
        max_create_revision=300,
    )
    assert req.SerializeToString() == bytes.fromhex(
        "0a0161"  # key
        "2007"  # revision = 4
        "2802"  # sort_order = 5: DESCEND
        "3003"  # sort_target = 6: MOD
        "3801"  # serializable = 7
        "4001"  # keys_only = 8
        "4801"  # count_only = 9
        "5001"  # min_mod_revision = 10
        "68ac02"  # max_create_revision = 13: 300 as a varint
    )


def test_response_header_encoding() -> None:
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)
    assert header.SerializeToString() == bytes.fromhex("0801100218032004")


def test_compare_value_and_range_end_tag_64() -> None:
    cmp = rpc_pb2.Compare(
        result=rpc_pb2.Compare.NOT_EQUAL,
        target=rpc_pb2.Compare.VALUE,
        key=b"k",
        value=b"v",
        range_end=b"\x00",
    )
    assert cmp.SerializeToString() == bytes.fromhex(
        "0803"  # result = 1: NOT_EQUAL
        "1003"  # target = 2: VALUE
        "1a016b"  # key = 3
        "3a0176"  # value = 7 (LEN)
        "82040100"  # range_end = 64: tag (64 << 3) | 2 = 514 = varint 82 04
    )


def test_compare_oneof_zero_is_still_sent() -> None:
    # "the key does not exist" is Compare(target=VERSION, version=0): the oneof gives
    # the zero presence, so it is encoded (field 4 = 0) and survives a round trip.
    cmp = rpc_pb2.Compare(target=rpc_pb2.Compare.VERSION, key=b"k", version=0)
    assert cmp.SerializeToString() == bytes.fromhex("1a016b2000")
    back = rpc_pb2.Compare.FromString(bytes.fromhex("1a016b2000"))
    assert back.WhichOneof("target_union") == "version"
    lease = rpc_pb2.Compare(target=rpc_pb2.Compare.LEASE, key=b"k", lease=42)
    assert lease.SerializeToString() == bytes.fromhex("10041a016b402a")


def test_txn_encoding() -> None:
    txn = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, key=b"a", mod_revision=5)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"a", value=b"b"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"a"))],
    )
    assert txn.SerializeToString() == bytes.fromhex(
        "0a07"
        "1002"
        "1a0161"
        "3005"  # compare = 1: target MOD, key, mod_revision = 6
        "1208"
        "1206"
        "0a0161"
        "120162"  # success = 2: RequestOp.request_put = 2
        "1a05"
        "0a03"
        "0a0161"  # failure = 3: RequestOp.request_range = 1
    )
    resp = rpc_pb2.TxnResponse(
        succeeded=True,
        responses=[
            rpc_pb2.ResponseOp(response_delete_range=rpc_pb2.DeleteRangeResponse(deleted=2))
        ],
    )
    assert resp.SerializeToString() == bytes.fromhex("10011a041a021002")


def test_nested_txn_op_uses_field_4() -> None:
    op = rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest())
    assert op.SerializeToString() == bytes.fromhex("2200")


def test_watch_response_events_are_field_11() -> None:
    ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"a", mod_revision=7))
    assert ev.SerializeToString() == bytes.fromhex("080112050a01611807")
    resp = rpc_pb2.WatchResponse(watch_id=1, created=True, events=[ev])
    # events: tag (11 << 3) | 2 = 0x5a
    assert resp.SerializeToString() == bytes.fromhex("100118015a09080112050a01611807")


def test_watch_create_request_encoding() -> None:
    req = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(
            key=b"a",
            start_revision=3,
            filters=[rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE],
            prev_kv=True,
            watch_id=9,
            fragment=True,
        )
    )
    assert req.SerializeToString() == bytes.fromhex(
        "0a0f"  # create_request = 1 (15 bytes)
        "0a0161"  # key
        "1803"  # start_revision = 3
        "2a020001"  # filters = 5, packed (proto3 default, as etcd's Go code sends them)
        "3001"  # prev_kv = 6
        "3809"  # watch_id = 7
        "4001"  # fragment = 8
    )
    # An unpacked encoding of the same repeated enum is accepted as well.
    unpacked = rpc_pb2.WatchCreateRequest.FromString(bytes.fromhex("28002801"))
    assert list(unpacked.filters) == [0, 1]
    progress = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
    assert progress.SerializeToString() == bytes.fromhex("1a00")
    cancel = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=9))
    assert cancel.SerializeToString() == bytes.fromhex("12020809")


def test_negative_int64_is_plain_varint() -> None:
    # etcd reports an expired lease as TTL -1: int64 (not sint64), so ten bytes.
    resp = rpc_pb2.LeaseTimeToLiveResponse(ID=5, TTL=-1)
    assert resp.SerializeToString() == bytes.fromhex("100518ffffffffffffffffff01")


def test_uint32_hash_and_status_fields() -> None:
    assert rpc_pb2.HashKVResponse(hash=0xFFFFFFFF, hash_revision=2).SerializeToString() == (
        bytes.fromhex("10ffffffff0f2002")
    )
    status = rpc_pb2.StatusResponse(
        version="3.5.0", leader=1, raftAppliedIndex=2, errors=["x"], dbSizeInUse=3, isLearner=True
    )
    assert status.SerializeToString() == bytes.fromhex(
        "1205" + b"3.5.0".hex() + "2001380242017848035001"
    )


def test_key_value_encoding() -> None:
    kv = kv_pb2.KeyValue(
        key=b"k", create_revision=2, mod_revision=3, version=4, value=b"v", lease=0x7FFF
    )
    assert kv.SerializeToString() == bytes.fromhex("0a016b1002180320042a017630ffff01")


def test_auth_permission_encoding() -> None:
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")
    req = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=perm)
    assert req.SerializeToString() == bytes.fromhex("0a0172120808021201611a0162")


def test_election_leader_key_encoding() -> None:
    leader = v3election_pb2.LeaderKey(name=b"e", key=b"e/1", rev=4, lease=5)
    req = v3election_pb2.ProclaimRequest(leader=leader, value=b"v")
    assert req.SerializeToString() == bytes.fromhex("0a0c0a01651203652f3118042005120176")


# ---------------------------------------------------------------------------
# Messages, fields, oneofs and enums
# ---------------------------------------------------------------------------

# Declarations per message, as "[repeated ]<type> <name> = <number>".
H = "etcdserverpb.ResponseHeader header = 1"
KV = "mvccpb.KeyValue"

SCHEMA: dict[str, set[str]] = {
    # mvccpb
    "mvccpb.KeyValue": {
        "bytes key = 1",
        "int64 create_revision = 2",
        "int64 mod_revision = 3",
        "int64 version = 4",
        "bytes value = 5",
        "int64 lease = 6",
    },
    "mvccpb.Event": {
        "mvccpb.Event.EventType type = 1",
        f"{KV} kv = 2",
        f"{KV} prev_kv = 3",
    },
    # authpb
    "authpb.UserAddOptions": {"bool no_password = 1"},
    "authpb.User": {
        "bytes name = 1",
        "bytes password = 2",
        "repeated string roles = 3",
        "authpb.UserAddOptions options = 4",
    },
    "authpb.Permission": {
        "authpb.Permission.Type permType = 1",
        "bytes key = 2",
        "bytes range_end = 3",
    },
    "authpb.Role": {"bytes name = 1", "repeated authpb.Permission keyPermission = 2"},
    # etcdserverpb: KV
    "etcdserverpb.ResponseHeader": {
        "uint64 cluster_id = 1",
        "uint64 member_id = 2",
        "int64 revision = 3",
        "uint64 raft_term = 4",
    },
    "etcdserverpb.RangeRequest": {
        "bytes key = 1",
        "bytes range_end = 2",
        "int64 limit = 3",
        "int64 revision = 4",
        "etcdserverpb.RangeRequest.SortOrder sort_order = 5",
        "etcdserverpb.RangeRequest.SortTarget sort_target = 6",
        "bool serializable = 7",
        "bool keys_only = 8",
        "bool count_only = 9",
        "int64 min_mod_revision = 10",
        "int64 max_mod_revision = 11",
        "int64 min_create_revision = 12",
        "int64 max_create_revision = 13",
    },
    "etcdserverpb.RangeResponse": {
        H,
        f"repeated {KV} kvs = 2",
        "bool more = 3",
        "int64 count = 4",
    },
    "etcdserverpb.PutRequest": {
        "bytes key = 1",
        "bytes value = 2",
        "int64 lease = 3",
        "bool prev_kv = 4",
        "bool ignore_value = 5",
        "bool ignore_lease = 6",
    },
    "etcdserverpb.PutResponse": {H, f"{KV} prev_kv = 2"},
    "etcdserverpb.DeleteRangeRequest": {
        "bytes key = 1",
        "bytes range_end = 2",
        "bool prev_kv = 3",
    },
    "etcdserverpb.DeleteRangeResponse": {
        H,
        "int64 deleted = 2",
        f"repeated {KV} prev_kvs = 3",
    },
    "etcdserverpb.RequestOp": {
        "etcdserverpb.RangeRequest request_range = 1",
        "etcdserverpb.PutRequest request_put = 2",
        "etcdserverpb.DeleteRangeRequest request_delete_range = 3",
        "etcdserverpb.TxnRequest request_txn = 4",
    },
    "etcdserverpb.ResponseOp": {
        "etcdserverpb.RangeResponse response_range = 1",
        "etcdserverpb.PutResponse response_put = 2",
        "etcdserverpb.DeleteRangeResponse response_delete_range = 3",
        "etcdserverpb.TxnResponse response_txn = 4",
    },
    "etcdserverpb.Compare": {
        "etcdserverpb.Compare.CompareResult result = 1",
        "etcdserverpb.Compare.CompareTarget target = 2",
        "bytes key = 3",
        "int64 version = 4",
        "int64 create_revision = 5",
        "int64 mod_revision = 6",
        "bytes value = 7",
        "int64 lease = 8",
        "bytes range_end = 64",
    },
    "etcdserverpb.TxnRequest": {
        "repeated etcdserverpb.Compare compare = 1",
        "repeated etcdserverpb.RequestOp success = 2",
        "repeated etcdserverpb.RequestOp failure = 3",
    },
    "etcdserverpb.TxnResponse": {
        H,
        "bool succeeded = 2",
        "repeated etcdserverpb.ResponseOp responses = 3",
    },
    "etcdserverpb.CompactionRequest": {"int64 revision = 1", "bool physical = 2"},
    "etcdserverpb.CompactionResponse": {H},
    # Watch
    "etcdserverpb.WatchRequest": {
        "etcdserverpb.WatchCreateRequest create_request = 1",
        "etcdserverpb.WatchCancelRequest cancel_request = 2",
        "etcdserverpb.WatchProgressRequest progress_request = 3",
    },
    "etcdserverpb.WatchCreateRequest": {
        "bytes key = 1",
        "bytes range_end = 2",
        "int64 start_revision = 3",
        "bool progress_notify = 4",
        "repeated etcdserverpb.WatchCreateRequest.FilterType filters = 5",
        "bool prev_kv = 6",
        "int64 watch_id = 7",
        "bool fragment = 8",
    },
    "etcdserverpb.WatchCancelRequest": {"int64 watch_id = 1"},
    "etcdserverpb.WatchProgressRequest": set(),
    "etcdserverpb.WatchResponse": {
        H,
        "int64 watch_id = 2",
        "bool created = 3",
        "bool canceled = 4",
        "int64 compact_revision = 5",
        "string cancel_reason = 6",
        "bool fragment = 7",
        "repeated mvccpb.Event events = 11",
    },
    # Lease
    "etcdserverpb.LeaseGrantRequest": {"int64 TTL = 1", "int64 ID = 2"},
    "etcdserverpb.LeaseGrantResponse": {H, "int64 ID = 2", "int64 TTL = 3", "string error = 4"},
    "etcdserverpb.LeaseRevokeRequest": {"int64 ID = 1"},
    "etcdserverpb.LeaseRevokeResponse": {H},
    "etcdserverpb.LeaseCheckpoint": {"int64 ID = 1", "int64 remaining_TTL = 2"},
    "etcdserverpb.LeaseCheckpointRequest": {
        "repeated etcdserverpb.LeaseCheckpoint checkpoints = 1",
    },
    "etcdserverpb.LeaseCheckpointResponse": {H},
    "etcdserverpb.LeaseKeepAliveRequest": {"int64 ID = 1"},
    "etcdserverpb.LeaseKeepAliveResponse": {H, "int64 ID = 2", "int64 TTL = 3"},
    "etcdserverpb.LeaseTimeToLiveRequest": {"int64 ID = 1", "bool keys = 2"},
    "etcdserverpb.LeaseTimeToLiveResponse": {
        H,
        "int64 ID = 2",
        "int64 TTL = 3",
        "int64 grantedTTL = 4",
        "repeated bytes keys = 5",
    },
    "etcdserverpb.LeaseLeasesRequest": set(),
    "etcdserverpb.LeaseStatus": {"int64 ID = 1"},
    "etcdserverpb.LeaseLeasesResponse": {H, "repeated etcdserverpb.LeaseStatus leases = 2"},
    # Cluster
    "etcdserverpb.Member": {
        "uint64 ID = 1",
        "string name = 2",
        "repeated string peerURLs = 3",
        "repeated string clientURLs = 4",
        "bool isLearner = 5",
    },
    "etcdserverpb.MemberAddRequest": {"repeated string peerURLs = 1", "bool isLearner = 2"},
    "etcdserverpb.MemberAddResponse": {
        H,
        "etcdserverpb.Member member = 2",
        "repeated etcdserverpb.Member members = 3",
    },
    "etcdserverpb.MemberRemoveRequest": {"uint64 ID = 1"},
    "etcdserverpb.MemberRemoveResponse": {H, "repeated etcdserverpb.Member members = 2"},
    "etcdserverpb.MemberUpdateRequest": {"uint64 ID = 1", "repeated string peerURLs = 2"},
    "etcdserverpb.MemberUpdateResponse": {H, "repeated etcdserverpb.Member members = 2"},
    "etcdserverpb.MemberListRequest": {"bool linearizable = 1"},
    "etcdserverpb.MemberListResponse": {H, "repeated etcdserverpb.Member members = 2"},
    "etcdserverpb.MemberPromoteRequest": {"uint64 ID = 1"},
    "etcdserverpb.MemberPromoteResponse": {H, "repeated etcdserverpb.Member members = 2"},
    # Maintenance
    "etcdserverpb.AlarmRequest": {
        "etcdserverpb.AlarmRequest.AlarmAction action = 1",
        "uint64 memberID = 2",
        "etcdserverpb.AlarmType alarm = 3",
    },
    "etcdserverpb.AlarmMember": {"uint64 memberID = 1", "etcdserverpb.AlarmType alarm = 2"},
    "etcdserverpb.AlarmResponse": {H, "repeated etcdserverpb.AlarmMember alarms = 2"},
    "etcdserverpb.StatusRequest": set(),
    "etcdserverpb.StatusResponse": {
        H,
        "string version = 2",
        "int64 dbSize = 3",
        "uint64 leader = 4",
        "uint64 raftIndex = 5",
        "uint64 raftTerm = 6",
        "uint64 raftAppliedIndex = 7",
        "repeated string errors = 8",
        "int64 dbSizeInUse = 9",
        "bool isLearner = 10",
        # 3.6
        "string storageVersion = 11",
        "int64 dbSizeQuota = 12",
        "etcdserverpb.DowngradeInfo downgradeInfo = 13",
    },
    "etcdserverpb.DowngradeInfo": {"bool enabled = 1", "string targetVersion = 2"},  # 3.6
    "etcdserverpb.DefragmentRequest": set(),
    "etcdserverpb.DefragmentResponse": {H},
    "etcdserverpb.HashRequest": set(),
    "etcdserverpb.HashResponse": {H, "uint32 hash = 2"},
    "etcdserverpb.HashKVRequest": {"int64 revision = 1"},
    "etcdserverpb.HashKVResponse": {
        H,
        "uint32 hash = 2",
        "int64 compact_revision = 3",
        "int64 hash_revision = 4",  # 4: 3.6
    },
    "etcdserverpb.SnapshotRequest": set(),
    "etcdserverpb.SnapshotResponse": {
        H,
        "uint64 remaining_bytes = 2",
        "bytes blob = 3",
        "string version = 4",  # 4: 3.6
    },
    "etcdserverpb.MoveLeaderRequest": {"uint64 targetID = 1"},
    "etcdserverpb.MoveLeaderResponse": {H},
    "etcdserverpb.DowngradeRequest": {
        "etcdserverpb.DowngradeRequest.DowngradeAction action = 1",
        "string version = 2",
    },
    "etcdserverpb.DowngradeResponse": {H, "string version = 2"},
    # Auth
    "etcdserverpb.AuthEnableRequest": set(),
    "etcdserverpb.AuthDisableRequest": set(),
    "etcdserverpb.AuthStatusRequest": set(),
    "etcdserverpb.AuthenticateRequest": {"string name = 1", "string password = 2"},
    "etcdserverpb.AuthUserAddRequest": {
        "string name = 1",
        "string password = 2",
        "authpb.UserAddOptions options = 3",
        "string hashedPassword = 4",
    },
    "etcdserverpb.AuthUserGetRequest": {"string name = 1"},
    "etcdserverpb.AuthUserDeleteRequest": {"string name = 1"},
    "etcdserverpb.AuthUserChangePasswordRequest": {
        "string name = 1",
        "string password = 2",
        "string hashedPassword = 3",
    },
    "etcdserverpb.AuthUserGrantRoleRequest": {"string user = 1", "string role = 2"},
    "etcdserverpb.AuthUserRevokeRoleRequest": {"string name = 1", "string role = 2"},
    "etcdserverpb.AuthRoleAddRequest": {"string name = 1"},
    "etcdserverpb.AuthRoleGetRequest": {"string role = 1"},
    "etcdserverpb.AuthUserListRequest": set(),
    "etcdserverpb.AuthRoleListRequest": set(),
    "etcdserverpb.AuthRoleDeleteRequest": {"string role = 1"},
    "etcdserverpb.AuthRoleGrantPermissionRequest": {
        "string name = 1",
        "authpb.Permission perm = 2",
    },
    "etcdserverpb.AuthRoleRevokePermissionRequest": {
        "string role = 1",
        "bytes key = 2",
        "bytes range_end = 3",
    },
    "etcdserverpb.AuthEnableResponse": {H},
    "etcdserverpb.AuthDisableResponse": {H},
    "etcdserverpb.AuthStatusResponse": {H, "bool enabled = 2", "uint64 authRevision = 3"},
    "etcdserverpb.AuthenticateResponse": {H, "string token = 2"},
    "etcdserverpb.AuthUserAddResponse": {H},
    "etcdserverpb.AuthUserGetResponse": {H, "repeated string roles = 2"},
    "etcdserverpb.AuthUserDeleteResponse": {H},
    "etcdserverpb.AuthUserChangePasswordResponse": {H},
    "etcdserverpb.AuthUserGrantRoleResponse": {H},
    "etcdserverpb.AuthUserRevokeRoleResponse": {H},
    "etcdserverpb.AuthRoleAddResponse": {H},
    "etcdserverpb.AuthRoleGetResponse": {H, "repeated authpb.Permission perm = 2"},
    "etcdserverpb.AuthRoleListResponse": {H, "repeated string roles = 2"},
    "etcdserverpb.AuthUserListResponse": {H, "repeated string users = 2"},
    "etcdserverpb.AuthRoleDeleteResponse": {H},
    "etcdserverpb.AuthRoleGrantPermissionResponse": {H},
    "etcdserverpb.AuthRoleRevokePermissionResponse": {H},
    # v3lockpb
    "v3lockpb.LockRequest": {"bytes name = 1", "int64 lease = 2"},
    "v3lockpb.LockResponse": {H, "bytes key = 2"},
    "v3lockpb.UnlockRequest": {"bytes key = 1"},
    "v3lockpb.UnlockResponse": {H},
    # v3electionpb
    "v3electionpb.CampaignRequest": {"bytes name = 1", "int64 lease = 2", "bytes value = 3"},
    "v3electionpb.CampaignResponse": {H, "v3electionpb.LeaderKey leader = 2"},
    "v3electionpb.LeaderKey": {
        "bytes name = 1",
        "bytes key = 2",
        "int64 rev = 3",
        "int64 lease = 4",
    },
    "v3electionpb.LeaderRequest": {"bytes name = 1"},
    "v3electionpb.LeaderResponse": {H, f"{KV} kv = 2"},
    "v3electionpb.ResignRequest": {"v3electionpb.LeaderKey leader = 1"},
    "v3electionpb.ResignResponse": {H},
    "v3electionpb.ProclaimRequest": {"v3electionpb.LeaderKey leader = 1", "bytes value = 2"},
    "v3electionpb.ProclaimResponse": {H},
}

ONEOFS: dict[str, dict[str, set[str]]] = {
    "etcdserverpb.RequestOp": {
        "request": {"request_range", "request_put", "request_delete_range", "request_txn"},
    },
    "etcdserverpb.ResponseOp": {
        "response": {"response_range", "response_put", "response_delete_range", "response_txn"},
    },
    "etcdserverpb.Compare": {
        "target_union": {"version", "create_revision", "mod_revision", "value", "lease"},
    },
    "etcdserverpb.WatchRequest": {
        "request_union": {"create_request", "cancel_request", "progress_request"},
    },
}

ENUMS: dict[str, dict[str, int]] = {
    "mvccpb.Event.EventType": {"PUT": 0, "DELETE": 1},
    "authpb.Permission.Type": {"READ": 0, "WRITE": 1, "READWRITE": 2},
    "etcdserverpb.RangeRequest.SortOrder": {"NONE": 0, "ASCEND": 1, "DESCEND": 2},
    "etcdserverpb.RangeRequest.SortTarget": {
        "KEY": 0,
        "VERSION": 1,
        "CREATE": 2,
        "MOD": 3,
        "VALUE": 4,
    },
    "etcdserverpb.Compare.CompareResult": {"EQUAL": 0, "GREATER": 1, "LESS": 2, "NOT_EQUAL": 3},
    "etcdserverpb.Compare.CompareTarget": {
        "VERSION": 0,
        "CREATE": 1,
        "MOD": 2,
        "VALUE": 3,
        "LEASE": 4,
    },
    "etcdserverpb.WatchCreateRequest.FilterType": {"NOPUT": 0, "NODELETE": 1},
    "etcdserverpb.AlarmType": {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2},
    "etcdserverpb.AlarmRequest.AlarmAction": {"GET": 0, "ACTIVATE": 1, "DEACTIVATE": 2},
    "etcdserverpb.DowngradeRequest.DowngradeAction": {"VALIDATE": 0, "ENABLE": 1, "CANCEL": 2},
}

FILES = (kv_pb2, auth_pb2, rpc_pb2, v3lock_pb2, v3election_pb2)

_SCALARS = {
    FD.TYPE_BOOL: "bool",
    FD.TYPE_BYTES: "bytes",
    FD.TYPE_STRING: "string",
    FD.TYPE_INT64: "int64",
    FD.TYPE_UINT64: "uint64",
    FD.TYPE_UINT32: "uint32",
}


def _declaration(field: _descriptor.FieldDescriptor) -> str:
    if field.message_type is not None:
        type_name = field.message_type.full_name
    elif field.enum_type is not None:
        type_name = field.enum_type.full_name
    else:
        type_name = _SCALARS[field.type]  # a KeyError here is an unexpected wire type
    repeated = "repeated " if field.is_repeated else ""
    return f"{repeated}{type_name} {field.name} = {field.number}"


def _with_nested(messages: Iterable[_descriptor.Descriptor]) -> Iterator[_descriptor.Descriptor]:
    for message in messages:
        yield message
        yield from _with_nested(message.nested_types)


def _all_messages() -> dict[str, _descriptor.Descriptor]:
    return {
        m.full_name: m
        for module in FILES
        for m in _with_nested(module.DESCRIPTOR.message_types_by_name.values())
    }


def _all_enums() -> dict[str, _descriptor.EnumDescriptor]:
    enums = {
        e.full_name: e for module in FILES for e in module.DESCRIPTOR.enum_types_by_name.values()
    }
    for message in _all_messages().values():
        enums.update({e.full_name: e for e in message.enum_types})
    return enums


def test_the_set_of_messages_is_etcds() -> None:
    assert set(_all_messages()) == set(SCHEMA)


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_message_fields(name: str) -> None:
    message = _all_messages()[name]
    assert {_declaration(f) for f in message.fields} == SCHEMA[name]


def test_oneofs() -> None:
    messages = _all_messages()
    for name, message in messages.items():
        got = {o.name: {f.name for f in o.fields} for o in message.oneofs}
        assert got == ONEOFS.get(name, {}), name


def test_enums() -> None:
    enums = _all_enums()
    assert set(enums) == set(ENUMS)
    for name, values in ENUMS.items():
        assert {v.name: v.number for v in enums[name].values} == values, name


def test_packages_and_file_dependencies() -> None:
    assert [m.DESCRIPTOR.package for m in FILES] == [
        "mvccpb",
        "authpb",
        "etcdserverpb",
        "v3lockpb",
        "v3electionpb",
    ]
    deps = {m.DESCRIPTOR.name: {d.package for d in m.DESCRIPTOR.dependencies} for m in FILES}
    assert deps == {
        "cluster/proto/mvccpb/kv.proto": set(),
        "cluster/proto/authpb/auth.proto": set(),
        "cluster/proto/etcdserverpb/rpc.proto": {"mvccpb", "authpb"},
        "cluster/proto/v3lockpb/v3lock.proto": {"etcdserverpb"},
        "cluster/proto/v3electionpb/v3election.proto": {"etcdserverpb", "mvccpb"},
    }


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------

U, SS, CS, BIDI = "unary", "server-stream", "client-stream", "bidi"

SERVICES: dict[str, dict[str, tuple[str, str, str]]] = {
    "etcdserverpb.KV": {
        "Range": ("RangeRequest", "RangeResponse", U),
        "Put": ("PutRequest", "PutResponse", U),
        "DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse", U),
        "Txn": ("TxnRequest", "TxnResponse", U),
        "Compact": ("CompactionRequest", "CompactionResponse", U),
    },
    "etcdserverpb.Watch": {"Watch": ("WatchRequest", "WatchResponse", BIDI)},
    "etcdserverpb.Lease": {
        "LeaseGrant": ("LeaseGrantRequest", "LeaseGrantResponse", U),
        "LeaseRevoke": ("LeaseRevokeRequest", "LeaseRevokeResponse", U),
        "LeaseKeepAlive": ("LeaseKeepAliveRequest", "LeaseKeepAliveResponse", BIDI),
        "LeaseTimeToLive": ("LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", U),
        "LeaseLeases": ("LeaseLeasesRequest", "LeaseLeasesResponse", U),
    },
    "etcdserverpb.Cluster": {
        "MemberAdd": ("MemberAddRequest", "MemberAddResponse", U),
        "MemberRemove": ("MemberRemoveRequest", "MemberRemoveResponse", U),
        "MemberUpdate": ("MemberUpdateRequest", "MemberUpdateResponse", U),
        "MemberList": ("MemberListRequest", "MemberListResponse", U),
        "MemberPromote": ("MemberPromoteRequest", "MemberPromoteResponse", U),
    },
    "etcdserverpb.Maintenance": {
        "Alarm": ("AlarmRequest", "AlarmResponse", U),
        "Status": ("StatusRequest", "StatusResponse", U),
        "Defragment": ("DefragmentRequest", "DefragmentResponse", U),
        "Hash": ("HashRequest", "HashResponse", U),
        "HashKV": ("HashKVRequest", "HashKVResponse", U),
        "Snapshot": ("SnapshotRequest", "SnapshotResponse", SS),
        "MoveLeader": ("MoveLeaderRequest", "MoveLeaderResponse", U),
        "Downgrade": ("DowngradeRequest", "DowngradeResponse", U),
    },
    "etcdserverpb.Auth": {
        "AuthEnable": ("AuthEnableRequest", "AuthEnableResponse", U),
        "AuthDisable": ("AuthDisableRequest", "AuthDisableResponse", U),
        "AuthStatus": ("AuthStatusRequest", "AuthStatusResponse", U),
        "Authenticate": ("AuthenticateRequest", "AuthenticateResponse", U),
        "UserAdd": ("AuthUserAddRequest", "AuthUserAddResponse", U),
        "UserGet": ("AuthUserGetRequest", "AuthUserGetResponse", U),
        "UserList": ("AuthUserListRequest", "AuthUserListResponse", U),
        "UserDelete": ("AuthUserDeleteRequest", "AuthUserDeleteResponse", U),
        "UserChangePassword": (
            "AuthUserChangePasswordRequest",
            "AuthUserChangePasswordResponse",
            U,
        ),
        "UserGrantRole": ("AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", U),
        "UserRevokeRole": ("AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", U),
        "RoleAdd": ("AuthRoleAddRequest", "AuthRoleAddResponse", U),
        "RoleGet": ("AuthRoleGetRequest", "AuthRoleGetResponse", U),
        "RoleList": ("AuthRoleListRequest", "AuthRoleListResponse", U),
        "RoleDelete": ("AuthRoleDeleteRequest", "AuthRoleDeleteResponse", U),
        "RoleGrantPermission": (
            "AuthRoleGrantPermissionRequest",
            "AuthRoleGrantPermissionResponse",
            U,
        ),
        "RoleRevokePermission": (
            "AuthRoleRevokePermissionRequest",
            "AuthRoleRevokePermissionResponse",
            U,
        ),
    },
    "v3lockpb.Lock": {
        "Lock": ("LockRequest", "LockResponse", U),
        "Unlock": ("UnlockRequest", "UnlockResponse", U),
    },
    "v3electionpb.Election": {
        "Campaign": ("CampaignRequest", "CampaignResponse", U),
        "Proclaim": ("ProclaimRequest", "ProclaimResponse", U),
        "Leader": ("LeaderRequest", "LeaderResponse", U),
        "Observe": ("LeaderRequest", "LeaderResponse", SS),
        "Resign": ("ResignRequest", "ResignResponse", U),
    },
}

_KIND = {(False, False): U, (False, True): SS, (True, False): CS, (True, True): BIDI}


def test_services_methods_and_streaming_kinds() -> None:
    got = {}
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            package = service.full_name.rsplit(".", 1)[0]
            got[service.full_name] = {
                m.name: (
                    m.input_type.full_name.removeprefix(package + "."),
                    m.output_type.full_name.removeprefix(package + "."),
                    _KIND[(m.client_streaming, m.server_streaming)],
                )
                for m in service.methods
            }
    assert got == SERVICES


def test_grpc_stubs_and_servicers_exist() -> None:
    modules = {
        "etcdserverpb": rpc_pb2_grpc,
        "v3lockpb": v3lock_pb2_grpc,
        "v3electionpb": v3election_pb2_grpc,
    }
    channel = grpc.insecure_channel("127.0.0.1:1")  # never connected: stubs are lazy
    try:
        for full_name, methods in SERVICES.items():
            package, service = full_name.split(".")
            module = modules[package]
            stub = getattr(module, f"{service}Stub")(channel)
            servicer = getattr(module, f"{service}Servicer")
            assert callable(getattr(module, f"add_{service}Servicer_to_server"))
            for method in methods:
                assert callable(getattr(stub, method)), (full_name, method)
                assert callable(getattr(servicer, method)), (full_name, method)
    finally:
        channel.close()


class _KV(rpc_pb2_grpc.KVServicer):
    def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        kv = kv_pb2.KeyValue(key=request.key, value=b"bar", create_revision=2, mod_revision=2)
        return rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=2), kvs=[kv], count=1)


class _Election(v3election_pb2_grpc.ElectionServicer):
    def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.ServicerContext
    ) -> Iterator[v3election_pb2.LeaderResponse]:
        for value in (b"a", b"b"):
            yield v3election_pb2.LeaderResponse(kv=kv_pb2.KeyValue(key=request.name, value=value))


def test_round_trip_through_a_grpc_server() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpc_pb2_grpc.add_KVServicer_to_server(_KV(), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(_Election(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # The method path etcd's clients call, with raw bytes in and out.
            raw = channel.unary_unary("/etcdserverpb.KV/Range")
            reply = raw(bytes.fromhex("0a03666f6f"), timeout=10)
            assert rpc_pb2.RangeResponse.FromString(reply).kvs[0].value == b"bar"
            resp = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=10)
            assert (resp.header.revision, resp.count, resp.kvs[0].key) == (2, 1, b"foo")
            observed = v3election_pb2_grpc.ElectionStub(channel).Observe(
                v3election_pb2.LeaderRequest(name=b"e"), timeout=10
            )
            assert [r.kv.value for r in observed] == [b"a", b"b"]
            with pytest.raises(grpc.RpcError) as err:
                rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"k"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)


# ---------------------------------------------------------------------------
# Generated code is current
# ---------------------------------------------------------------------------


def test_generated_code_matches_the_proto_sources(capsys: pytest.CaptureFixture[str]) -> None:
    ok = generate.check()
    assert ok, capsys.readouterr().out
