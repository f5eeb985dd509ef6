"""Client write requests as Raft entry data: who proposed it, which request, what kind."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.storage.codec import CodecError

_HEADER = struct.Struct(">QQB")  # origin member id, request id, kind

WriteRequest = pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest | pb.CompactionRequest
# A member publishing its name and client URLs to the cluster (etcd's "publish"), and
# MemberUpdate's new peer URLs for a member.
# Auth changes (cluster/server/authz.py). An AuthenticateRequest entry carries the token
# prefix its proposer drew in ``password`` (the password itself never enters the log), and
# user passwords travel only as ``hashedPassword``.
AuthRequest = (
    pb.AuthEnableRequest
    | pb.AuthDisableRequest
    | pb.AuthenticateRequest
    | pb.AuthUserAddRequest
    | pb.AuthUserDeleteRequest
    | pb.AuthUserChangePasswordRequest
    | pb.AuthUserGrantRoleRequest
    | pb.AuthUserRevokeRoleRequest
    | pb.AuthRoleAddRequest
    | pb.AuthRoleDeleteRequest
    | pb.AuthRoleGrantPermissionRequest
    | pb.AuthRoleRevokePermissionRequest
)
# An alarm raised or cleared (etcd's AlarmRequest: NOSPACE, CORRUPT).
InternalRequest = (
    WriteRequest
    | pb.Member
    | pb.MemberUpdateRequest
    | pb.AlarmRequest
    | pb.LeaseGrantRequest
    | pb.LeaseRevokeRequest
    | pb.LeaseCheckpointRequest
    | AuthRequest
)


class RequestKind(enum.IntEnum):
    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACTION = 4
    PUBLISH_MEMBER = 5
    UPDATE_MEMBER = 6
    ALARM = 7
    LEASE_GRANT = 8
    LEASE_REVOKE = 9
    LEASE_CHECKPOINT = 10
    AUTH_ENABLE = 11
    AUTH_DISABLE = 12
    AUTHENTICATE = 13
    AUTH_USER_ADD = 14
    AUTH_USER_DELETE = 15
    AUTH_USER_CHANGE_PASSWORD = 16
    AUTH_USER_GRANT_ROLE = 17
    AUTH_USER_REVOKE_ROLE = 18
    AUTH_ROLE_ADD = 19
    AUTH_ROLE_DELETE = 20
    AUTH_ROLE_GRANT_PERMISSION = 21
    AUTH_ROLE_REVOKE_PERMISSION = 22


_KIND_OF: dict[type, RequestKind] = {
    pb.PutRequest: RequestKind.PUT,
    pb.DeleteRangeRequest: RequestKind.DELETE_RANGE,
    pb.TxnRequest: RequestKind.TXN,
    pb.CompactionRequest: RequestKind.COMPACTION,
    pb.Member: RequestKind.PUBLISH_MEMBER,
    pb.MemberUpdateRequest: RequestKind.UPDATE_MEMBER,
    pb.AlarmRequest: RequestKind.ALARM,
    pb.LeaseGrantRequest: RequestKind.LEASE_GRANT,
    pb.LeaseRevokeRequest: RequestKind.LEASE_REVOKE,
    pb.LeaseCheckpointRequest: RequestKind.LEASE_CHECKPOINT,
    pb.AuthEnableRequest: RequestKind.AUTH_ENABLE,
    pb.AuthDisableRequest: RequestKind.AUTH_DISABLE,
    pb.AuthenticateRequest: RequestKind.AUTHENTICATE,
    pb.AuthUserAddRequest: RequestKind.AUTH_USER_ADD,
    pb.AuthUserDeleteRequest: RequestKind.AUTH_USER_DELETE,
    pb.AuthUserChangePasswordRequest: RequestKind.AUTH_USER_CHANGE_PASSWORD,
    pb.AuthUserGrantRoleRequest: RequestKind.AUTH_USER_GRANT_ROLE,
    pb.AuthUserRevokeRoleRequest: RequestKind.AUTH_USER_REVOKE_ROLE,
    pb.AuthRoleAddRequest: RequestKind.AUTH_ROLE_ADD,
    pb.AuthRoleDeleteRequest: RequestKind.AUTH_ROLE_DELETE,
    pb.AuthRoleGrantPermissionRequest: RequestKind.AUTH_ROLE_GRANT_PERMISSION,
    pb.AuthRoleRevokePermissionRequest: RequestKind.AUTH_ROLE_REVOKE_PERMISSION,
}
_TYPE_OF = {kind: cls for cls, kind in _KIND_OF.items()}


@dataclass(frozen=True, slots=True)
class ProposedRequest:
    origin: int  # the member whose client is waiting for the answer
    request_id: int
    request: InternalRequest


def encode_request(origin: int, request_id: int, request: InternalRequest) -> bytes:
    return _HEADER.pack(origin, request_id, _KIND_OF[type(request)]) + request.SerializeToString()


def decode_request(data: bytes) -> ProposedRequest:
    if len(data) < _HEADER.size:
        raise CodecError(f"request entry of {len(data)} bytes is too short")
    origin, request_id, kind = _HEADER.unpack_from(data)
    try:
        cls = _TYPE_OF[RequestKind(kind)]
    except ValueError as exc:
        raise CodecError(f"unknown request kind {kind}") from exc
    request = cls()
    request.ParseFromString(data[_HEADER.size :])
    return ProposedRequest(origin, request_id, request)
