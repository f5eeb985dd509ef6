"""Log replication scenarios: ordering, batching, flow control, back-off, commit rule, faults.

Tests either run a simulated ``Cluster`` or hand-drive bare ``RaftNode`` objects
(so single messages can be held back or dropped), and assert on concrete
indexes, terms, progress states and message contents.
"""

from __future__ import annotations

import dataclasses

import pytest

from cluster.raft import (
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    RaftNode,
    StateType,
)

from .helpers import (
    ET,
    deliver,
    drain,
    heartbeat,
    new_node,
    of_type,
    reboot,
    record_sent,
    run_rounds,
)
from .sim import Cluster, NetworkFaults, NodeOptions

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def log_of(node: RaftNode) -> list[tuple[int, int, bytes]]:
    """(index, term, data) of every entry after the snapshot."""
    log = node.log
    return [(e.index, e.term, e.data) for e in log.slice(log.first_index(), log.last_index() + 1)]


def elect_directly(nodes: dict[int, RaftNode], leader: int) -> None:
    nodes[leader].campaign()
    deliver(nodes, drain(nodes[leader]))
    assert nodes[leader].state == StateType.LEADER


# ---------------------------------------------------------------------------
# Basic replication and proposals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_proposals_are_applied_on_every_node_in_proposal_order(size: int) -> None:
    """Values proposed on the leader and on followers are applied everywhere, in the
    same order, and the committed index agrees on every node."""
    ids = list(range(1, size + 1))
    c = Cluster(ids, seed=size)
    c.elect(1)
    expected = []
    for i in range(30):
        v = b"v%02d" % i
        c.propose(ids[i % size], v)
        expected.append(v)
        c.stabilize()
    for i in ids:
        assert c.applied_values(i) == expected
        assert c.raft(i).log.committed == c.raft(1).log.committed


def test_proposal_on_follower_is_forwarded_to_the_leader() -> None:
    """A follower turns a local proposal into a PROP message to its leader carrying
    the entry; it appends nothing itself, and the value then commits everywhere."""
    c = Cluster((1, 2, 3), seed=1)
    c.elect(1)
    follower = c.raft(2)
    last = follower.log.last_index()
    follower.propose(b"fwd")
    rd = follower.ready()
    assert rd.entries == []
    props = [m for m in rd.messages if m.type == MessageType.PROP]
    assert [(m.to, m.frm, [e.data for e in m.entries]) for m in props] == [(1, 2, [b"fwd"])]
    follower.advance(rd)
    c.net.send(props[0])
    c.stabilize()
    assert c.raft(1).log.last_index() == last + 1
    for i in (1, 2, 3):
        assert c.applied_values(i) == [b"fwd"]


def test_proposal_without_a_leader_is_dropped_with_no_leader_reason() -> None:
    """Before any election, and while campaigning, propose raises ProposalDropped
    with reason NO_LEADER and nothing is appended."""
    c = Cluster((1, 2, 3), seed=1)
    for i in (1, 2, 3):
        with pytest.raises(ProposalDropped) as exc:
            c.propose(i, b"x")
        assert exc.value.reason == ProposalDropped.NO_LEADER
    c.raft(1).campaign()  # pre-candidate, no leader known
    assert c.raft(1).state == StateType.PRE_CANDIDATE
    last = c.raft(1).log.last_index()
    with pytest.raises(ProposalDropped) as exc:
        c.raft(1).propose(b"x")
    assert exc.value.reason == ProposalDropped.NO_LEADER
    assert c.raft(1).log.last_index() == last


# ---------------------------------------------------------------------------
# Batching and message size
# ---------------------------------------------------------------------------


def test_batched_proposal_travels_in_one_append_per_follower() -> None:
    """50 entries proposed together leave the leader as one APP per follower."""
    c = Cluster((1, 2, 3), seed=2)
    c.elect(1)
    leader = c.raft(1)
    first = leader.log.last_index() + 1
    items = [b"b%02d" % i for i in range(50)]
    leader.propose_batch(items)
    rd = leader.ready()
    for to in (2, 3):
        (app,) = of_type(rd.messages, MessageType.APP, to)
        assert [e.index for e in app.entries] == list(range(first, first + 50))
        assert [e.data for e in app.entries] == items
    assert len(rd.messages) == 2


def test_proposals_queued_behind_a_full_window_leave_in_one_append() -> None:
    """With max_inflight=1, 30 proposals made while the first append is un-acked are
    sent to each follower as a single APP once that append is acknowledged."""
    c = Cluster((1, 2, 3), seed=2, opts=NodeOptions(max_inflight=1))
    c.elect(1)
    sent = record_sent(c)
    c.propose(1, b"first")
    for i in range(30):
        c.propose(1, b"q%02d" % i)
    assert [len(m.entries) for m in of_type(sent, MessageType.APP, 2)] == [1]
    sent.clear()
    c.stabilize()
    for to in (2, 3):
        carrying = [m for m in of_type(sent, MessageType.APP, to) if m.entries]
        assert [len(m.entries) for m in carrying] == [30]
    assert c.applied_values(3) == [b"first"] + [b"q%02d" % i for i in range(30)]


def test_max_size_per_msg_splits_appends() -> None:
    """Appends hold at most max_size_per_msg bytes of data (an oversized entry
    still travels, alone), and the split stream arrives complete and in order."""
    c = Cluster((1, 2, 3), seed=3, opts=NodeOptions(max_size_per_msg=10, max_inflight=64))
    c.elect(1)
    sent = record_sent(c)
    items = [b"abcd"] * 9 + [b"x" * 25] + [b"wxyz"] * 3
    c.raft(1).propose_batch(items)
    c.stabilize()
    carrying = [m for m in of_type(sent, MessageType.APP, 2) if m.entries]
    sizes = [[len(e.data) for e in m.entries] for m in carrying]
    assert sizes == [[4, 4]] * 4 + [[4], [25], [4, 4], [4]]
    assert c.applied_values(2) == items


# ---------------------------------------------------------------------------
# Flow control: the in-flight window
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2])
def test_inflight_window_bounds_unacked_appends(window: int) -> None:
    """A follower in REPLICATE gets at most ``window`` un-acked APPs; the leader is
    paused until an ack frees a slot, then sends the backlog in one message."""
    nodes = {i: new_node(i, [1, 2, 3], max_inflight=window) for i in (1, 2, 3)}
    elect_directly(nodes, 1)
    leader = nodes[1]
    pr = leader.trk.progress[2]
    assert pr.state == ProgressState.REPLICATE
    base = leader.log.last_index()

    msgs: list[Message] = []
    for i in range(6):
        leader.propose(b"p%d" % i)
        msgs += drain(leader)
    to2 = of_type(msgs, MessageType.APP, 2)
    assert [[e.index for e in m.entries] for m in to2] == [[base + k + 1] for k in range(window)]
    assert len(pr.inflights) == window and pr.is_paused()
    leader.tick()  # a heartbeat is not an append: still nothing new
    assert of_type(drain(leader), MessageType.APP, 2) == []

    # Follower 2 acks everything it got; hold node 3 back entirely.
    acks = deliver(nodes, to2, allow=lambda m: m.to == 2)
    assert [m.index for m in acks if m.type == MessageType.APP_RESP] == [
        base + k + 1 for k in range(window)
    ]
    first_ack, *rest = acks
    leader.step(first_ack)
    (resumed,) = of_type(drain(leader), MessageType.APP, 2)
    assert [e.index for e in resumed.entries] == list(range(base + window + 1, base + 7))
    assert len(pr.inflights) == window  # the freed slot is taken again at once
    for ack in rest:
        leader.step(ack)
    drain(leader)
    assert pr.match == base + window
    assert leader.log.committed == base + window


# ---------------------------------------------------------------------------
# Conflict repair and probing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [0, 50, 100, 200])
def test_election_repairs_divergent_tail_with_a_single_rejection(tail: int) -> None:
    """Counted from the election on: the new leader's first probe to the divergent
    follower is rejected exactly once, and the next append (from index 7) is accepted;
    without the hint it would take one round trip per mismatching entry (100)."""
    leader_terms = [2] * 5 + [5] * 100
    nodes = {
        1: new_node(1, [1, 2, 3], leader_terms),
        2: new_node(2, [1, 2, 3], [2] * 5 + [3] * tail),
        3: new_node(3, [1, 2, 3], leader_terms),
    }
    seen: list[Message] = []

    def watch(m: Message) -> bool:
        seen.append(m)
        return True

    nodes[1].campaign()
    deliver(nodes, drain(nodes[1]), allow=watch)
    leader = nodes[1]
    assert leader.state == StateType.LEADER and leader.term == 6

    rejections = [m for m in seen if m.type == MessageType.APP_RESP and m.frm == 2 and m.reject]
    assert len(rejections) == 1
    (rej,) = rejections
    assert rej.index == 106
    assert (rej.reject_hint, rej.log_term) == (min(106, 6 + tail), 3 if tail else 2)
    to2 = [m for m in of_type(seen, MessageType.APP, 2) if m.entries]
    assert len(to2) == 2
    assert (to2[1].index, to2[1].log_term) == (6, 2)
    assert [e.index for e in to2[1].entries] == list(range(7, 108))
    assert log_of(nodes[2]) == log_of(leader)
    assert leader.trk.progress[2].state == ProgressState.REPLICATE
    assert leader.trk.progress[2].match == 107


def test_restarted_follower_is_probed_then_replicated() -> None:
    """A follower that missed appends while down is in REPLICATE with a full window;
    after it restarts its first append is rejected, the leader drops to PROBE (one
    append at a time from match+1), and the accepted probe puts it back in REPLICATE."""
    c = Cluster((1, 2, 3), seed=9)
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    leader = c.raft(1)
    pr = leader.trk.progress[3]
    match_before = pr.match
    c.crash(3)
    for v in (b"b", b"c", b"d", b"e"):
        c.propose(1, v)
    c.stabilize()
    assert pr.state == ProgressState.REPLICATE and pr.is_paused()
    assert pr.match == match_before

    c.restart(3)
    sent = record_sent(c)
    heartbeat(c, 1)  # heartbeat -> response frees a slot -> append
    states = run_rounds(c, 1, 3)
    assert ProgressState.PROBE in states
    assert states[-1] == ProgressState.REPLICATE
    assert states.index(ProgressState.PROBE) < len(states) - 1

    rejects = [m for m in sent if m.type == MessageType.APP_RESP and m.frm == 3 and m.reject]
    assert len(rejects) == 1
    probe = of_type(sent, MessageType.APP, 3)[1]  # the append sent right after the rejection
    assert probe.index == match_before
    assert pr.match == leader.log.last_index()
    assert c.applied_values(3) == [b"a", b"b", b"c", b"d", b"e"]


# ---------------------------------------------------------------------------
# The commit rule (Raft paper, Figure 8)
# ---------------------------------------------------------------------------


def _figure8() -> tuple[dict[int, RaftNode], list[Message]]:
    """Build Figure 8 (c) with five hand-driven nodes (max_size_per_msg=0, so each
    append carries one entry). Returns the nodes and the held-back messages.

    (a) S1 leads term 2 and replicates its no-op and "a" (indexes 2-3) to S2 only.
    (b) S1 crashes. S5 leads term 3 with votes of S3, S4 and appends its own 2-3,
        then crashes before sending them.
    (c) S1 restarts, leads term 4 (votes of S2, S3, S4) and replicates 2-3 to S3
        and S4, but every append that would hand them its term-4 no-op (index 4)
        is lost.
    """
    ids = [1, 2, 3, 4, 5]
    nodes = {i: new_node(i, ids, max_size_per_msg=0) for i in ids}
    votes = (MessageType.VOTE, MessageType.VOTE_RESP)
    s1, s5 = nodes[1], nodes[5]

    s1.campaign()
    deliver(nodes, drain(s1), allow=lambda m: m.type in votes or 2 in (m.to, m.frm))
    s1.propose(b"a")
    deliver(nodes, drain(s1), allow=lambda m: 2 in (m.to, m.frm))
    assert (s1.state, s1.term) == (StateType.LEADER, 2)
    assert log_of(nodes[2]) == [(2, 2, b""), (3, 2, b"a")]

    s1 = nodes[1] = reboot(s1)
    s5.campaign()
    deliver(nodes, drain(s5), allow=lambda m: m.type in votes and bool({m.to, m.frm} & {3, 4}))
    s5.propose(b"b")
    drain(s5)
    assert (s5.state, s5.term) == (StateType.LEADER, 3)
    assert log_of(s5) == [(2, 3, b""), (3, 3, b"b")]
    nodes[5] = reboot(s5)

    held: list[Message] = []

    def phase_c(m: Message) -> bool:
        if m.to == 5 or m.frm == 5:
            return False
        if m.type == MessageType.APP:
            would_accept = nodes[m.to].log.match_term(m.index, m.log_term)
            if would_accept and any(e.term == 4 for e in m.entries):
                held.append(m)
                return False
        return True

    s1.campaign()  # term 3: S3, S4 already voted for S5
    deliver(nodes, drain(s1), allow=phase_c)
    assert s1.state == StateType.CANDIDATE
    s1.campaign()  # term 4
    deliver(nodes, drain(s1), allow=phase_c)
    assert (s1.state, s1.term) == (StateType.LEADER, 4)
    return nodes, held


def test_figure8_leader_does_not_commit_old_term_entries_by_counting_replicas() -> None:
    """Entries 2-3 of term 2 are on S1-S4 (a majority) and S1 (term 4) knows S3 and
    S4 have them, yet it commits nothing; once S3 and S4 accept its term-4 entry,
    index 4 commits and carries 2-3 with it."""
    nodes, held = _figure8()
    s1 = nodes[1]
    for i in (1, 2, 3, 4):
        assert [nodes[i].log.term(k) for k in (2, 3)] == [2, 2]
    assert s1.trk.progress[3].match == 3 and s1.trk.progress[4].match == 3
    assert s1.log.last_index() == 4 and s1.log.term(4) == 4
    assert {m.to for m in held} == {2, 3, 4}
    assert all(node.log.committed == 1 for node in nodes.values())

    deliver(nodes, [m for m in held if m.to == 3], allow=lambda m: m.to in (1, 3))
    assert s1.trk.progress[3].match == 4
    assert s1.log.committed == 1  # only S1 and S3 hold index 4: no quorum yet
    deliver(nodes, [m for m in held if m.to == 4], allow=lambda m: m.to != 5)
    assert s1.log.committed == 4
    assert nodes[3].log.committed == nodes[4].log.committed == 4


def test_figure8_uncommitted_old_term_entries_may_be_overwritten() -> None:
    """Why the rule matters: if S1 now fails, S5 (last term 3) wins term 5 with the
    votes of S2, S3 and S4 and overwrites indexes 2-3 on all of them; since S1 never
    committed them, no applied entry is lost."""
    nodes, _held = _figure8()
    del nodes[1]
    s5 = nodes[5]
    assert s5.state == StateType.FOLLOWER
    s5.campaign()  # term 4: everyone already voted for S1
    deliver(nodes, drain(s5))
    s5.campaign()  # term 5
    deliver(nodes, drain(s5))
    assert (s5.state, s5.term) == (StateType.LEADER, 5)
    for i in (2, 3, 4, 5):
        assert [nodes[i].log.term(k) for k in (2, 3)] == [3, 3]
        assert nodes[i].log.committed == 4


# ---------------------------------------------------------------------------
# Unreliable network
# ---------------------------------------------------------------------------


def test_duplicated_and_stale_appends_do_not_truncate_the_log() -> None:
    """A follower that receives an old append again (same or shorter prefix) after
    newer ones keeps its longer log and acknowledges without a rejection."""
    nodes = {i: new_node(i, [1, 2, 3]) for i in (1, 2, 3)}
    elect_directly(nodes, 1)
    leader, follower = nodes[1], nodes[2]
    leader.propose(b"x")
    old = of_type(drain(leader), MessageType.APP, 2)
    deliver(nodes, old)
    leader.propose_batch([b"y", b"z"])
    deliver(nodes, drain(leader))
    before = log_of(follower)
    assert [d for _, _, d in before][-3:] == [b"x", b"y", b"z"]
    follower.step(dataclasses.replace(old[0]))
    resp = drain(follower)
    assert [(m.type, m.reject) for m in resp] == [(MessageType.APP_RESP, False)]
    assert log_of(follower) == before


def test_lossy_duplicating_reordering_network_still_converges() -> None:
    """With 20% loss, 20% duplication and delays, every value accepted by the stable
    leader is applied on every node, in the same order."""
    faults = NetworkFaults(drop=0.2, duplicate=0.2, max_delay=3)
    c = Cluster((1, 2, 3), seed=21, faults=faults)
    assert c.run_until(lambda: c.leader() is not None, max_ticks=20 * ET)
    lead = c.leader()
    assert lead is not None
    term = c.raft(lead).term
    proposed = []
    for i in range(40):
        v = b"n%02d" % i
        c.propose(lead, v)
        proposed.append(v)
        c.tick()
    assert c.net.dropped > 0
    c.net.faults = NetworkFaults()
    c.tick(3 * ET)
    assert c.leader() == lead and c.raft(lead).term == term
    for i in (1, 2, 3):
        assert c.applied_values(i) == proposed


@pytest.mark.parametrize("lost", [MessageType.APP, MessageType.APP_RESP])
def test_appends_or_acks_lost_by_type_are_recovered(lost: MessageType) -> None:
    """While every APP (or every APP_RESP) is lost nothing new commits though the
    leader keeps sending appends on heartbeats; once they get through everything
    commits everywhere (lost appends are found through a rejection and a probe)."""
    c = Cluster((1, 2, 3), seed=22, opts=NodeOptions(max_inflight=2))
    c.elect(1)
    committed = c.raft(1).log.committed
    c.net.drop_types = {lost}
    sent = record_sent(c)
    values = [b"d%d" % k for k in range(5)]
    for v in values:
        c.propose(1, v)
    c.tick(5)
    assert c.raft(1).log.committed == committed
    assert len(of_type(sent, MessageType.APP, 2)) > 2  # kept sending past the in-flight window
    assert c.raft(1).state == StateType.LEADER
    c.net.drop_types = set()
    sent.clear()
    c.tick(2)
    c.stabilize()
    assert c.raft(1).log.committed == committed + 5
    for i in (1, 2, 3):
        assert c.applied_values(i) == values
    rejections = [m for m in sent if m.type == MessageType.APP_RESP and m.reject]
    assert (len(rejections) > 0) == (lost == MessageType.APP)
