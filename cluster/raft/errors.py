"""Errors the Raft core raises to its driver."""

from __future__ import annotations


class RaftError(Exception):
    """Base of all Raft core errors."""


class CompactedError(RaftError):
    """The requested index is older than the first kept entry."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(f"raft: requested index {index} is unavailable due to compaction")


class UnavailableError(RaftError):
    """The requested index is newer than the last entry."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(f"raft: requested entry at index {index} is unavailable")


class SnapshotOutOfDateError(RaftError):
    def __init__(self, index: int = 0) -> None:
        super().__init__(f"raft: requested snapshot index {index} is older than the existing one")


class ProposalDropped(RaftError):
    """A proposal (or read request) was refused; ``reason`` says why."""

    NO_LEADER = "no leader"
    TRANSFERRING = "leadership transfer in progress"
    CONF_CHANGE_PENDING = "a membership change is already pending"
    LEARNER_NOT_READY = "can only promote a learner member which is in sync with leader"
    NOT_A_MEMBER = "this node is not a member of the cluster"
    UNKNOWN_MEMBER = "no such member"
    MEMBER_EXISTS = "member already exists"
    NOT_LEARNER = "member is not a learner"
    LAST_VOTER = "cannot remove the last voting member"

    def __init__(self, reason: str) -> None:
        super().__init__(f"raft: proposal dropped: {reason}")
        self.reason = reason
