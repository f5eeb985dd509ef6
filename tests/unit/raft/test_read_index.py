"""ReadIndex: a linearizable read point is granted only after a quorum confirms leadership."""

from __future__ import annotations

import functools

import pytest

from cluster.raft import (
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    ReadState,
    StateType,
)
from tests.unit.raft import helpers
from tests.unit.raft.helpers import join_as_learner, of_type, record_sent
from tests.unit.raft.sim import Cluster, NodeOptions

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
cluster = functools.partial(helpers.cluster, seed=7)


def heartbeat_resp(c: Cluster, frm: int, to: int, ctx: bytes) -> None:
    """Deliver a heartbeat acknowledgement carrying ``ctx`` straight to ``to``."""
    r = c.raft(to)
    r.step_remote(Message(MessageType.HEARTBEAT_RESP, to=to, frm=frm, term=r.term, context=ctx))
    c.process(c.nodes[to])


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_leader_read_waits_for_quorum_heartbeat_acks() -> None:
    """The leader's read is released only by quorum acks, at the commit index of the request."""
    c = cluster()
    leader = c.raft(1)
    commit_at_request = leader.log.committed
    c.net.drop_types = {MessageType.HEARTBEAT_RESP}
    sent = record_sent(c)

    c.read_index(1, b"r1")
    beats = [m for m in of_type(sent, MessageType.HEARTBEAT) if m.context == b"r1"]
    assert sorted(m.to for m in beats) == [2, 3]
    assert all(m.term == leader.term for m in beats)

    # Writes keep committing while the acks are withheld; the read stays pending.
    c.propose(1, b"w1")
    c.stabilize()
    c.tick(3)
    assert leader.log.committed == commit_at_request + 1
    assert c.nodes[1].read_states == []

    c.net.drop_types = set()
    c.tick()
    assert c.nodes[1].read_states == [ReadState(commit_at_request, b"r1")]
    assert c.nodes[2].read_states == [] and c.nodes[3].read_states == []


def test_read_released_by_exactly_a_quorum_of_distinct_acks() -> None:
    """In a 5-node cluster the read needs acks from two followers; a repeated ack does not count."""
    c = cluster(size=5)
    c.net.drop_types = {MessageType.HEARTBEAT}
    commit = c.raft(1).log.committed

    c.read_index(1, b"q")
    heartbeat_resp(c, frm=2, to=1, ctx=b"q")
    heartbeat_resp(c, frm=2, to=1, ctx=b"q")
    assert c.nodes[1].read_states == []
    heartbeat_resp(c, frm=4, to=1, ctx=b"other")  # an ack for an unknown context
    assert c.nodes[1].read_states == []
    heartbeat_resp(c, frm=3, to=1, ctx=b"q")
    assert c.nodes[1].read_states == [ReadState(commit, b"q")]
    heartbeat_resp(c, frm=4, to=1, ctx=b"q")  # late acks release nothing more
    assert c.nodes[1].read_states == [ReadState(commit, b"q")]


def test_follower_read_is_forwarded_and_answered_with_leader_commit() -> None:
    """A follower forwards READ_INDEX; the leader answers READ_INDEX_RESP with its commit index."""
    c = cluster()
    c.net.cut = {(1, 2)}  # node 2 misses the next commit
    c.propose(1, b"w1")
    c.stabilize()
    leader_commit = c.raft(1).log.committed
    follower_commit = c.raft(2).log.committed
    assert leader_commit == follower_commit + 1
    c.net.cut = set()

    sent = record_sent(c)
    c.read_index(2, b"f")
    assert [(m.to, m.context) for m in of_type(sent, MessageType.READ_INDEX)] == [(1, b"f")]
    assert c.nodes[2].read_states == []
    c.stabilize()

    resp = of_type(sent, MessageType.READ_INDEX_RESP)
    assert [(m.frm, m.to, m.index, m.context) for m in resp] == [(1, 2, leader_commit, b"f")]
    assert c.nodes[2].read_states == [ReadState(leader_commit, b"f")]
    assert c.nodes[1].read_states == []


def test_new_leader_defers_reads_until_its_noop_commits() -> None:
    """A new leader queues reads until an entry of its own term commits, then answers them."""
    c = cluster()
    c.net.drop_types = {MessageType.APP_RESP}
    c.transfer_leader(1, 2)
    c.stabilize()
    new = c.raft(2)
    assert new.state == StateType.LEADER
    noop = new.log.last_index()
    assert new.log.term(noop) == new.term
    assert new.log.committed == noop - 1

    c.read_index(2, b"n")
    c.read_index(3, b"via-follower")
    c.stabilize()
    c.tick(3)  # heartbeats are acknowledged, yet nothing of this term is committed
    assert len(new.pending_read_index) == 2
    assert c.nodes[2].read_states == [] and c.nodes[3].read_states == []

    c.net.drop_types = set()
    c.tick(2)
    assert new.log.committed == noop
    assert new.pending_read_index == []
    assert c.nodes[2].read_states == [ReadState(noop, b"n")]
    assert c.nodes[3].read_states == [ReadState(noop, b"via-follower")]


@pytest.mark.parametrize("check_quorum", [True, False])
def test_isolated_ex_leader_never_answers_reads(check_quorum: bool) -> None:
    """A leader cut off in a minority never grants a read, while cut off or after healing."""
    c = cluster(check_quorum=check_quorum)
    old_term = c.raft(1).term
    c.isolate(1)
    c.read_index(1, b"stale")
    assert c.run_until(lambda: c.leader() not in (None, 1), max_ticks=60)
    c.propose(c.leader() or 0, b"after")
    c.tick(20)
    assert c.nodes[1].read_states == []
    if check_quorum:
        assert c.raft(1).state != StateType.LEADER  # deposed by check quorum
        with pytest.raises(ProposalDropped) as exc:
            c.read_index(1, b"stale2")
        assert exc.value.reason == ProposalDropped.NO_LEADER
    else:
        assert c.raft(1).state == StateType.LEADER and c.raft(1).term == old_term
    c.heal()
    c.tick(20)
    assert c.raft(1).state == StateType.FOLLOWER and c.raft(1).term > old_term
    assert c.nodes[1].read_states == []
    assert all(rs.request_ctx != b"stale" for n in c.nodes.values() for rs in n.read_states)


def test_minority_follower_and_leader_reads_are_never_answered() -> None:
    """In a 2-of-5 minority neither the old leader nor its follower ever gets a read answered."""
    c = cluster(size=5)
    c.partition([1, 2], [3, 4, 5])
    c.read_index(1, b"at-leader")
    c.read_index(2, b"at-follower")
    assert c.run_until(lambda: c.leader() in (3, 4, 5), max_ticks=60)
    majority = c.leader() or 0
    c.read_index(majority, b"majority")
    c.tick(20)
    assert c.raft(1).state != StateType.LEADER  # check quorum deposed it
    assert c.nodes[1].read_states == [] and c.nodes[2].read_states == []
    assert [rs.request_ctx for rs in c.nodes[majority].read_states] == [b"majority"]
    c.heal()
    c.tick(20)
    assert c.nodes[1].read_states == [] and c.nodes[2].read_states == []


def test_learner_acks_do_not_count_but_learner_reads_are_served() -> None:
    """Heartbeat acks from a learner are not part of the quorum; a learner's own read works."""
    c = cluster(size=3)
    join_as_learner(c, 1, 4)
    commit = c.raft(1).log.committed

    c.net.drop_types = {MessageType.HEARTBEAT}
    c.read_index(1, b"q")
    heartbeat_resp(c, frm=4, to=1, ctx=b"q")
    assert c.nodes[1].read_states == []
    heartbeat_resp(c, frm=2, to=1, ctx=b"q")
    assert c.nodes[1].read_states == [ReadState(commit, b"q")]

    c.net.drop_types = set()
    c.read_index(4, b"from-learner")
    c.stabilize()
    assert c.nodes[4].read_states == [ReadState(commit, b"from-learner")]


def test_single_node_read_is_answered_at_once() -> None:
    """A single voter answers a read without any message once its no-op is committed."""
    c = Cluster([1], seed=1)
    r = c.raft(1)
    r.campaign()
    assert r.state == StateType.LEADER
    noop = r.log.last_index()
    assert r.log.committed == noop - 1

    c.check.on_read_issued(b"early")
    r.read_index(b"early")  # before the no-op is durable and committed: queued
    assert r.read_states == [] and len(r.pending_read_index) == 1
    c.process(c.nodes[1])
    assert r.log.committed == noop
    assert c.nodes[1].read_states == [ReadState(noop, b"early")]

    sent = record_sent(c)
    c.read_index(1, b"now")
    assert c.nodes[1].read_states[-1] == ReadState(noop, b"now")
    assert sent == []


def test_single_voter_answers_a_learners_forwarded_read() -> None:
    """A lone voter with a learner answers the learner's read at once with READ_INDEX_RESP."""
    c = Cluster([1], seed=1)
    c.elect(1)
    join_as_learner(c, 1, 2)
    commit = c.raft(1).log.committed
    sent = record_sent(c)
    c.read_index(2, b"l")
    c.stabilize()
    assert of_type(sent, MessageType.HEARTBEAT) == []  # no quorum round needed
    resp = of_type(sent, MessageType.READ_INDEX_RESP)
    assert [(m.frm, m.to, m.index, m.context) for m in resp] == [(1, 2, commit, b"l")]
    assert c.nodes[2].read_states == [ReadState(commit, b"l")]


def test_queued_reads_released_together_by_one_quorum() -> None:
    """Reads queued behind each other are all released by acks for the newest one, in order."""
    c = cluster(size=3)
    c.net.drop_types = {MessageType.HEARTBEAT}
    expected = []
    for i in range(3):
        ctx = b"r%d" % i
        c.read_index(1, ctx)
        expected.append(ReadState(c.raft(1).log.committed, ctx))
        c.propose(1, b"w%d" % i)
        c.stabilize()
    assert [rs.index for rs in expected] == [4, 5, 6]
    assert c.nodes[1].read_states == []

    heartbeat_resp(c, frm=3, to=1, ctx=b"r2")
    assert c.nodes[1].read_states == expected
    assert len(c.raft(1).read_only) == 0


def test_acks_for_an_older_read_do_not_release_newer_ones() -> None:
    """Acks for an earlier context release that read and those before it, not later ones."""
    c = cluster(size=3)
    c.net.drop_types = {MessageType.HEARTBEAT}
    commit = c.raft(1).log.committed
    for ctx in (b"a", b"b", b"c"):
        c.read_index(1, ctx)
    heartbeat_resp(c, frm=2, to=1, ctx=b"b")
    assert c.nodes[1].read_states == [ReadState(commit, b"a"), ReadState(commit, b"b")]
    heartbeat_resp(c, frm=2, to=1, ctx=b"c")
    assert c.nodes[1].read_states[-1] == ReadState(commit, b"c")


@pytest.mark.parametrize(
    ("pre_vote", "campaigning"), [(True, StateType.PRE_CANDIDATE), (False, StateType.CANDIDATE)]
)
def test_read_without_leader_is_dropped(pre_vote: bool, campaigning: StateType) -> None:
    """With no known leader (follower or candidate) a read raises ProposalDropped(NO_LEADER)."""
    c = Cluster(range(1, 4), seed=3, opts=NodeOptions(pre_vote=pre_vote))
    for node_id in c.nodes:
        with pytest.raises(ProposalDropped) as exc:
            c.raft(node_id).read_index(b"x")
        assert exc.value.reason == ProposalDropped.NO_LEADER

    c.net.drop_types = {MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP}
    r: RaftNode = c.raft(1)
    r.campaign()
    c.stabilize()
    assert r.state == campaigning
    with pytest.raises(ProposalDropped) as exc:
        r.read_index(b"y")
    assert exc.value.reason == ProposalDropped.NO_LEADER
    assert r.read_states == []
