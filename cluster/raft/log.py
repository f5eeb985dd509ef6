"""The Raft log: a stable part the driver has persisted, and an unstable tail.

``MemoryStorage`` mirrors what is on disk (the driver appends to it after each
fsync and compacts it after each snapshot); ``Unstable`` holds what the core
has accepted but the driver has not yet persisted; ``RaftLog`` joins the two.
"""

from __future__ import annotations

from .errors import CompactedError, RaftError, SnapshotOutOfDateError, UnavailableError
from .types import (
    EMPTY_HARD_STATE,
    EMPTY_SNAPSHOT,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


def limit_size(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """Keep a prefix of ``entries`` whose data fits in ``max_size`` bytes (at least one)."""
    if max_size is None or len(entries) <= 1:
        return entries
    size = 0
    for i, entry in enumerate(entries):
        size += len(entry.data)
        if size > max_size and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """The persisted log as the core reads it: a snapshot, then entries after it.

    ``_entries[0]`` is a placeholder standing for the snapshot's last entry
    (its index and term), so terms are known one entry before the first kept one.
    """

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._entries: list[Entry] = [Entry(0, 0)]

    # -- reads -------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._entries):
            raise UnavailableError(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``, at most ``max_size`` bytes of data (at least one)."""
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi - 1)
        return limit_size(self._entries[lo - offset : hi - offset], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes (by the driver, after the data is durable) -----------------
    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot`` (a follower installing one)."""
        meta = snapshot.metadata
        if meta.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(meta.index)
        self._snapshot = snapshot
        self._entries = [Entry(meta.term, meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of ``index`` (already applied)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        term = self._entries[index - self._entries[0].index].term
        self._snapshot = Snapshot(SnapshotMetadata(index, term, conf_state), data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Drop entries up to ``compact_index``; it must be covered by a snapshot."""
        offset = self._entries[0].index
        if compact_index <= offset:
            raise CompactedError(compact_index)
        if compact_index > self.last_index():
            raise UnavailableError(compact_index)
        keep = self._entries[compact_index - offset :]
        keep[0] = Entry(keep[0].term, keep[0].index)
        self._entries = keep

    def append(self, entries: list[Entry]) -> None:
        """Append persisted entries, replacing any tail they conflict with."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        at = entries[0].index - self._entries[0].index
        if at > len(self._entries):
            raise RaftError(
                f"missing log entries: last index {self.last_index()}, "
                f"appending from {entries[0].index}"
            )
        del self._entries[at:]
        self._entries.extend(entries)


class Unstable:
    """Entries and a snapshot accepted by the core but not yet persisted."""

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.metadata.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == index:
                return snap.metadata.term
            return None
        at = index - self.offset
        if at < len(self.entries):
            return self.entries[at].term
        if not self.entries and self.snapshot is not None and index == self.snapshot.metadata.index:
            return self.snapshot.metadata.term
        return None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (of ``term``) are durable; forget them here."""
        if index < self.offset:
            return
        at = index - self.offset
        if at >= len(self.entries) or self.entries[at].term != term:
            return  # replaced by a newer leader's entries meanwhile
        del self.entries[: at + 1]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable, and the stable tail from ``after`` on.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: MemoryStorage, max_committed_size_per_ready: int | None) -> None:
        self.storage = storage
        first = storage.first_index()
        self.unstable = Unstable(storage.last_index() + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_committed_size_per_ready = max_committed_size_per_ready

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, entries={len(self.unstable.entries)})"
        )

    # -- indexes and terms -------------------------------------------------
    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        unstable = self.unstable
        if unstable.entries:
            return unstable.offset + len(unstable.entries) - 1
        if unstable.snapshot is not None:
            return unstable.snapshot.metadata.index
        return self.storage.last_index()

    def persisted_index(self) -> int:
        """The last index known to be durable on this node's disk."""
        return 0 if self.unstable.snapshot is not None else self.unstable.offset - 1

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if it is compacted or absent."""
        unstable = self.unstable
        at = index - unstable.offset
        if at >= 0:
            return unstable.entries[at].term if at < len(unstable.entries) else None
        snap = unstable.snapshot
        if snap is not None:
            # Everything before a pending snapshot is gone, but its last entry's term.
            return snap.metadata.term if index == snap.metadata.index else None
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        if term is None:
            raise RaftError(f"unexpected missing term for last index {self.last_index()}")
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a candidate's log (ending at ``last_index`` of ``term``) at least as new as ours?"""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending ---------------------------------------------------------
    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: list[Entry]
    ) -> int | None:
        """Append a leader's entries following (index, log_term); None if that entry is not ours."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftError(
                    f"entry {conflict} conflicts with committed entry (committed {self.committed})"
                )
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise RaftError(f"appending after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or differs from ours, or 0 if all match.

        By the log matching property the entries we already hold form a prefix
        of ``entries``, so a binary search finds the first one we do not.
        """
        if not entries or self.match_term(entries[-1].index, entries[-1].term):
            return 0
        lo, hi = 0, len(entries) - 1  # entries[hi] does not match
        while lo < hi:
            mid = (lo + hi) // 2
            if self.match_term(entries[mid].index, entries[mid].term):
                lo = mid + 1
            else:
                hi = mid
        return entries[lo].index

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last (index, term) at or before ``index`` whose term is at most ``term``.

        A rejecting follower sends this as a hint so the leader skips a whole
        term of mismatching entries at once instead of one entry per round trip.
        """
        while index > 0:
            our = self.term(index)
            if our is None:
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- commit and apply --------------------------------------------------
    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftError(
                    f"commit index {index} is out of range (last index {self.last_index()})"
                )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise RaftError(
                f"applied index {index} outside [{self.applied}, committed {self.committed}]"
            )
        self.applied = index

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.unstable.snapshot is None

    def next_committed_entries(self) -> list[Entry]:
        if self.committed <= self.applied or self.unstable.snapshot is not None:
            return []
        lo = max(self.applied + 1, self.first_index())
        if self.committed + 1 > lo:
            return self.slice(lo, self.committed + 1, self.max_committed_size_per_ready)
        return []

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    # -- reading entries ---------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def entries(self, lo: int, max_size: int | None) -> list[Entry]:
        """Entries from ``lo`` to the end, at most ``max_size`` bytes (at least one)."""
        unstable = self.unstable
        if lo >= unstable.offset and unstable.snapshot is None:
            # The common case for a leader: only its newest, unpersisted tail.
            return limit_size(unstable.entries[lo - unstable.offset :], max_size)
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)`` from storage and the unstable tail."""
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi - 1)
        offset = self.unstable.offset
        if hi <= offset:
            return self.storage.entries(lo, hi, max_size)
        if lo >= offset:
            return limit_size(self.unstable.slice(lo, hi), max_size)
        stable = self.storage.entries(lo, offset, max_size)
        if len(stable) < offset - lo:
            return stable  # size limit reached in the stable part
        return limit_size(stable + self.unstable.slice(offset, hi), max_size)

    def snapshot(self) -> Snapshot:
        return self.unstable.snapshot or self.storage.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)
