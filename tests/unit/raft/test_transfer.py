"""Leadership transfer: TIMEOUT_NOW hand-off, catch-up first, proposal blocking and abort."""

from __future__ import annotations

import functools

import pytest

from cluster.raft import (
    NONE,
    Message,
    MessageType,
    ProposalDropped,
    StateType,
)
from cluster.raft.node import CAMPAIGN_TRANSFER
from tests.unit.raft import helpers
from tests.unit.raft.helpers import join_as_learner, of_type, record_sent
from tests.unit.raft.sim import Cluster

ELECTION_TICK = 10


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
cluster = functools.partial(helpers.cluster, seed=11, election_tick=ELECTION_TICK)


def assert_single_leader(c: Cluster, leader: int, term: int) -> None:
    for sn in c.live():
        r = sn.node()
        assert r.term == term, (sn.id, r)
        assert r.lead == leader, (sn.id, r)
        assert (r.state == StateType.LEADER) == (sn.id == leader), (sn.id, r)


def propose_and_commit(c: Cluster, node_id: int, data: bytes) -> None:
    c.propose(node_id, data)
    c.stabilize()
    for sn in c.live():
        assert data in sn.sm.values, sn.id


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_transfer_to_up_to_date_follower() -> None:
    """The leader sends TIMEOUT_NOW at once; the target wins the next term without pre-vote."""
    c = cluster()
    term = c.raft(1).term
    sent = record_sent(c)
    c.transfer_leader(1, 2)
    assert c.raft(1).lead_transferee == 2
    timeout_now = of_type(sent, MessageType.TIMEOUT_NOW)
    assert [(m.frm, m.to, m.term) for m in timeout_now] == [(1, 2, term)]

    c.stabilize()
    assert_single_leader(c, leader=2, term=term + 1)
    assert c.raft(1).lead_transferee == NONE
    votes = of_type(sent, MessageType.VOTE)
    assert sorted(m.to for m in votes) == [1, 3]
    assert all(m.frm == 2 and m.context == CAMPAIGN_TRANSFER for m in votes)
    assert of_type(sent, MessageType.PRE_VOTE) == []
    propose_and_commit(c, 2, b"after-transfer")


@pytest.mark.parametrize("by_snapshot", [False, True])
def test_transfer_to_lagging_follower_catches_it_up_first(by_snapshot: bool) -> None:
    """TIMEOUT_NOW goes out only after the target acknowledged the leader's last index."""
    c = cluster(snapshot_every=3 if by_snapshot else None)
    term = c.raft(1).term
    c.isolate(3)
    for i in range(5):
        c.propose(1, b"v%d" % i)
        c.stabilize()
    last = c.raft(1).log.last_index()
    if by_snapshot:
        assert c.nodes[1].storage.first_index() > c.raft(3).log.last_index() + 1
    assert c.raft(3).log.last_index() < last
    c.heal()

    sent = record_sent(c)
    c.transfer_leader(1, 3)
    assert c.raft(1).lead_transferee == 3
    assert of_type(sent, MessageType.TIMEOUT_NOW) == []

    assert c.run_until(lambda: c.leader() == 3, max_ticks=ELECTION_TICK - 1)
    c.stabilize()
    assert_single_leader(c, leader=3, term=term + 1)
    timeout_now = [i for i, m in enumerate(sent) if m.type == MessageType.TIMEOUT_NOW]
    assert len(timeout_now) == 1
    acks = [
        i
        for i, m in enumerate(sent)
        if m.type == MessageType.APP_RESP and m.frm == 3 and m.index == last and not m.reject
    ]
    assert acks and acks[0] < timeout_now[0]
    snaps = of_type(sent, MessageType.SNAP, 3)
    assert bool(snaps) == by_snapshot
    assert c.applied_values(3)[-5:] == [b"v%d" % i for i in range(5)]


def test_proposals_dropped_while_transferring() -> None:
    """While a transfer is pending the leader refuses proposals with TRANSFERRING."""
    c = cluster()
    c.transfer_leader(1, 2)  # TIMEOUT_NOW is queued, not delivered yet
    with pytest.raises(ProposalDropped) as exc:
        c.propose(1, b"blocked")
    assert exc.value.reason == ProposalDropped.TRANSFERRING
    c.propose(3, b"forwarded")  # a follower forwards; the leader drops it silently
    c.stabilize()
    assert c.leader() == 2
    propose_and_commit(c, 2, b"ok")
    for sn in c.live():
        assert b"blocked" not in sn.sm.values
        assert b"forwarded" not in sn.sm.values


def test_unfinished_transfer_is_aborted_after_election_timeout() -> None:
    """A transfer to an unreachable node is abandoned after one election timeout."""
    c = cluster()
    term = c.raft(1).term
    c.isolate(2)
    c.transfer_leader(1, 2)
    c.tick(ELECTION_TICK - 1)
    assert c.raft(1).lead_transferee == 2
    with pytest.raises(ProposalDropped) as exc:
        c.propose(1, b"too-early")
    assert exc.value.reason == ProposalDropped.TRANSFERRING

    c.tick()
    r1 = c.raft(1)
    assert r1.lead_transferee == NONE
    assert r1.state == StateType.LEADER and r1.term == term
    c.propose(1, b"works-again")
    c.stabilize()
    assert b"works-again" in c.applied_values(1)
    assert b"works-again" in c.applied_values(3)
    assert b"works-again" not in c.applied_values(2)


def test_transfer_to_learner_is_ignored() -> None:
    """Neither the leader nor a TIMEOUT_NOW can make a learner campaign."""
    c = cluster()
    join_as_learner(c, 1, 4)
    learner = c.raft(4)
    assert c.raft(1).trk.progress[4].match == c.raft(1).log.last_index()
    term = c.raft(1).term

    sent = record_sent(c)
    c.transfer_leader(1, 4)
    assert c.raft(1).lead_transferee == NONE
    c.propose(1, b"not-blocked")
    c.stabilize()
    assert of_type(sent, MessageType.TIMEOUT_NOW) == []

    learner.step_remote(Message(MessageType.TIMEOUT_NOW, to=4, frm=1, term=term))
    c.process(c.nodes[4])
    c.stabilize()
    c.tick(3)
    assert learner.state == StateType.FOLLOWER and learner.term == term
    assert_single_leader(c, leader=1, term=term)
    assert b"not-blocked" in c.applied_values(4)


@pytest.mark.parametrize("target", [2, 3])
def test_follower_forwards_transfer_request_to_the_leader(target: int) -> None:
    """A transfer requested on follower 2 (for itself or for node 3) is forwarded to the
    leader as TRANSFER_LEADER naming the target (``frm``); the target then takes over."""
    c = cluster()
    term = c.raft(1).term
    sent = record_sent(c)
    c.transfer_leader(2, target)
    fwd = of_type(sent, MessageType.TRANSFER_LEADER)
    assert [(m.frm, m.to) for m in fwd] == [(target, 1)]
    c.stabilize()
    assert [m.to for m in of_type(sent, MessageType.TIMEOUT_NOW)] == [target]
    assert_single_leader(c, leader=target, term=term + 1)


def test_transfer_to_self_or_unknown_node_is_ignored() -> None:
    """Transferring to the leader itself or to a non-member changes nothing."""
    c = cluster()
    term = c.raft(1).term
    sent = record_sent(c)
    c.transfer_leader(1, 1)
    c.transfer_leader(1, 9)
    assert c.raft(1).lead_transferee == NONE
    c.propose(1, b"fine")
    c.stabilize()
    assert of_type(sent, MessageType.TIMEOUT_NOW) == []
    assert_single_leader(c, leader=1, term=term)


def test_new_transfer_replaces_a_pending_one() -> None:
    """A transfer to another node while one is stuck aborts the first and completes the second."""
    c = cluster()
    term = c.raft(1).term
    c.isolate(3)
    c.transfer_leader(1, 3)
    assert c.raft(1).lead_transferee == 3
    c.transfer_leader(1, 2)
    assert c.raft(1).lead_transferee == 2
    c.stabilize()
    assert c.leader() == 2
    assert c.raft(2).term == term + 1
    assert c.raft(1).lead == 2
