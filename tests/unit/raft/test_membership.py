"""Single-step membership changes: learners, promotion, adding and removing voters."""

from __future__ import annotations

import functools

import pytest

from cluster.raft import (
    ConfChange,
    ConfChangeType,
    MessageType,
    ProposalDropped,
    StateType,
)
from tests.unit.raft import helpers
from tests.unit.raft.helpers import of_type, record_sent
from tests.unit.raft.sim import Cluster, NetworkFaults, NodeOptions

ELECTION_TICK = 10
ADD_LEARNER = ConfChangeType.ADD_LEARNER_NODE
ADD_NODE = ConfChangeType.ADD_NODE
REMOVE = ConfChangeType.REMOVE_NODE


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
cluster = functools.partial(helpers.cluster, seed=5, election_tick=ELECTION_TICK)


def change(c: Cluster, leader: int, kind: ConfChangeType, node_id: int) -> None:
    """Propose a conf change at ``leader`` and let it commit and apply everywhere reachable."""
    c.propose_conf_change(leader, ConfChange(kind, node_id))
    c.stabilize()


def caught_up(c: Cluster, leader: int, node_id: int) -> bool:
    lead = c.raft(leader)
    return c.raft(node_id).log.applied == lead.log.applied == lead.log.last_index()


def add_learner(c: Cluster, leader: int, node_id: int) -> None:
    """Start an empty node, add it as a learner and wait until it has applied everything."""
    c.add_empty_node(node_id)
    change(c, leader, ADD_LEARNER, node_id)
    assert c.run_until(lambda: caught_up(c, leader, node_id), max_ticks=20)


def membership(c: Cluster, node_id: int) -> tuple[set[int], set[int]]:
    trk = c.raft(node_id).trk
    return set(trk.voters), set(trk.learners)


def assert_members(c: Cluster, ids: list[int], voters: set[int], learners: set[int]) -> None:
    for node_id in ids:
        assert membership(c, node_id) == (voters, learners), node_id


def assert_same_values(c: Cluster, ids: list[int]) -> list[bytes]:
    values = c.applied_values(ids[0])
    for node_id in ids[1:]:
        assert c.applied_values(node_id) == values, node_id
    return values


def assert_commits(c: Cluster, leader: int, data: bytes, ids: list[int]) -> None:
    c.propose(leader, data)
    c.stabilize()
    for node_id in ids:
        assert data in c.applied_values(node_id), node_id


def assert_stalls(c: Cluster, leader: int, data: bytes) -> None:
    """A proposal at ``leader`` does not commit within a few ticks (less than an election)."""
    before = c.raft(leader).log.committed
    c.propose(leader, data)
    c.stabilize()
    c.tick(3)
    assert c.raft(leader).log.committed == before
    assert all(data not in sn.sm.values for sn in c.live())


def dropped_reason(c: Cluster, leader: int, kind: ConfChangeType, node_id: int) -> str:
    with pytest.raises(ProposalDropped) as exc:
        c.propose_conf_change(leader, ConfChange(kind, node_id))
    return exc.value.reason


# ---------------------------------------------------------------------------
# learners
# ---------------------------------------------------------------------------
def test_learner_catches_up_by_entries() -> None:
    """A new empty learner replays the whole log, learns the configuration and the values."""
    c = cluster()
    for i in range(5):
        c.propose(1, b"v%d" % i)
    c.stabilize()
    add_learner(c, 1, 4)
    learner = c.raft(4)
    assert learner.is_learner
    assert learner.log.first_index() == 1  # no snapshot was needed
    assert_members(c, [1, 2, 3, 4], {1, 2, 3}, {4})
    assert assert_same_values(c, [1, 2, 3, 4]) == [b"v%d" % i for i in range(5)]
    assert_commits(c, 1, b"later", [1, 2, 3, 4])


def test_learner_catches_up_by_snapshot() -> None:
    """Once the leader compacted its log, a new learner is brought up to date by a snapshot."""
    c = cluster(snapshot_every=5)
    for i in range(20):
        c.propose(1, b"v%d" % i)
        c.stabilize()
    assert c.nodes[1].storage.first_index() > 1
    sent = record_sent(c)
    add_learner(c, 1, 4)
    snaps = of_type(sent, MessageType.SNAP, 4)
    assert snaps and snaps[0].snapshot is not None
    assert c.nodes[4].storage.snapshot().metadata.index >= snaps[0].snapshot.metadata.index
    assert c.raft(4).is_learner
    assert_members(c, [1, 2, 3, 4], {1, 2, 3}, {4})
    assert assert_same_values(c, [1, 2, 3, 4])[-20:] == [b"v%d" % i for i in range(20)]


def test_learners_are_not_counted_for_commit() -> None:
    """Commit needs a majority of voters, whatever the learners do."""
    c = cluster()
    add_learner(c, 1, 4)
    add_learner(c, 1, 5)
    assert_members(c, [1, 2, 3, 4, 5], {1, 2, 3}, {4, 5})

    # Learners cut off: leader and one voter are 2 of 3 voters (only 2 of 5 members).
    c.partition([1, 2], [3], [4], [5])
    assert_commits(c, 1, b"without-learners", [1, 2])
    for node_id in (3, 4, 5):
        assert b"without-learners" not in c.applied_values(node_id)
    c.heal()
    assert c.run_until(
        lambda: all(b"without-learners" in c.applied_values(i) for i in (3, 4, 5)), max_ticks=5
    )

    # Leader and both learners are 3 of 5 members, but only 1 of 3 voters.
    c.partition([1, 4, 5], [2, 3])
    assert_stalls(c, 1, b"leader-and-learners")
    lead = c.raft(1)
    assert lead.trk.progress[4].match == lead.trk.progress[5].match == lead.log.last_index()
    assert lead.log.committed < lead.log.last_index()


def test_learner_never_campaigns() -> None:
    """A learner cut off from the leader for many election timeouts never starts an election."""
    c = cluster()
    add_learner(c, 1, 4)
    term = c.raft(1).term
    sent = record_sent(c)
    c.raft(4).campaign()  # even an explicit campaign request is ignored
    c.process(c.nodes[4])
    assert c.raft(4).state == StateType.FOLLOWER
    c.isolate(4)
    for _ in range(5 * ELECTION_TICK):
        c.tick()
        assert c.raft(4).state == StateType.FOLLOWER
    assert c.raft(4).term == term
    campaign = {MessageType.PRE_VOTE, MessageType.VOTE}
    assert [m for m in sent if m.frm == 4 and m.type in campaign] == []
    c.heal()
    c.tick(3)
    assert c.leader() == 1 and c.raft(1).term == term


def test_promoting_a_lagging_learner_is_refused_until_it_catches_up() -> None:
    """ADD_NODE on a learner far behind raises LEARNER_NOT_READY; once caught up it is promoted."""
    c = cluster()
    add_learner(c, 1, 4)
    c.isolate(4)
    for i in range(40):
        c.propose(1, b"v%d" % i)
    c.stabilize()
    assert dropped_reason(c, 1, ADD_NODE, 4) == ProposalDropped.LEARNER_NOT_READY
    assert_members(c, [1, 2, 3], {1, 2, 3}, {4})

    c.heal()
    assert c.run_until(lambda: caught_up(c, 1, 4), max_ticks=20)
    change(c, 1, ADD_NODE, 4)
    assert_members(c, [1, 2, 3, 4], {1, 2, 3, 4}, set())
    assert not c.raft(4).is_learner
    assert_same_values(c, [1, 2, 3, 4])

    # As a voter it may now lead.
    term = c.raft(1).term
    c.transfer_leader(1, 4)
    c.stabilize()
    assert c.leader() == 4 and c.raft(4).term == term + 1


# ---------------------------------------------------------------------------
# voters
# ---------------------------------------------------------------------------
def test_add_voter_directly() -> None:
    """An empty node added with ADD_NODE catches up and raises the quorum to 3 of 4."""
    c = cluster()
    c.propose(1, b"before")
    c.add_empty_node(4)
    change(c, 1, ADD_NODE, 4)
    assert c.run_until(lambda: caught_up(c, 1, 4), max_ticks=20)
    assert_members(c, [1, 2, 3, 4], {1, 2, 3, 4}, set())
    assert not c.raft(4).is_learner
    assert_commits(c, 1, b"four", [1, 2, 3, 4])
    assert assert_same_values(c, [1, 2, 3, 4]) == [b"before", b"four"]

    c.partition([1, 2], [3, 4])  # 2 of 4 voters is no longer a quorum
    assert_stalls(c, 1, b"half")


def test_remove_follower_shrinks_the_quorum() -> None:
    """After removing two of five voters, two of the remaining three commit on their own."""
    c = cluster(size=5)
    change(c, 1, REMOVE, 5)
    change(c, 1, REMOVE, 4)
    assert_members(c, [1, 2, 3], {1, 2, 3}, set())
    assert 4 not in c.raft(1).trk.progress and 5 not in c.raft(1).trk.progress
    term = c.raft(1).term

    c.crash(3)  # 1 and 2 are a majority of {1, 2, 3} but not of the old {1..5}
    assert_commits(c, 1, b"two-of-three", [1, 2])
    assert b"two-of-three" not in c.applied_values(4)
    assert b"two-of-three" not in c.applied_values(5)

    # The removed nodes (still running) never disrupt the cluster.
    c.tick(4 * ELECTION_TICK)
    assert c.leader() == 1 and c.raft(1).term == term
    for node_id in (4, 5):
        assert c.raft(node_id).state == StateType.FOLLOWER
        assert node_id not in c.raft(node_id).trk.progress


def test_remove_leader_hands_over() -> None:
    """A removed leader steps down; another voter leads and the old one no longer counts."""
    c = cluster()
    term = c.raft(1).term
    change(c, 1, REMOVE, 1)
    assert c.raft(1).state == StateType.FOLLOWER
    assert c.run_until(lambda: c.leader() in (2, 3), max_ticks=2 * ELECTION_TICK)
    c.stabilize()
    new = c.leader()
    assert new is not None
    assert c.raft(new).term > term
    assert_members(c, [1, 2, 3], {2, 3}, set())
    assert 1 not in c.raft(new).trk.progress
    assert_commits(c, new, b"without-1", [2, 3])

    other = 5 - new
    c.isolate(other)  # the new leader and the removed node are not a quorum of {2, 3}
    assert_stalls(c, new, b"with-removed")
    c.heal()
    c.tick(3 * ELECTION_TICK)
    assert c.raft(1).state == StateType.FOLLOWER
    assert 1 not in c.raft(1).trk.progress
    assert c.leader() in (2, 3)


# ---------------------------------------------------------------------------
# proposal checks
# ---------------------------------------------------------------------------
def test_only_one_conf_change_may_be_pending() -> None:
    """A second conf change before the first is applied raises CONF_CHANGE_PENDING."""
    c = cluster()
    c.add_empty_node(4)
    c.add_empty_node(5)
    c.propose_conf_change(1, ConfChange(ADD_LEARNER, 4))
    assert dropped_reason(c, 1, ADD_LEARNER, 5) == ProposalDropped.CONF_CHANGE_PENDING
    assert dropped_reason(c, 1, REMOVE, 3) == ProposalDropped.CONF_CHANGE_PENDING
    c.propose(1, b"normal-is-fine")
    c.stabilize()
    change(c, 1, ADD_LEARNER, 5)
    c.tick(3)
    assert_members(c, [1, 2, 3, 4, 5], {1, 2, 3}, {4, 5})


def test_new_leader_refuses_conf_change_until_earlier_entries_applied() -> None:
    """A new leader accepts a conf change only once every entry of earlier terms is applied."""
    c = cluster()
    c.net.drop_types = {MessageType.APP_RESP}
    old_term = c.raft(1).term
    c.propose(1, b"uncommitted")
    c.stabilize()
    c.crash(1)
    assert c.run_until(lambda: c.leader() in (2, 3), max_ticks=10 * ELECTION_TICK)
    new = c.leader()
    assert new is not None
    lead = c.raft(new)
    noop = lead.log.last_index()
    assert lead.log.term(noop) == lead.term
    assert lead.log.term(noop - 1) == old_term  # the dead leader's uncommitted entry
    assert lead.log.applied == lead.log.committed == noop - 2

    c.add_empty_node(4)
    assert dropped_reason(c, new, ADD_LEARNER, 4) == ProposalDropped.CONF_CHANGE_PENDING
    c.net.drop_types = set()
    assert c.run_until(lambda: lead.log.applied >= noop, max_ticks=5)
    change(c, new, ADD_LEARNER, 4)
    assert membership(c, new) == ({1, 2, 3}, {4})
    assert b"uncommitted" in c.applied_values(new)


def test_invalid_conf_changes_are_refused() -> None:
    """Unknown members cannot be removed/updated; existing members cannot be re-added."""
    c = cluster()
    assert dropped_reason(c, 1, REMOVE, 9) == ProposalDropped.UNKNOWN_MEMBER
    assert dropped_reason(c, 1, ConfChangeType.UPDATE_NODE, 9) == ProposalDropped.UNKNOWN_MEMBER
    assert dropped_reason(c, 1, ADD_NODE, 2) == ProposalDropped.MEMBER_EXISTS
    assert dropped_reason(c, 1, ADD_LEARNER, 2) == ProposalDropped.MEMBER_EXISTS
    assert c.raft(1).log.last_index() == c.raft(1).log.committed
    assert_members(c, [1, 2, 3], {1, 2, 3}, set())


def test_removing_the_last_voter_is_refused() -> None:
    """The only voter cannot be removed (even with a learner left); the learner can be."""
    c = Cluster([1], seed=2, opts=NodeOptions(election_tick=ELECTION_TICK))
    c.elect(1)
    assert dropped_reason(c, 1, REMOVE, 1) == ProposalDropped.LAST_VOTER
    add_learner(c, 1, 2)
    assert dropped_reason(c, 1, REMOVE, 1) == ProposalDropped.LAST_VOTER
    change(c, 1, REMOVE, 2)
    assert membership(c, 1) == ({1}, set())
    assert_commits(c, 1, b"alone", [1])


def test_conf_changes_under_load_keep_state_machines_equal() -> None:
    """Interleaving proposals with membership changes (and reordering) loses or forks nothing."""
    c = cluster(seed=21)
    c.net.faults = NetworkFaults(max_delay=3)
    plan = [
        (ADD_LEARNER, 4),
        (ADD_NODE, 4),
        (ADD_NODE, 5),
        (REMOVE, 2),
        (ADD_LEARNER, 6),
        (REMOVE, 6),
        (REMOVE, 3),
    ]
    at_leader: list[bytes] = []
    forwarded: list[bytes] = []
    tick = 0
    while tick < 300 and (plan or tick < 40):
        tick += 1
        for k in range(3):
            value = b"L%d.%d" % (tick, k)
            c.propose(1, value)
            at_leader.append(value)
        followers = sorted(c.raft(1).trk.voters - {1})
        proposer = followers[tick % len(followers)]
        value = b"F%d" % tick
        try:
            c.propose(proposer, value)
            forwarded.append(value)
        except ProposalDropped as exc:
            assert exc.reason == ProposalDropped.NO_LEADER
        if plan:
            kind, node_id = plan[0]
            if node_id not in c.nodes:
                c.add_empty_node(node_id)
            try:
                c.propose_conf_change(1, ConfChange(kind, node_id))
                plan.pop(0)
            except ProposalDropped as exc:
                assert exc.reason in (
                    ProposalDropped.CONF_CHANGE_PENDING,
                    ProposalDropped.LEARNER_NOT_READY,
                )
        c.tick()
    assert not plan, "membership plan did not complete"
    c.net.faults = NetworkFaults()
    c.stabilize()
    c.tick(5)
    assert c.leader() == 1
    members = [1, 4, 5]
    assert_members(c, members, {1, 4, 5}, set())
    values = assert_same_values(c, members)
    assert sorted(values) == sorted(at_leader + forwarded)  # each exactly once
    assert [v for v in values if v.startswith(b"L")] == at_leader  # in proposal order
    for removed in (2, 3, 6):
        prefix = c.applied_values(removed)
        assert prefix == values[: len(prefix)]
