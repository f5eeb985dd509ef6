"""A pure, deterministic Raft core: no sockets, threads, clocks, disk or hidden randomness."""

from .errors import CompactedError, ProposalDropped, RaftError, UnavailableError
from .log import MemoryStorage
from .node import Config, RaftNode, Status, bootstrap
from .progress import ProgressState
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProgressState",
    "ProposalDropped",
    "RaftError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "StateType",
    "Status",
    "UnavailableError",
    "bootstrap",
]
