"""Small typed results returned by the client instead of raw protobuf messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Union

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2

if TYPE_CHECKING:
    from cluster.proto.v3electionpb import v3election_pb2 as epb

__all__ = [
    "Alarm",
    "DeleteResponse",
    "Event",
    "EventType",
    "GetResponse",
    "KeyValue",
    "LeaderKey",
    "LeaseGrantResponse",
    "LeaseKeepAliveResponse",
    "LeaseTimeToLiveResponse",
    "Member",
    "PutResponse",
    "ResponseHeader",
    "Status",
    "TxnResponse",
    "WatchResponse",
]


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """Which member answered, and the store revision and raft term the answer reflects."""

    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0

    @classmethod
    def from_pb(cls, h: pb.ResponseHeader) -> ResponseHeader:
        return cls(h.cluster_id, h.member_id, h.revision, h.raft_term)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's state at some revision (``lease`` 0: none)."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_pb(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watch; ``prev_kv`` only when the watch asked for it."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def key(self) -> bytes:
        return self.kv.key

    @property
    def revision(self) -> int:
        """The revision of the change (the key's mod revision)."""
        return self.kv.mod_revision

    @classmethod
    def from_pb(cls, ev: kv_pb2.Event) -> Event:
        kind = EventType.DELETE if ev.type == kv_pb2.Event.DELETE else EventType.PUT
        prev = KeyValue.from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None
        return cls(kind, KeyValue.from_pb(ev.kv), prev)


@dataclass(frozen=True, slots=True)
class GetResponse:
    """A range read: ``kvs`` (at most ``limit``), ``more`` if cut short, ``count`` in range."""

    header: ResponseHeader
    kvs: list[KeyValue] = field(default_factory=list)
    more: bool = False
    count: int = 0

    @property
    def revision(self) -> int:
        return self.header.revision

    @property
    def kv(self) -> KeyValue | None:
        """The first key-value, or None (handy for single-key gets)."""
        return self.kvs[0] if self.kvs else None

    @property
    def value(self) -> bytes | None:
        """The first value, or None when nothing matched."""
        return self.kvs[0].value if self.kvs else None

    def __iter__(self) -> Iterator[KeyValue]:
        return iter(self.kvs)

    def __len__(self) -> int:
        return len(self.kvs)

    @classmethod
    def from_pb(cls, r: pb.RangeResponse) -> GetResponse:
        kvs = [KeyValue.from_pb(kv) for kv in r.kvs]
        return cls(ResponseHeader.from_pb(r.header), kvs, r.more, r.count)


@dataclass(frozen=True, slots=True)
class PutResponse:
    header: ResponseHeader
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_pb(cls, r: pb.PutResponse) -> PutResponse:
        prev = KeyValue.from_pb(r.prev_kv) if r.HasField("prev_kv") else None
        return cls(ResponseHeader.from_pb(r.header), prev)


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    header: ResponseHeader
    deleted: int = 0
    prev_kvs: list[KeyValue] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_pb(cls, r: pb.DeleteRangeResponse) -> DeleteResponse:
        prev = [KeyValue.from_pb(kv) for kv in r.prev_kvs]
        return cls(ResponseHeader.from_pb(r.header), r.deleted, prev)


OpResponse = Union[GetResponse, PutResponse, DeleteResponse, "TxnResponse"]


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """``succeeded``: whether the compares held; ``responses``: one per op of the branch taken."""

    header: ResponseHeader
    succeeded: bool
    responses: list[OpResponse] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_pb(cls, r: pb.TxnResponse) -> TxnResponse:
        out: list[OpResponse] = []
        for op in r.responses:
            which = op.WhichOneof("response")
            if which == "response_range":
                out.append(GetResponse.from_pb(op.response_range))
            elif which == "response_put":
                out.append(PutResponse.from_pb(op.response_put))
            elif which == "response_delete_range":
                out.append(DeleteResponse.from_pb(op.response_delete_range))
            elif which == "response_txn":
                out.append(TxnResponse.from_pb(op.response_txn))
        return cls(ResponseHeader.from_pb(r.header), r.succeeded, out)


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """A batch of events from a watch, in revision order.

    ``revision`` is the store revision when the batch was sent; a batch without events is a
    progress notification (everything up to ``revision`` has been delivered).
    """

    header: ResponseHeader
    events: list[Event] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return self.header.revision

    @property
    def is_progress_notify(self) -> bool:
        return not self.events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class LeaseGrantResponse:
    header: ResponseHeader
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseKeepAliveResponse:
    header: ResponseHeader
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseTimeToLiveResponse:
    """``ttl``: seconds left (-1 when the lease is gone); ``keys`` only when asked for."""

    header: ResponseHeader
    id: int
    ttl: int
    granted_ttl: int
    keys: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool = False

    @classmethod
    def from_pb(cls, m: pb.Member) -> Member:
        return cls(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner)


@dataclass(frozen=True, slots=True)
class Status:
    """One member's view (Maintenance.Status) as answered at ``endpoint``."""

    endpoint: str
    header: ResponseHeader
    version: str
    db_size: int
    db_size_in_use: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: list[str]
    is_learner: bool

    @property
    def member_id(self) -> int:
        return self.header.member_id

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.header.member_id

    @classmethod
    def from_pb(cls, endpoint: str, r: pb.StatusResponse) -> Status:
        return cls(
            endpoint, ResponseHeader.from_pb(r.header), r.version, r.dbSize, r.dbSizeInUse,
            r.leader, r.raftIndex, r.raftTerm, r.raftAppliedIndex, list(r.errors), r.isLearner,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Alarm:
    """An active alarm: ``alarm`` is ``"NOSPACE"`` or ``"CORRUPT"``."""

    member_id: int
    alarm: str


@dataclass(frozen=True, slots=True)
class LeaderKey:
    """Proof of leadership in an election (etcd's v3election LeaderKey)."""

    name: bytes
    key: bytes
    rev: int
    lease: int

    @classmethod
    def from_pb(cls, k: epb.LeaderKey) -> LeaderKey:
        return cls(k.name, k.key, k.rev, k.lease)
