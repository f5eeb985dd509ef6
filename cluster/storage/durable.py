"""A member's Raft log on disk: the WAL and snapshot files behind one MemoryStorage.

Layout (as etcd)::

    <data-dir>/member/wal/%016x-%016x.wal
    <data-dir>/member/snap/%016x-%016x.snap
    <data-dir>/member/snap/db            (the LMDB backend, opened by the member)

``open_raft_log`` recovers (newest snapshot the WAL knows of, then the WAL
from it) or creates a new log; ``RaftLogStore.save`` persists a Ready batch
before the driver may send or apply anything that depends on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster import faults
from cluster.raft import NONE, ConfState, HardState, MemoryStorage, Ready, Snapshot, bootstrap

from .backend import DataDirMismatchError
from .codec import decode_member_ids, encode_member_ids
from .fs import FileSystem, OsFileSystem
from .snap import Snapshotter
from .wal import SEGMENT_SIZE, WAL, WalSnapshot, list_segments

CATCH_UP_ENTRIES = 5000
"""Entries kept in memory behind a snapshot, so a slightly slow follower gets
entries rather than a whole snapshot (etcd's SnapshotCatchUpEntries)."""


@dataclass(frozen=True)
class MemberPaths:
    data_dir: str

    @property
    def member_dir(self) -> str:
        return os.path.join(self.data_dir, "member")

    @property
    def wal_dir(self) -> str:
        return os.path.join(self.member_dir, "wal")

    @property
    def snap_dir(self) -> str:
        return os.path.join(self.member_dir, "snap")

    @property
    def db_path(self) -> str:
        return os.path.join(self.snap_dir, "db")


@dataclass(frozen=True)
class Retention:
    """When to snapshot and what to keep (etcd's --snapshot-count, --max-wals, --max-snapshots)."""

    snapshot_count: int = 10_000
    max_wals: int = 5
    max_snapshots: int = 5
    catch_up_entries: int = CATCH_UP_ENTRIES


class RaftLogStore:
    """Persists Ready batches and snapshots; ``storage`` is what the Raft core reads."""

    def __init__(
        self,
        paths: MemberPaths,
        wal: WAL,
        snapshotter: Snapshotter,
        storage: MemoryStorage,
        member_id: int,
        cluster_id: int,
        retention: Retention,
        is_new: bool,
    ) -> None:
        self.paths = paths
        self.wal = wal
        self.snapshotter = snapshotter
        self.storage = storage
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.retention = retention
        self.is_new = is_new

    def bootstrap(self, voters: list[int]) -> None:
        """Write a new cluster's initial members as its first, committed entries."""
        bootstrap(self.storage, voters)
        s = self.storage
        self.wal.save(s.hard_state, s.entries(s.first_index(), s.last_index() + 1))

    def save(self, rd: Ready) -> None:
        """Make ``rd``'s snapshot, entries and hard state durable, then visible to Raft."""
        self.persist(rd)
        self.publish(rd)

    def persist(self, rd: Ready) -> None:
        """Write ``rd``'s snapshot, entries and hard state to disk (and fsync them).

        Touches only the WAL and snapshot files, never ``storage``: a member runs it on
        its WAL thread while the event loop goes on (one call at a time, and no other
        WAL or snapshot call meanwhile), then calls ``publish`` on the loop.
        """
        if rd.snapshot is not None:
            self._save_snapshot_files(rd.snapshot, replaces_log=True)
        if faults.CRASH:
            faults.crash_point("wal-before-save")
        self.wal.save(rd.hard_state, rd.entries, sync=rd.must_sync or rd.snapshot is not None)
        if faults.CRASH:
            faults.crash_point("wal-after-save")

    def publish(self, rd: Ready) -> None:
        """Show the Raft core's storage what ``persist`` made durable."""
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)

    def snapshot_due(self, applied: int) -> bool:
        """Have ``snapshot_count`` entries been applied since the last snapshot?"""
        last = self.storage.snapshot().metadata.index
        return applied - last >= self.retention.snapshot_count

    def snapshot(self, index: int, conf_state: ConfState, data: bytes = b"") -> Snapshot:
        """Snapshot at applied ``index``; then release what it makes redundant.

        The state machine must already be durable up to ``index`` (the member
        commits its backend first).
        """
        snap = self.storage.create_snapshot(index, conf_state, data)
        self._save_snapshot_files(snap)
        compact_to = index - self.retention.catch_up_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        self.wal.release_to(index, keep=self.retention.max_wals)
        self.snapshotter.purge(keep=self.retention.max_snapshots)
        return snap

    def _save_snapshot_files(self, snap: Snapshot, replaces_log: bool = False) -> None:
        # The file first, then the WAL marker: recovery only trusts snapshots
        # the WAL knows of, so a crash between the two is harmless.
        self.snapshotter.save(snap)
        if faults.CRASH:
            faults.crash_point("snapshot-save")
        meta = snap.metadata
        self.wal.save_snapshot(WalSnapshot(meta.index, meta.term, replaces_log))

    def close(self) -> None:
        self.wal.close()


def has_raft_log(data_dir: str, fs: FileSystem | None = None) -> bool:
    """Whether ``data_dir`` holds a member's WAL (a restart, not a first start)."""
    fs = fs or OsFileSystem()
    wal_dir = MemberPaths(data_dir).wal_dir
    return fs.exists(wal_dir) and bool(list_segments(fs, wal_dir))


def open_raft_log(
    data_dir: str,
    member_id: int | None,
    cluster_id: int | None,
    *,
    fs: FileSystem | None = None,
    segment_size: int = SEGMENT_SIZE,
    retention: Retention | None = None,
) -> RaftLogStore:
    """Recover the member's Raft log from ``data_dir``, or start a new one.

    With ids given, a data dir written by another member or cluster is refused;
    a new data dir needs both.
    """
    fs = fs or faults.file_system()  # ETCD_PY_POWER_LOSS: the power-loss one
    retention = retention or Retention()
    paths = MemberPaths(data_dir)
    fs.makedirs(paths.snap_dir)
    snapshotter = Snapshotter(paths.snap_dir, fs)
    storage = MemoryStorage()
    if not has_raft_log(data_dir, fs):
        if member_id is None or cluster_id is None:
            raise ValueError("a new data dir needs a member id and a cluster id")
        wal = WAL.create(paths.wal_dir, encode_member_ids(member_id, cluster_id), fs, segment_size)
        return RaftLogStore(
            paths, wal, snapshotter, storage, member_id, cluster_id, retention, is_new=True
        )

    markers = WAL.snapshot_markers(paths.wal_dir, fs)
    snap = snapshotter.load(acceptable={(m.index, m.term) for m in markers})
    start = WalSnapshot(snap.metadata.index, snap.metadata.term) if snap else WalSnapshot()
    wal = WAL.open(paths.wal_dir, start, fs, segment_size)
    contents = wal.read_all()
    stored_member, stored_cluster = decode_member_ids(contents.metadata)
    if (member_id is not None and member_id != stored_member) or (
        cluster_id is not None and cluster_id != stored_cluster
    ):
        wal.close()
        raise DataDirMismatchError(
            f"data dir {data_dir} belongs to member {stored_member:x} of cluster "
            f"{stored_cluster:x}, not member {member_id or 0:x} of cluster {cluster_id or 0:x}: "
            "remove this member and add a fresh one instead of reusing its data dir"
        )
    hard_state = contents.hard_state
    if snap is not None:
        storage.apply_snapshot(snap)
        meta = snap.metadata
        if hard_state.commit < meta.index:
            # The batch that installed a leader's snapshot was torn after its
            # marker: the snapshot itself proves everything up to it committed.
            if meta.term > hard_state.term:
                hard_state = HardState(meta.term, NONE, meta.index)
            else:
                hard_state = HardState(hard_state.term, hard_state.vote, meta.index)
    storage.set_hard_state(hard_state)
    storage.append(contents.entries)
    return RaftLogStore(
        paths, wal, snapshotter, storage, stored_member, stored_cluster, retention, is_new=False
    )
