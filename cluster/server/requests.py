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
# An alarm raised or cleared (etcd's AlarmRequest: NOSPACE, CORRUPT).
InternalRequest = (
    WriteRequest
    | pb.Member
    | pb.MemberUpdateRequest
    | pb.AlarmRequest
    | pb.LeaseGrantRequest
    | pb.LeaseRevokeRequest
    | pb.LeaseCheckpointRequest
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
