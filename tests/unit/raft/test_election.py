"""Leader election scenarios: timeouts, votes, PreVote, CheckQuorum, leases, the no-op entry.

Each test drives either a simulated ``Cluster`` or bare ``RaftNode`` objects
(stepping messages by hand) and asserts on concrete terms, votes, states and
messages, so a regression in the core makes it fail.
"""

from __future__ import annotations

import random

import pytest

from cluster.raft import (
    NONE,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftNode,
    StateType,
)

from .helpers import ET, deliver, drain, new_node, of_type, on_send
from .sim import Cluster, NodeOptions

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def vote_request(frm: int, to: int, term: int, last_index: int, last_term: int) -> Message:
    return Message(
        MessageType.VOTE, to=to, frm=frm, term=term, index=last_index, log_term=last_term
    )


def state_of(node: RaftNode) -> StateType:
    """Read the state afresh (keeps type checkers from narrowing it across steps)."""
    return node.state


def leaders(c: Cluster) -> list[int]:
    return [n.id for n in c.live() if n.node().state == StateType.LEADER]


# ---------------------------------------------------------------------------
# Basic election
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cluster_elects_exactly_one_leader_by_ticking(size: int, seed: int) -> None:
    """No one campaigns before election_tick; then one leader emerges and every
    member agrees on its term and identity, and it stays that way."""
    ids = list(range(1, size + 1))
    c = Cluster(ids, seed=seed)
    c.tick(ET - 1)
    assert all(c.raft(i).state == StateType.FOLLOWER for i in ids)
    assert all(c.raft(i).term == 1 for i in ids)

    assert c.run_until(lambda: c.leader() is not None, max_ticks=5 * ET)
    c.tick(3 * ET)  # leadership is stable with heartbeats flowing
    assert len(leaders(c)) == 1
    lead = leaders(c)[0]
    term = c.raft(lead).term
    assert term >= 2
    for i in ids:
        r = c.raft(i)
        assert r.term == term
        assert r.lead == lead
        if i != lead:
            assert r.state == StateType.FOLLOWER


def test_minority_cannot_elect_a_leader() -> None:
    """Two live nodes of five never elect anyone (and, with PreVote, never raise
    their term); a third node coming back lets an election succeed."""
    c = Cluster(range(1, 6), seed=4)
    for i in (3, 4, 5):
        c.crash(i)
    c.tick(10 * ET)
    assert c.leader() is None
    assert c.raft(1).term == c.raft(2).term == 1
    c.restart(3)
    assert c.run_until(lambda: c.leader() is not None, max_ticks=5 * ET)
    assert c.leader() in (1, 2, 3)


def test_randomized_election_timeout_is_in_range_and_varies() -> None:
    """The timeout lies in [election_tick, 2*election_tick), is drawn anew on every
    term change, differs across seeds and nodes, and is exactly when a follower campaigns."""
    seen: set[int] = set()
    for seed in range(40):
        node = new_node(1, [1, 2, 3], seed=seed)
        timeout = node.randomized_election_timeout
        assert ET <= timeout < 2 * ET
        seen.add(timeout)
        for _ in range(timeout - 1):
            node.tick()
        assert node.state == StateType.FOLLOWER
        assert drain(node) == []
        node.tick()
        assert state_of(node) == StateType.CANDIDATE
    assert len(seen) >= 6

    # Redrawn on each reset (term change) of one node.
    node = new_node(1, [1, 2, 3], seed=5)
    draws = set()
    for term in range(2, 30):
        node.become_follower(term, NONE)
        assert ET <= node.randomized_election_timeout < 2 * ET
        draws.add(node.randomized_election_timeout)
    assert len(draws) >= 6

    # Members of one simulated cluster do not share a timeout.
    c = Cluster(range(1, 6), seed=0)
    assert len({c.raft(i).randomized_election_timeout for i in range(1, 6)}) > 1


def test_candidate_persists_term_and_self_vote_in_the_ready_with_its_vote_requests() -> None:
    """Becoming a candidate puts HardState(term+1, vote=self) and the VOTE messages in
    the same Ready, flagged must_sync, so the driver persists before sending."""
    node = new_node(1, [1, 2, 3], log_terms=[1, 1], seed=3)
    assert node.term == 1
    for _ in range(node.randomized_election_timeout):
        node.tick()
    rd = node.ready()
    assert rd.hard_state == HardState(term=2, vote=1, commit=1)
    assert rd.must_sync
    votes = of_type(rd.messages, MessageType.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all((m.term, m.index, m.log_term) == (2, 3, 1) for m in votes)


def test_pre_candidate_changes_nothing_durable_until_pre_vote_wins() -> None:
    """With PreVote the first Ready has PRE_VOTEs for term+1 but no HardState change;
    the vote for itself is persisted only in the Ready carrying the real VOTEs."""
    node = new_node(1, [1, 2, 3], pre_vote=True, seed=3)
    node.campaign()
    rd = node.ready()
    assert node.state == StateType.PRE_CANDIDATE
    assert rd.hard_state is None and not rd.must_sync
    pre = of_type(rd.messages, MessageType.PRE_VOTE)
    assert sorted(m.to for m in pre) == [2, 3] and all(m.term == 2 for m in pre)
    assert of_type(rd.messages, MessageType.VOTE) == []
    node.advance(rd)
    assert (node.term, node.vote) == (1, NONE)

    node.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=2))
    rd = node.ready()
    assert state_of(node) == StateType.CANDIDATE
    assert rd.hard_state == HardState(term=2, vote=1, commit=1) and rd.must_sync
    assert sorted(m.to for m in of_type(rd.messages, MessageType.VOTE)) == [2, 3]


def test_cluster_persists_term_and_vote_before_any_vote_message_leaves() -> None:
    """Across several elections in a 5-node cluster, every VOTE and every granted
    VOTE_RESP leaves only after its sender's storage holds the matching term and vote."""
    c = Cluster(range(1, 6), seed=11, opts=NodeOptions(pre_vote=False))
    checked: list[MessageType] = []

    def check(m: Message) -> None:
        hs = c.nodes[m.frm].storage.hard_state
        if m.type == MessageType.VOTE:
            assert (hs.term, hs.vote) == (m.term, m.frm)
            checked.append(m.type)
        elif m.type == MessageType.VOTE_RESP and not m.reject:
            assert (hs.term, hs.vote) == (m.term, m.to)
            checked.append(m.type)

    on_send(c, check)
    for _ in range(3):
        assert c.run_until(lambda: c.leader() is not None, max_ticks=10 * ET)
        lead = c.leader()
        assert lead is not None
        c.crash(lead)
        c.tick(1)
        c.restart(lead)
    assert checked.count(MessageType.VOTE) >= 6
    assert checked.count(MessageType.VOTE_RESP) >= 6


# ---------------------------------------------------------------------------
# Voting rules
# ---------------------------------------------------------------------------


def test_node_votes_at_most_once_per_term_even_across_a_restart() -> None:
    """A vote is granted to one candidate per term (a retransmitted request from
    the same candidate is re-granted), survives a restart, and resets in a new term."""
    node = new_node(1, [1, 2, 3], log_terms=[2], term=5)
    node.step(vote_request(2, 1, term=6, last_index=2, last_term=2))
    out = drain(node)
    assert [(m.type, m.to, m.term, m.reject) for m in out] == [(MessageType.VOTE_RESP, 2, 6, False)]
    assert (node.term, node.vote) == (6, 2)
    assert node.log.storage.hard_state == HardState(6, 2, 1)

    node.step(vote_request(3, 1, term=6, last_index=2, last_term=2))
    assert [(m.to, m.reject) for m in drain(node)] == [(3, True)]
    node.step(vote_request(2, 1, term=6, last_index=2, last_term=2))
    assert [(m.to, m.reject) for m in drain(node)] == [(2, False)]
    assert node.vote == 2

    cfg = Config(id=1, rng=random.Random(1), election_tick=ET, applied=1, pre_vote=False)
    restarted = RaftNode(cfg, node.log.storage)
    assert (restarted.term, restarted.vote) == (6, 2)
    restarted.step(vote_request(3, 1, term=6, last_index=2, last_term=2))
    assert [(m.to, m.reject) for m in drain(restarted)] == [(3, True)]

    restarted.step(vote_request(3, 1, term=7, last_index=2, last_term=2))
    assert [(m.to, m.term, m.reject) for m in drain(restarted)] == [(3, 7, False)]
    assert (restarted.term, restarted.vote) == (7, 3)


@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [
        (4, 2, True),  # identical log
        (9, 2, True),  # same last term, longer
        (2, 3, True),  # shorter, but a newer last term
        (3, 2, False),  # same last term, shorter
        (12, 1, False),  # longer, but an older last term
    ],
)
def test_vote_requires_candidate_log_at_least_as_up_to_date(
    cand_index: int, cand_term: int, granted: bool
) -> None:
    """The voter (log ends at index 4, term 2) grants only if the candidate's
    (last term, last index) is at least its own, comparing terms first."""
    voter = new_node(1, [1, 2, 3], log_terms=[1, 2, 2], term=2)
    voter.step(vote_request(2, 1, term=3, last_index=cand_index, last_term=cand_term))
    out = drain(voter)
    assert [(m.type, m.reject) for m in out] == [(MessageType.VOTE_RESP, not granted)]
    assert voter.term == 3
    assert voter.vote == (2 if granted else NONE)


def test_candidate_missing_committed_entries_cannot_win() -> None:
    """A node that was down while entries committed campaigns, is refused by the
    up-to-date survivor, and the survivor then wins and repairs it."""
    c = Cluster((1, 2, 3), seed=4, opts=NodeOptions(pre_vote=False, check_quorum=False))
    c.elect(1)
    c.crash(3)
    for v in (b"a", b"b", b"c"):
        c.propose(1, v)
    c.stabilize()
    assert c.raft(2).log.committed == c.raft(1).log.committed
    c.crash(1)
    c.restart(3)
    assert c.raft(3).log.last_index() < c.raft(2).log.last_index()

    c.elect(3)
    r2, r3 = c.raft(2), c.raft(3)
    assert r3.state == StateType.CANDIDATE
    assert r2.term == r3.term and r2.vote == NONE  # learned the term, refused the vote

    c.elect(2)
    assert c.raft(2).state == StateType.LEADER
    assert c.raft(3).lead == 2
    assert c.applied_values(3) == [b"a", b"b", b"c"]


# ---------------------------------------------------------------------------
# PreVote
# ---------------------------------------------------------------------------


def test_prevote_isolated_node_rejoins_without_raising_the_term() -> None:
    """With PreVote a node cut off for 10 election timeouts never raises its term;
    when it rejoins the leader and term are unchanged."""
    c = Cluster((1, 2, 3), seed=5, opts=NodeOptions(pre_vote=True))
    c.elect(1)
    term = c.raft(1).term
    c.isolate(3)
    c.tick(10 * ET)
    assert c.raft(3).term == term
    assert c.raft(3).state == StateType.PRE_CANDIDATE
    assert c.raft(1).state == StateType.LEADER

    c.heal()
    c.tick(3 * ET)
    assert leaders(c) == [1]
    for i in (1, 2, 3):
        assert (c.raft(i).term, c.raft(i).lead) == (term, 1)
    assert c.raft(3).state == StateType.FOLLOWER


def test_without_prevote_isolated_node_inflates_its_term_and_deposes_the_leader() -> None:
    """Without PreVote the same isolation makes the node's term grow with every
    timeout, and on rejoining it forces the cluster to a new, higher term."""
    c = Cluster((1, 2, 3), seed=5, opts=NodeOptions(pre_vote=False))
    c.elect(1)
    term = c.raft(1).term
    c.isolate(3)
    c.tick(10 * ET)
    isolated_term = c.raft(3).term
    assert isolated_term >= term + 5
    assert c.raft(3).state == StateType.CANDIDATE
    assert c.raft(1).term == term

    c.heal()
    assert c.run_until(lambda: c.leader() is not None and c.raft(1).term > term, 5 * ET)
    lead = c.leader()
    assert lead is not None
    assert c.raft(lead).term >= isolated_term
    assert c.raft(1).term >= isolated_term


# ---------------------------------------------------------------------------
# CheckQuorum and leader lease
# ---------------------------------------------------------------------------


def test_check_quorum_isolated_leader_steps_down_and_majority_elects() -> None:
    """An isolated leader becomes a follower (same term, no leader) within two
    election timeouts; the connected majority elects a leader of a higher term."""
    c = Cluster((1, 2, 3), seed=6, opts=NodeOptions(check_quorum=True))
    c.elect(1)
    term = c.raft(1).term
    c.isolate(1)
    stepped_down_at = None
    for t in range(1, 2 * ET + 1):
        c.tick()
        if c.raft(1).state != StateType.LEADER:
            stepped_down_at = t
            break
    # The first check still sees the acks from before the cut; the second does not.
    assert stepped_down_at is not None and ET < stepped_down_at <= 2 * ET
    r1 = c.raft(1)
    assert (r1.state, r1.term, r1.lead) == (StateType.FOLLOWER, term, NONE)

    assert c.run_until(lambda: c.leader() in (2, 3), max_ticks=4 * ET)
    c.tick(1)
    lead = c.leader()
    assert lead is not None
    assert c.raft(lead).term > term
    assert c.raft(5 - lead).lead == lead


def test_without_check_quorum_isolated_leader_keeps_leading() -> None:
    """The contrast case: with check_quorum off the isolated leader never notices."""
    c = Cluster((1, 2, 3), seed=6, opts=NodeOptions(check_quorum=False))
    c.elect(1)
    term = c.raft(1).term
    c.isolate(1)
    c.tick(6 * ET)
    assert (c.raft(1).state, c.raft(1).term) == (StateType.LEADER, term)


@pytest.mark.parametrize("kind", [MessageType.VOTE, MessageType.PRE_VOTE])
def test_follower_in_leader_lease_ignores_higher_term_vote_requests(kind: MessageType) -> None:
    """With check_quorum, a follower that heard from its leader less than
    election_tick ago drops higher-term (pre-)vote requests without a reply or a
    term change; once the lease has passed it grants them."""
    seed = next(
        s for s in range(100) if new_node(2, [1, 2, 3], seed=s).randomized_election_timeout > ET
    )
    node = new_node(2, [1, 2, 3], log_terms=[2], term=2, check_quorum=True, seed=seed)
    node.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=2, commit=1))
    drain(node)
    assert node.lead == 1

    node.tick()
    node.step(Message(kind, to=2, frm=3, term=3, index=2, log_term=2))
    assert drain(node) == []
    assert (node.term, node.vote, node.lead) == (2, NONE, 1)

    for _ in range(ET - 1):
        node.tick()
    assert node.state == StateType.FOLLOWER and drain(node) == []
    node.step(Message(kind, to=2, frm=3, term=3, index=2, log_term=2))
    resp = MessageType.VOTE_RESP if kind == MessageType.VOTE else MessageType.PRE_VOTE_RESP
    assert [(m.type, m.to, m.term, m.reject) for m in drain(node)] == [(resp, 3, 3, False)]
    if kind == MessageType.VOTE:
        assert (node.term, node.vote) == (3, 3)
    else:
        assert (node.term, node.vote) == (2, NONE)  # a pre-vote changes nothing


def test_without_check_quorum_there_is_no_lease() -> None:
    """The contrast case: without check_quorum a fresh follower grants a higher-term vote."""
    node = new_node(2, [1, 2, 3], log_terms=[2], term=2, check_quorum=False)
    node.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=2, commit=1))
    drain(node)
    node.step(vote_request(3, 2, term=3, last_index=2, last_term=2))
    assert [(m.type, m.reject) for m in drain(node)] == [(MessageType.VOTE_RESP, False)]
    assert (node.term, node.vote, node.lead) == (3, 3, NONE)


def test_stale_leader_returning_from_partition_becomes_follower_of_new_term() -> None:
    """A partitioned leader (check_quorum off, so it keeps leading) that comes back
    learns the higher term, follows the new leader, and loses its uncommitted entry."""
    c = Cluster((1, 2, 3), seed=8, opts=NodeOptions(check_quorum=False))
    c.elect(1)
    old_term = c.raft(1).term
    c.isolate(1)
    c.propose(1, b"lost")
    c.elect(2)
    c.propose(2, b"kept")
    c.stabilize()
    new_term = c.raft(2).term
    assert new_term > old_term
    assert (c.raft(1).state, c.raft(1).term) == (StateType.LEADER, old_term)

    c.heal()
    c.tick(2)
    c.stabilize()
    r1 = c.raft(1)
    assert (r1.state, r1.term, r1.lead) == (StateType.FOLLOWER, new_term, 2)
    assert leaders(c) == [2]
    for i in (1, 2, 3):
        assert c.applied_values(i) == [b"kept"]
    assert r1.log.last_index() == c.raft(2).log.last_index()
    last = r1.log.last_index()
    assert [e.data for e in r1.log.slice(last, last + 1)] == [b"kept"]


# ---------------------------------------------------------------------------
# The no-op entry
# ---------------------------------------------------------------------------


def test_new_leader_first_appends_an_empty_entry_of_its_own_term() -> None:
    """The Ready in which a node becomes leader appends exactly one empty NORMAL entry
    of the new term after its log and ships it to everyone; committing it commits
    the earlier terms' entries too."""
    nodes = {i: new_node(i, [1, 2, 3], log_terms=[2, 2], term=3) for i in (1, 2, 3)}
    nodes[3] = new_node(3, [1, 2, 3], log_terms=[2], term=3)
    n1 = nodes[1]
    n1.campaign()
    votes = drain(n1)
    assert all(m.term == 4 for m in votes)
    n1.step(Message(MessageType.VOTE_RESP, to=1, frm=2, term=4))
    rd = n1.ready()
    assert rd.soft_state is not None and rd.soft_state.state == StateType.LEADER
    assert rd.entries == [Entry(term=4, index=4, type=EntryType.NORMAL, data=b"")]
    apps = of_type(rd.messages, MessageType.APP)
    assert sorted(m.to for m in apps) == [2, 3]
    for m in apps:
        assert (m.index, m.log_term, m.commit) == (3, 2, 1)
        assert [(e.index, e.term, e.data) for e in m.entries] == [(4, 4, b"")]
    n1.log.storage.append(rd.entries)
    n1.advance(rd)
    assert n1.log.committed == 1  # its own copy alone is no quorum

    deliver(nodes, apps + drain(n1))
    for node in nodes.values():
        assert node.log.committed == 4
        assert node.log.term(4) == 4 and node.log.term(3) == 2
