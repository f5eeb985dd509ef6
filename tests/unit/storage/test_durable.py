"""The Raft log on disk end to end: WAL + snapshot files behind the core's MemoryStorage."""

from __future__ import annotations

import os
import random

import pytest

from cluster.raft import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftNode,
    Ready,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from cluster.storage.backend import Backend, DataDirMismatchError
from cluster.storage.durable import Retention, open_raft_log
from cluster.storage.snap import snapshot_name

MEMBER, CLUSTER = 0x8E9E05C52164694D, 0xCDF818194E3A8C32


def _ready(entries: list[Entry], commit: int, term: int = 1) -> Ready:
    return Ready(hard_state=HardState(term, 1, commit), entries=entries, must_sync=True)


def _entries(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"v%d" % i) for i in range(first, first + count)]


def _log_of(store) -> list[tuple[int, int, bytes]]:  # type: ignore[no-untyped-def]
    s = store.storage
    return [(e.index, e.term, e.data) for e in s.entries(s.first_index(), s.last_index() + 1)]


def test_new_data_dir_has_etcds_layout_and_reopens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert store.is_new
    store.save(_ready(_entries(1, 10), commit=7))
    store.close()
    assert os.listdir(tmp_path / "member" / "wal") == ["0000000000000000-0000000000000000.wal"]
    assert (tmp_path / "member" / "snap").is_dir()

    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert not again.is_new
    assert again.storage.hard_state == HardState(1, 1, 7)
    assert _log_of(again) == [(i, 1, b"v%d" % i) for i in range(1, 11)]
    assert (again.member_id, again.cluster_id) == (MEMBER, CLUSTER)


@pytest.mark.parametrize("member, cluster", [(MEMBER + 1, CLUSTER), (MEMBER, CLUSTER + 1)])
def test_data_dir_of_another_member_or_cluster_is_refused(tmp_path, member, cluster) -> None:  # type: ignore[no-untyped-def]
    open_raft_log(str(tmp_path), MEMBER, CLUSTER).close()
    with pytest.raises(DataDirMismatchError) as err:
        open_raft_log(str(tmp_path), member, cluster)
    message = str(err.value)
    assert f"{MEMBER:x}" in message and f"{CLUSTER:x}" in message
    assert "remove this member and add a fresh one" in message


def test_restart_without_ids_takes_them_from_the_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    open_raft_log(str(tmp_path), MEMBER, CLUSTER).close()
    store = open_raft_log(str(tmp_path), None, None)
    assert (store.member_id, store.cluster_id) == (MEMBER, CLUSTER)


def test_snapshots_release_wal_segments_and_keep_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    retention = Retention(max_wals=2, max_snapshots=2, catch_up_entries=5)
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER, segment_size=2048, retention=retention)
    cs = ConfState(frozenset({1}))
    next_index = 1
    for round_ in range(1, 7):
        store.save(_ready(_entries(next_index, 100), commit=next_index + 99))
        next_index += 100
        store.snapshot(next_index - 1, cs, b"state-%d" % round_)
    wal_dir, snap_dir = tmp_path / "member" / "wal", tmp_path / "member" / "snap"
    assert len([n for n in os.listdir(wal_dir) if n.endswith(".wal")]) == 2
    snaps = sorted(n for n in os.listdir(snap_dir) if n.endswith(".snap"))
    assert snaps == [snapshot_name(1, 500), snapshot_name(1, 600)]
    assert store.storage.first_index() == 600 - 5 + 1
    store.save(_ready(_entries(601, 3), commit=603))
    store.close()

    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER, segment_size=2048, retention=retention)
    assert again.storage.snapshot().metadata.index == 600
    assert again.storage.snapshot().data == b"state-6"
    assert _log_of(again) == [(i, 1, b"v%d" % i) for i in range(601, 604)]


def test_corrupt_newest_snapshot_falls_back_to_an_older_one_and_the_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER, retention=Retention(catch_up_entries=0))
    cs = ConfState(frozenset({1}))
    store.save(_ready(_entries(1, 50), commit=50))
    store.snapshot(50, cs, b"at-50")
    store.save(_ready(_entries(51, 50), commit=100))
    store.snapshot(100, cs, b"at-100")
    store.save(_ready(_entries(101, 5), commit=105))
    store.close()
    newest = tmp_path / "member" / "snap" / snapshot_name(1, 100)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))

    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert again.storage.snapshot().metadata.index == 50
    assert again.storage.snapshot().data == b"at-50"
    assert _log_of(again) == [(i, 1, b"v%d" % i) for i in range(51, 106)]
    assert again.storage.hard_state.commit == 105
    assert not newest.exists()  # set aside as .broken, never silently reused


def test_snapshot_file_without_a_wal_marker_is_not_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A crash after writing the .snap file but before its WAL marker leaves a snapshot
    the WAL cannot continue from; recovery must ignore it."""
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    store.save(_ready(_entries(1, 20), commit=20))
    snap = store.storage.create_snapshot(20, ConfState(frozenset({1})), b"orphan")
    store.snapshotter.save(snap)  # the file only
    store.close()
    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert again.storage.snapshot().metadata.index == 0
    assert _log_of(again)[-1] == (20, 1, b"v20")


class _DiskNode:
    """A one-member cluster whose Raft log lives on disk, driven like a member."""

    def __init__(self, data_dir: str, seed: int) -> None:
        self.data_dir = data_dir
        self.store = open_raft_log(
            data_dir,
            MEMBER,
            CLUSTER,
            segment_size=4096,
            retention=Retention(snapshot_count=25, catch_up_entries=3),
        )
        if self.store.is_new:
            self.store.bootstrap([1])
        snap = self.store.storage.snapshot()
        self.applied: list[bytes] = list(snap.data.split(b",")) if snap.data else []
        self.conf = snap.metadata.conf_state
        self.snapshots = 0
        cfg = Config(id=1, rng=random.Random(seed), applied=snap.metadata.index)
        self.node = RaftNode(cfg, self.store.storage)

    def drive(self) -> None:
        while self.node.has_ready():
            rd = self.node.ready()
            self.store.save(rd)
            for e in rd.committed_entries:
                if e.type == EntryType.CONF_CHANGE:
                    self.conf = self.node.apply_conf_change(ConfChange.decode(e.data))
                elif e.data:
                    self.applied.append(e.data)
            self.node.advance(rd)
            if self.store.snapshot_due(self.node.log.applied):
                self.store.snapshot(self.node.log.applied, self.conf, b",".join(self.applied))
                self.snapshots += 1


def test_a_member_restarted_many_times_keeps_every_acknowledged_write(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Propose, apply (= acknowledge), and 'crash' (drop everything in memory) at random
    moments; each restart recovers from snapshot + WAL and has every acknowledged value."""
    rng = random.Random(4)
    acknowledged: list[bytes] = []
    data_dir = str(tmp_path / "m1")
    counter = snapshots = 0
    for restart in range(12):
        member = _DiskNode(data_dir, seed=restart)
        member.drive()  # apply the configuration before campaigning
        member.node.campaign()
        member.drive()
        assert member.node.state == StateType.LEADER
        assert member.applied == acknowledged
        for _ in range(rng.randint(5, 60)):
            counter += 1
            member.node.propose(b"w%d" % counter)
            member.drive()
        acknowledged = list(member.applied)
        snapshots += member.snapshots
        member.store.close()
    final = _DiskNode(data_dir, seed=99)
    final.drive()
    final.node.campaign()
    final.drive()
    assert final.applied == acknowledged
    assert len(acknowledged) == counter
    assert snapshots >= 5  # recoveries really went through snapshot files


def test_a_snapshot_from_the_leader_replaces_stale_entries_across_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A follower holding uncommitted entries of an old term past the leader's snapshot
    must not get them back on restart: its log would end in an older term than the
    snapshot and it could vote for a candidate missing committed entries."""
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    store.save(_ready(_entries(1, 30, term=2), commit=10, term=2))
    leader_snapshot = Snapshot(SnapshotMetadata(20, 5, ConfState(frozenset({1, 2, 3}))), b"s")
    store.save(Ready(hard_state=HardState(5, 0, 20), snapshot=leader_snapshot, must_sync=True))
    assert store.storage.last_index() == 20
    store.close()

    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert again.storage.snapshot().metadata.index == 20
    assert again.storage.last_index() == 20  # entries 21..30 of term 2 are gone
    assert again.storage.term(20) == 5
    again.save(_ready(_entries(21, 2, term=5), commit=22, term=5))
    again.close()
    third = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert _log_of(third) == [(21, 5, b"v21"), (22, 5, b"v22")]


def test_own_snapshot_keeps_the_log_beyond_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_raft_log(str(tmp_path), MEMBER, CLUSTER, retention=Retention(catch_up_entries=0))
    store.save(_ready(_entries(1, 30), commit=30))
    store.snapshot(20, ConfState(frozenset({1})), b"own")
    store.close()
    again = open_raft_log(str(tmp_path), MEMBER, CLUSTER)
    assert again.storage.snapshot().metadata.index == 20
    assert [e[0] for e in _log_of(again)] == list(range(21, 31))


class _CountingMember:
    """One member whose state machine is a counter in the LMDB backend.

    As in etcd, Raft restarts from the snapshot index and the driver skips
    entries the backend already holds (index <= its consistent index), while
    membership entries are always re-applied to Raft.
    """

    def __init__(self, data_dir: str, seed: int) -> None:
        self.store = open_raft_log(
            data_dir,
            MEMBER,
            CLUSTER,
            segment_size=4096,
            retention=Retention(snapshot_count=40, catch_up_entries=3),
        )
        if self.store.is_new:
            self.store.bootstrap([1])
        self.backend = Backend(self.store.paths.db_path, quota_bytes=1 << 24, batch_limit=7)
        snap = self.store.storage.snapshot()
        self.conf = snap.metadata.conf_state
        cfg = Config(id=1, rng=random.Random(seed), applied=snap.metadata.index)
        self.node = RaftNode(cfg, self.store.storage)
        self.now = 0.0

    def counter(self) -> int:
        return int(self.backend.batch().get("key", b"counter") or b"0")

    def drive(self) -> None:
        while self.node.has_ready():
            rd = self.node.ready()
            self.store.save(rd)
            batch = self.backend.batch()
            applied_before, _ = batch.consistent_index()
            for e in rd.committed_entries:
                if e.type == EntryType.CONF_CHANGE:
                    self.conf = self.node.apply_conf_change(ConfChange.decode(e.data))
                if e.index <= applied_before:
                    continue  # already in the backend: never apply twice
                if e.type == EntryType.NORMAL and e.data:
                    batch.put("key", b"counter", b"%d" % (self.counter() + 1))
                batch.set_consistent_index(e.index, e.term)
            self.node.advance(rd)
            self.now += 0.01
            self.backend.commit_if_due(self.now)
            applied = self.node.log.applied
            if self.store.snapshot_due(applied):
                self.backend.commit()  # the snapshot must not be ahead of the backend
                self.store.snapshot(applied, self.conf)

    def crash(self) -> None:
        """Power off: the uncommitted backend batch is lost; the WAL is what was synced."""
        self.backend.batch().abort()
        self.backend.env.close()
        self.store.close()


def test_restart_replays_only_entries_after_the_backends_consistent_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    data_dir = str(tmp_path / "m1")
    proposed = 0
    for restart in range(15):
        member = _CountingMember(data_dir, seed=restart)
        member.drive()
        member.node.campaign()
        member.drive()
        assert member.node.state == StateType.LEADER
        assert member.counter() == proposed  # nothing lost, nothing applied twice
        for _ in range(rng.randint(1, 30)):
            proposed += 1
            member.node.propose(b"+1")
            member.drive()
        assert member.counter() == proposed
        member.crash()
    assert proposed > 100
