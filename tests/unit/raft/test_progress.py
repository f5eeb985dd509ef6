"""Inflights, Progress and ProgressTracker: flow control, probing and quorum arithmetic."""

from __future__ import annotations

import pytest

from cluster.raft.progress import (
    Inflights,
    Progress,
    ProgressState,
    ProgressTracker,
    VoteResult,
)
from cluster.raft.types import ConfState


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def tracker(
    voters: list[int],
    learners: list[int] | None = None,
    matches: dict[int, int] | None = None,
) -> ProgressTracker:
    trk = ProgressTracker(max_inflight=4)
    conf = ConfState(frozenset(voters), frozenset(learners or []))
    trk.apply_conf_state(conf, next_index=1)
    for node_id, match in (matches or {}).items():
        trk.progress[node_id].match = match
    return trk


def progress(state: ProgressState, match: int, next_index: int) -> Progress:
    pr = Progress(next_index, max_inflight=4, is_learner=False)
    pr.match = match
    pr.state = state
    return pr


# ---------------------------------------------------------------------------
# Inflights
# ---------------------------------------------------------------------------
def test_inflights_add_until_full() -> None:
    """Inflights accepts up to its capacity, then reports full and refuses more."""
    inf = Inflights(3)
    for i in (5, 7, 9):
        assert not inf.full()
        inf.add(i)
    assert inf.full() and len(inf) == 3
    with pytest.raises(OverflowError):
        inf.add(10)
    assert len(inf) == 3


def test_inflights_free_le_frees_only_acknowledged_prefix() -> None:
    """free_le drops exactly the in-flight appends whose last index is <= the ack."""
    inf = Inflights(4)
    for i in (5, 7, 9, 11):
        inf.add(i)
    inf.free_le(4)
    assert len(inf) == 4
    inf.free_le(7)
    assert len(inf) == 2 and not inf.full()
    inf.free_le(8)
    assert len(inf) == 2
    inf.add(13)
    inf.add(15)
    assert inf.full()
    inf.free_le(100)
    assert len(inf) == 0


def test_inflights_free_first_one_and_reset() -> None:
    """free_first_one frees the oldest slot (a no-op when empty); reset empties the window."""
    inf = Inflights(2)
    inf.free_first_one()
    assert len(inf) == 0
    inf.add(3)
    inf.add(4)
    inf.free_first_one()
    assert len(inf) == 1 and not inf.full()
    inf.free_le(3)  # 3 is gone: 4 is still in flight
    assert len(inf) == 1
    inf.free_le(4)
    assert len(inf) == 0
    inf.add(8)
    inf.reset()
    assert len(inf) == 0


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("state", [ProgressState.PROBE, ProgressState.REPLICATE])
def test_maybe_update_only_moves_forward(state: ProgressState) -> None:
    """maybe_update raises match (and next if needed); old acks change nothing."""
    pr = progress(state, match=3, next_index=8)
    pr.probe_sent = True
    assert pr.maybe_update(5)
    assert (pr.match, pr.next) == (5, 8)  # next is never moved back
    assert not pr.probe_sent
    assert pr.maybe_update(9)
    assert (pr.match, pr.next) == (9, 10)
    pr.probe_sent = True
    assert not pr.maybe_update(9)
    assert not pr.maybe_update(4)
    assert (pr.match, pr.next) == (9, 10)
    assert pr.probe_sent  # a stale ack does not unpause a probe


def test_maybe_decr_to_in_replicate() -> None:
    """In replicate, a rejection at or below match is stale; otherwise next falls to match+1."""
    pr = progress(ProgressState.REPLICATE, match=5, next_index=10)
    assert not pr.maybe_decr_to(5, 0)
    assert not pr.maybe_decr_to(3, 0)
    assert pr.next == 10
    assert pr.maybe_decr_to(9, 2)
    assert pr.next == 6  # the hint is not used below match+1


def test_maybe_decr_to_in_probe() -> None:
    """In probe, only a rejection of next-1 counts; next uses the hint, bounded by match+1."""
    pr = progress(ProgressState.PROBE, match=0, next_index=10)
    pr.probe_sent = True
    assert not pr.maybe_decr_to(8, 3)  # not the index we probed: stale
    assert pr.next == 10 and pr.probe_sent
    assert pr.maybe_decr_to(9, 3)
    assert pr.next == 4 and not pr.probe_sent
    assert pr.maybe_decr_to(3, 7)  # hint above the rejected index: just step back
    assert pr.next == 3

    pr2 = progress(ProgressState.PROBE, match=5, next_index=10)
    assert pr2.maybe_decr_to(9, 1)
    assert pr2.next == 6  # never below match+1


def test_become_probe_after_snapshot() -> None:
    """Leaving SNAPSHOT probes right after the snapshot (or after match if that is newer)."""
    pr = progress(ProgressState.REPLICATE, match=5, next_index=9)
    pr.inflights.add(8)
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 20)
    assert len(pr.inflights) == 0 and pr.is_paused()
    pr.become_probe()
    assert (pr.state, pr.next, pr.pending_snapshot) == (ProgressState.PROBE, 21, 0)
    assert not pr.is_paused()

    pr.become_snapshot(20)
    pr.match = 25
    pr.become_probe()
    assert pr.next == 26

    pr.become_snapshot(30)
    pr.pending_snapshot = 0  # a failed snapshot is reported with the pending index cleared
    pr.become_probe()
    assert pr.next == 26


def test_become_probe_and_replicate_reset_next_to_match() -> None:
    """Outside SNAPSHOT, become_probe/become_replicate restart at match+1 with an empty window."""
    pr = progress(ProgressState.REPLICATE, match=4, next_index=12)
    pr.inflights.add(11)
    pr.become_probe()
    assert (pr.state, pr.next, len(pr.inflights)) == (ProgressState.PROBE, 5, 0)
    pr.probe_sent = True
    assert pr.is_paused()
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (ProgressState.REPLICATE, 5, False)
    for i in range(4):
        pr.inflights.add(5 + i)
    assert pr.is_paused()


# ---------------------------------------------------------------------------
# ProgressTracker
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("voters", "learners", "matches", "want"),
    [
        ([1], [], {1: 7}, 7),
        ([1, 2, 3], [], {1: 5, 2: 3, 3: 1}, 3),
        ([1, 2, 3], [], {1: 5, 2: 5, 3: 1}, 5),
        ([1, 2, 3], [], {1: 5, 2: 0, 3: 0}, 0),
        ([1, 2, 3, 4], [], {1: 4, 2: 3, 3: 2, 4: 1}, 2),
        ([1, 2, 3, 4, 5], [], {1: 9, 2: 7, 3: 5, 4: 3, 5: 1}, 5),
        ([1, 2, 3, 4, 5], [], {1: 9, 2: 9, 3: 1, 4: 1, 5: 1}, 1),
        # Learners are ignored, however far ahead or behind they are.
        ([1, 2, 3], [4, 5], {1: 5, 2: 1, 3: 1, 4: 9, 5: 9}, 1),
        ([1, 2, 3], [4], {1: 5, 2: 5, 3: 5, 4: 0}, 5),
        ([1, 2, 3, 4, 5], [6], {1: 9, 2: 8, 3: 2, 4: 2, 5: 2, 6: 9}, 2),
        ([], [4], {4: 9}, 0),
    ],
)
def test_committed_is_the_quorum_match(
    voters: list[int], learners: list[int], matches: dict[int, int], want: int
) -> None:
    """committed() is the highest index that a majority of voters holds."""
    assert tracker(voters, learners, matches).committed() == want


@pytest.mark.parametrize(
    ("voters", "learners", "votes", "want"),
    [
        ([1], [], {1: True}, VoteResult.WON),
        ([1, 2, 3], [], {1: True}, VoteResult.PENDING),
        ([1, 2, 3], [], {1: True, 2: True}, VoteResult.WON),
        ([1, 2, 3], [], {1: True, 2: False}, VoteResult.PENDING),
        ([1, 2, 3], [], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3], [4], {1: True, 4: True}, VoteResult.PENDING),
        ([1, 2, 3], [4, 5], {1: False, 2: False, 4: True, 5: True}, VoteResult.LOST),
        ([1, 2, 3, 4], [], {1: True, 2: True}, VoteResult.PENDING),
        ([1, 2, 3, 4], [], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3, 4, 5], [], {1: True, 2: False, 3: False}, VoteResult.PENDING),
        ([1, 2, 3, 4, 5], [], {1: True, 2: True, 3: True}, VoteResult.WON),
        ([1, 2, 3, 4, 5], [], {1: True, 2: False, 3: False, 4: False}, VoteResult.LOST),
    ],
)
def test_tally_votes(
    voters: list[int], learners: list[int], votes: dict[int, bool], want: VoteResult
) -> None:
    """Only voters' votes count: a majority granted wins, a majority refused loses."""
    trk = tracker(voters, learners)
    for node_id, granted in votes.items():
        trk.record_vote(node_id, granted)
    granted_n = sum(1 for v in voters if votes.get(v) is True)
    rejected_n = sum(1 for v in voters if votes.get(v) is False)
    assert trk.tally_votes() == (granted_n, rejected_n, want)


def test_record_vote_keeps_the_first_answer() -> None:
    """A duplicated or changed vote response does not overwrite the first one."""
    trk = tracker([1, 2, 3])
    trk.record_vote(1, True)
    trk.record_vote(2, False)
    trk.record_vote(2, True)
    assert trk.tally_votes() == (1, 1, VoteResult.PENDING)
    trk.reset_votes()
    trk.record_vote(2, True)
    trk.record_vote(1, True)
    assert trk.tally_votes()[2] == VoteResult.WON


def test_quorum_active() -> None:
    """The leader is active iff it plus recently active voters make a majority (learners aside)."""
    trk = tracker([1, 2, 3, 4, 5], [6, 7])
    assert not trk.quorum_active(1)
    trk.progress[6].recent_active = True
    trk.progress[7].recent_active = True
    trk.progress[2].recent_active = True
    assert not trk.quorum_active(1)
    trk.progress[3].recent_active = True
    assert trk.quorum_active(1)
    # The caller counts itself only if it is a voter.
    assert not tracker([1, 2, 3], [4]).quorum_active(4)
    assert tracker([1], []).quorum_active(1)


def test_add_promote_and_remove_members() -> None:
    """add() promotes a learner in place; remove() forgets progress and votes."""
    trk = tracker([1, 2, 3])
    pr = trk.add(4, next_index=10, learner=True)
    assert trk.learners == {4} and 4 not in trk.voters and pr.recent_active
    pr.match = 9
    promoted = trk.add(4, next_index=99, learner=False)
    assert promoted is pr and promoted.match == 9 and promoted.next == 10
    assert trk.voters == {1, 2, 3, 4} and trk.learners == set()
    assert trk.quorum() == 3
    trk.record_vote(4, True)
    trk.remove(4)
    assert 4 not in trk.progress and 4 not in trk.votes
    assert trk.voters == {1, 2, 3} and trk.quorum() == 2
    assert trk.conf_state() == ConfState(frozenset({1, 2, 3}), frozenset())
