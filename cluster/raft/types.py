"""Plain data exchanged between the Raft core and its driver.

Everything here is a value: the core never does I/O with it. The driver turns
these into protobuf on the wire and records in the WAL.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE = 0
"""Node id meaning "nobody" (no leader, no vote)."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    """Message kinds; the numbers are etcd raftpb's MessageType values."""

    HUP = 0  # local: start an election
    BEAT = 1  # local: leader sends heartbeats
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10  # local: the driver could not reach a peer
    SNAP_STATUS = 11  # local: the driver reports a snapshot send result
    CHECK_QUORUM = 12  # local
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)


class StateType(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class ConfChangeType(enum.IntEnum):
    """Single-step membership changes; numbers as etcd raftpb's ConfChangeType."""

    ADD_NODE = 0  # add a voter, or promote an existing learner
    REMOVE_NODE = 1
    UPDATE_NODE = 2
    ADD_LEARNER_NODE = 3


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0


EMPTY_HARD_STATE = HardState()


@dataclass(slots=True, frozen=True)
class ConfState:
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()


@dataclass(slots=True, frozen=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


@dataclass(slots=True, frozen=True)
class Snapshot:
    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


_CONF_CHANGE_HEADER = struct.Struct(">BQ")


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A membership change carried in a CONF_CHANGE entry."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _CONF_CHANGE_HEADER.pack(self.type, self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < _CONF_CHANGE_HEADER.size:
            raise ValueError(f"conf change of {len(data)} bytes is too short")
        kind, node_id = _CONF_CHANGE_HEADER.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[_CONF_CHANGE_HEADER.size :]))


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(slots=True, frozen=True)
class SoftState:
    """Volatile state worth telling the driver about; not persisted."""

    lead: int
    state: StateType


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver.

    Order of handling: persist ``snapshot``, ``entries`` and ``hard_state``
    (one fsync), then send ``messages``, then apply ``committed_entries`` and
    serve ``read_states``, then call ``advance(ready)``. A leader may send its
    messages before persisting (it counts itself only after ``advance``), and may
    hold back mere commit notices until it has answered its own clients when
    ``forwarded_committed`` is false.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    must_sync: bool = False
    # Leader only: some of ``committed_entries`` may have been proposed through another
    # member, whose client waits for that member to apply them (so for the commit notice).
    forwarded_committed: bool = False
