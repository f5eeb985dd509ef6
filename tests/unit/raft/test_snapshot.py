"""Snapshot scenarios: shipping a snapshot to a lagging follower, failed sends,
recovery after a crash, and MemoryStorage's error cases."""

from __future__ import annotations

import random

import pytest

from cluster.raft import (
    NONE,
    CompactedError,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    RaftError,
    RaftNode,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from cluster.raft.errors import SnapshotOutOfDateError

from .helpers import heartbeat, on_send, run_rounds
from .sim import Cluster, NodeOptions, StateMachine

SNAP_OPTS = NodeOptions(snapshot_every=5, keep_after_snapshot=0)
VOTERS = ConfState(frozenset({1, 2, 3}))

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


Sent = list[tuple[Message, ProgressState | None]]


def record_with_progress(c: Cluster) -> Sent:
    """Every message handed to the network from now on, with the sender's progress
    state for the receiver at that moment (None if the sender is not leading)."""
    sent: Sent = []

    def note(m: Message) -> None:
        pr = c.raft(m.frm).trk.progress.get(m.to) if c.leader() == m.frm else None
        sent.append((m, pr.state if pr is not None else None))

    on_send(c, note)
    return sent


def sent_of(sent: Sent, kind: MessageType, to: int) -> Sent:
    return [(m, st) for m, st in sent if m.type == kind and m.to == to]


def follower_with_log() -> RaftNode:
    """Node 2 of ``VOTERS``: a snapshot at index 1, entries 2..10 of term 2, commit 3."""
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMetadata(1, 1, VOTERS)))
    storage.append([Entry(2, i) for i in range(2, 11)])
    storage.set_hard_state(HardState(2, NONE, 3))
    return RaftNode(Config(id=2, rng=random.Random(2), applied=1), storage)


def compacted_cluster(values: list[bytes], ticks_while_down: int = 0) -> Cluster:
    """Three nodes, leader 1; node 3 was down while ``values`` committed and the
    leader compacted its log past everything node 3 has."""
    c = Cluster((1, 2, 3), seed=31, opts=SNAP_OPTS)
    c.elect(1)
    c.crash(3)
    for v in values:
        c.propose(1, v)
        c.stabilize()
    c.tick(ticks_while_down)
    assert c.leader() == 1
    leader_storage = c.nodes[1].storage
    assert leader_storage.snapshot().metadata.index > 0
    assert leader_storage.first_index() > c.nodes[3].storage.last_index() + 1
    return c


# ---------------------------------------------------------------------------
# Sending and installing snapshots
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ticks_while_down", [0, 3 * 10])
def test_lagging_follower_installs_snapshot_then_continues_with_appends(
    ticks_while_down: int,
) -> None:
    """The leader ships its snapshot (progress SNAPSHOT, nothing else sent meanwhile),
    the follower installs it (state machine and storage snapshot equal the
    leader's), the leader returns to REPLICATE, and later entries reach the
    follower as plain appends. Also when CheckQuorum marked the follower inactive."""
    values = [b"v%02d" % i for i in range(20)]
    c = compacted_cluster(values, ticks_while_down)
    c.restart(3)
    sent = record_with_progress(c)
    heartbeat(c, 1)
    states = run_rounds(c, 1, 3)

    snaps = sent_of(sent, MessageType.SNAP, 3)
    assert len(snaps) == 1
    snap_msg, state_at_send = snaps[0]
    assert state_at_send == ProgressState.SNAPSHOT
    assert snap_msg.snapshot is not None
    snap_index = snap_msg.snapshot.metadata.index
    assert snap_index == c.nodes[1].storage.snapshot().metadata.index

    follower = c.nodes[3]
    assert follower.storage.snapshot().metadata.index == snap_index > 0
    assert follower.storage.first_index() == snap_index + 1
    assert c.applied_values(3) == c.applied_values(1) == values
    assert c.raft(3).log.committed == c.raft(1).log.committed

    pr = c.raft(1).trk.progress[3]
    assert ProgressState.SNAPSHOT in states
    assert states[-1] == ProgressState.REPLICATE
    assert states.index(ProgressState.SNAPSHOT) < len(states) - 1
    assert (pr.match, pr.pending_snapshot) == (c.raft(1).log.last_index(), 0)
    assert all(st != ProgressState.SNAPSHOT for _, st in sent_of(sent, MessageType.APP, 3))

    sent.clear()
    more = [b"after1", b"after2"]
    for v in more:
        c.propose(1, v)
    c.stabilize()
    assert sent_of(sent, MessageType.SNAP, 3) == []
    carried = [e.data for m, _ in sent_of(sent, MessageType.APP, 3) for e in m.entries]
    assert carried == more
    assert c.applied_values(3) == values + more


def test_failed_snapshot_send_makes_leader_probe_and_retry() -> None:
    """report_snapshot(failed=True) moves the progress to PROBE with no pending
    snapshot and paused until the next heartbeat response, which triggers a fresh
    snapshot; once the network lets SNAP through the follower catches up."""
    values = [b"f%02d" % i for i in range(12)]
    c = compacted_cluster(values)
    c.restart(3)
    c.net.drop_types = {MessageType.SNAP}
    sent = record_with_progress(c)
    pr = c.raft(1).trk.progress[3]

    heartbeat(c, 1)
    c.deliver_round()  # node 3 answers the heartbeat
    c.deliver_round()  # leader sends a SNAP; the transport reports it failed
    assert len(sent_of(sent, MessageType.SNAP, 3)) == 1
    assert sent_of(sent, MessageType.SNAP, 3)[0][1] == ProgressState.SNAPSHOT
    assert pr.state == ProgressState.PROBE
    assert pr.pending_snapshot == 0
    assert pr.next == pr.match + 1
    assert pr.is_paused()
    c.stabilize()
    assert len(sent_of(sent, MessageType.SNAP, 3)) == 1  # paused: no retry without a heartbeat

    heartbeat(c, 1)
    c.stabilize()
    assert len(sent_of(sent, MessageType.SNAP, 3)) == 2  # retried
    assert pr.state == ProgressState.PROBE
    assert c.nodes[3].storage.snapshot().is_empty()

    c.net.drop_types = set()
    heartbeat(c, 1)
    c.stabilize()
    assert len(sent_of(sent, MessageType.SNAP, 3)) == 3
    assert c.raft(1).trk.progress[3].state == ProgressState.REPLICATE
    assert c.applied_values(3) == values


def test_snapshot_status_is_ignored_unless_a_snapshot_is_pending() -> None:
    """A stray SNAP_STATUS for a follower in REPLICATE changes nothing."""
    c = Cluster((1, 2, 3), seed=32, opts=SNAP_OPTS)
    c.elect(1)
    pr = c.raft(1).trk.progress[2]
    before = (pr.state, pr.match, pr.next)
    assert pr.state == ProgressState.REPLICATE
    c.raft(1).report_snapshot(2, failed=True)
    assert (pr.state, pr.match, pr.next) == before


def test_snapshot_covering_entries_the_follower_has_only_advances_commit() -> None:
    """A SNAP whose (index, term) the follower already holds is not installed; it
    just commits up to the snapshot and acks that index. A SNAP at or below the
    commit index is ignored and acked with the commit index."""
    node = follower_with_log()
    assert node.log.committed == 3

    snap = Snapshot(SnapshotMetadata(8, 2, VOTERS), b"state")
    node.step(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None
    assert node.log.committed == 8 and node.log.last_index() == 10
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [(MessageType.APP_RESP, 8, False)]
    assert [e.index for e in rd.committed_entries] == list(range(2, 9))
    node.advance(rd)

    old = Snapshot(SnapshotMetadata(5, 2, VOTERS), b"old")
    node.step(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=old))
    rd = node.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages] == [(MessageType.APP_RESP, 8)]


def test_snapshot_replaces_a_conflicting_log() -> None:
    """A follower whose entry at the snapshot index has another term discards its
    log: the Ready carries the snapshot and no committed entries, and afterwards
    its log starts right after the snapshot."""
    node = follower_with_log()

    snap = Snapshot(SnapshotMetadata(20, 3, VOTERS), b"state")
    node.step(Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    assert rd.committed_entries == []
    assert rd.hard_state == HardState(3, NONE, 20)
    assert [(m.type, m.index) for m in rd.messages] == [(MessageType.APP_RESP, 20)]
    node.log.storage.apply_snapshot(rd.snapshot)
    node.log.storage.set_hard_state(rd.hard_state)
    node.advance(rd)
    assert (node.log.first_index(), node.log.last_index(), node.log.applied) == (21, 20, 20)
    assert node.log.term(20) == 3


# ---------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------


def test_crashed_node_recovers_from_snapshot_plus_log_without_the_network() -> None:
    """A restarted node rebuilds its state machine from its own snapshot and then
    replays the committed entries kept after it, before hearing from anyone."""
    c = Cluster((1, 2, 3), seed=33, opts=NodeOptions(snapshot_every=5, keep_after_snapshot=2))
    c.elect(1)
    values = [b"r%02d" % i for i in range(13)]
    for v in values:
        c.propose(1, v)
        c.stabilize()
    storage = c.nodes[2].storage
    snap_index = storage.snapshot().metadata.index
    commit = storage.hard_state.commit
    assert 0 < snap_index < commit == storage.last_index()
    assert storage.first_index() <= snap_index  # keep_after_snapshot kept a few behind it
    from_snapshot = StateMachine.from_snapshot(storage.snapshot()).values
    assert 0 < len(from_snapshot) < len(values)
    assert from_snapshot == values[: len(from_snapshot)]

    c.crash(2)
    c.restart(2)
    assert c.net.pending() == 0  # nothing was delivered to node 2
    r2 = c.raft(2)
    assert (r2.log.committed, r2.log.applied) == (commit, commit)
    assert c.applied_values(2) == values

    c.propose(1, b"next")
    c.stabilize()
    assert c.applied_values(2) == [*values, b"next"]


def test_whole_cluster_restart_recovers_and_keeps_going() -> None:
    """Every node crashes after compacting; all restart, elect a leader and carry on
    with the same applied history."""
    c = Cluster((1, 2, 3), seed=34, opts=SNAP_OPTS)
    c.elect(1)
    values = [b"w%02d" % i for i in range(11)]
    for v in values:
        c.propose(1, v)
        c.stabilize()
    assert all(c.nodes[i].storage.snapshot().metadata.index > 0 for i in (1, 2, 3))
    for i in (1, 2, 3):
        c.crash(i)
    for i in (1, 2, 3):
        c.restart(i)
        assert c.applied_values(i) == values
    assert c.run_until(lambda: c.leader() is not None, max_ticks=100)
    lead = c.leader()
    assert lead is not None
    c.propose(lead, b"again")
    c.stabilize()
    for i in (1, 2, 3):
        assert c.applied_values(i) == [*values, b"again"]


# ---------------------------------------------------------------------------
# MemoryStorage error cases
# ---------------------------------------------------------------------------


def _storage(last: int) -> MemoryStorage:
    st = MemoryStorage()
    st.append([Entry(1 + i // 4, i) for i in range(1, last + 1)])  # terms 1,1,1,2,2,2,2,3...
    return st


def test_memory_storage_create_snapshot_errors() -> None:
    """create_snapshot refuses an index at or below the current snapshot
    (SnapshotOutOfDateError) or past the last entry (UnavailableError)."""
    st = _storage(10)
    cs = ConfState(frozenset({1}))
    snap = st.create_snapshot(5, cs, b"s5")
    assert snap.metadata == SnapshotMetadata(5, 2, cs) and st.snapshot() is snap
    with pytest.raises(SnapshotOutOfDateError):
        st.create_snapshot(5, cs, b"again")
    with pytest.raises(SnapshotOutOfDateError):
        st.create_snapshot(3, cs, b"older")
    with pytest.raises(UnavailableError):
        st.create_snapshot(11, cs, b"future")
    assert st.snapshot() is snap


def test_memory_storage_compact_errors_and_reads_around_the_compaction() -> None:
    """compact refuses indexes already compacted (CompactedError) or past the end
    (UnavailableError); after compacting, reads below the first index raise
    CompactedError and reads past the end raise UnavailableError."""
    st = _storage(10)
    st.create_snapshot(5, ConfState(frozenset({1})), b"s")
    st.compact(5)
    assert (st.first_index(), st.last_index()) == (6, 10)
    assert st.term(5) == 2  # the snapshot's own term is still known
    with pytest.raises(CompactedError):
        st.compact(5)
    with pytest.raises(CompactedError):
        st.compact(3)
    with pytest.raises(UnavailableError):
        st.compact(11)
    with pytest.raises(CompactedError):
        st.term(4)
    with pytest.raises(UnavailableError):
        st.term(11)
    with pytest.raises(CompactedError):
        st.entries(5, 8)
    with pytest.raises(UnavailableError):
        st.entries(6, 12)
    assert [e.index for e in st.entries(6, 11)] == [6, 7, 8, 9, 10]
    with pytest.raises(RaftError):
        st.append([Entry(3, 12)])  # would leave a gap at 11
    assert st.last_index() == 10


def test_memory_storage_apply_snapshot_errors() -> None:
    """apply_snapshot refuses a snapshot not newer than the current one
    (SnapshotOutOfDateError); a newer one replaces the whole log."""
    st = _storage(10)
    cs = ConfState(frozenset({1, 2}))
    st.create_snapshot(6, cs, b"s6")
    with pytest.raises(SnapshotOutOfDateError):
        st.apply_snapshot(Snapshot(SnapshotMetadata(6, 2, cs), b"same"))
    with pytest.raises(SnapshotOutOfDateError):
        st.apply_snapshot(Snapshot(SnapshotMetadata(4, 1, cs), b"older"))
    assert st.last_index() == 10

    st.apply_snapshot(Snapshot(SnapshotMetadata(20, 5, cs), b"s20"))
    assert (st.first_index(), st.last_index(), st.term(20)) == (21, 20, 5)
    assert st.initial_state()[1] == cs
    with pytest.raises(CompactedError):
        st.term(10)
    with pytest.raises(CompactedError):
        st.compact(20)
