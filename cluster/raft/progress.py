"""What a leader knows about each member's log, and the quorum arithmetic on it."""

from __future__ import annotations

import enum
from collections import deque

from .types import ConfState


class ProgressState(enum.IntEnum):
    PROBE = 0  # one message per heartbeat until we find where the logs agree
    REPLICATE = 1  # stream entries optimistically, bounded by the in-flight window
    SNAPSHOT = 2  # a snapshot is on its way; send nothing else


class Inflights:
    """The last index of each append in flight to one follower, oldest first."""

    __slots__ = ("_queue", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, last_index: int) -> None:
        if len(self._queue) >= self.capacity:
            raise OverflowError("cannot add into a full inflights window")
        self._queue.append(last_index)

    def free_le(self, index: int) -> None:
        queue = self._queue
        while queue and queue[0] <= index:
            queue.popleft()

    def free_first_one(self) -> None:
        if self._queue:
            self._queue.popleft()

    def full(self) -> bool:
        return len(self._queue) >= self.capacity

    def reset(self) -> None:
        self._queue.clear()


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next}"
            f"{' learner' if self.is_learner else ''}"
            f"{f' snap={self.pending_snapshot}' if self.pending_snapshot else ''}"
            f" inflight={len(self.inflights)})"
        )

    def reset(self, next_index: int) -> None:
        """Forget everything known about the member (a new term began)."""
        self.match = 0
        self.next = next_index
        self.recent_active = False
        self._reset_state(ProgressState.PROBE)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower has ``index``; False if that is old news."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append after ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


class ProgressTracker:
    """Progress of every member, the voter and learner sets, and election votes."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.progress: dict[int, Progress] = {}
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(frozenset(self.voters), frozenset(self.learners))

    def apply_conf_state(self, conf_state: ConfState, next_index: int) -> None:
        self.progress.clear()
        self.voters = set(conf_state.voters)
        self.learners = set(conf_state.learners)
        for node_id in self.voters:
            self.progress[node_id] = Progress(next_index, self.max_inflight, False)
        for node_id in self.learners:
            self.progress[node_id] = Progress(next_index, self.max_inflight, True)

    def add(self, node_id: int, next_index: int, learner: bool) -> Progress:
        """Add a member, or promote a learner when ``learner`` is False."""
        pr = self.progress.get(node_id)
        if pr is None:
            pr = Progress(next_index, self.max_inflight, learner)
            self.progress[node_id] = pr
        elif pr.is_learner and not learner:
            pr.is_learner = False
        (self.learners if pr.is_learner else self.voters).add(node_id)
        (self.voters if pr.is_learner else self.learners).discard(node_id)
        pr.recent_active = True  # a new member gets an election timeout before it counts as lost
        return pr

    def remove(self, node_id: int) -> None:
        self.progress.pop(node_id, None)
        self.voters.discard(node_id)
        self.learners.discard(node_id)
        self.votes.pop(node_id, None)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def has_quorum(self, ids: set[int] | dict[int, bool]) -> bool:
        return sum(1 for v in self.voters if v in ids) >= self.quorum()

    def committed(self) -> int:
        """The highest index a quorum of voters has on disk."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[self.quorum() - 1]

    def quorum_active(self, self_id: int) -> bool:
        active = sum(1 for v in self.voters if v == self_id or self.progress[v].recent_active)
        return active >= self.quorum()

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        quorum = self.quorum()
        if granted >= quorum:
            return granted, rejected, VoteResult.WON
        if len(self.voters) - rejected < quorum:
            return granted, rejected, VoteResult.LOST
        return granted, rejected, VoteResult.PENDING


class VoteResult(enum.Enum):
    PENDING = 0
    LOST = 1
    WON = 2
