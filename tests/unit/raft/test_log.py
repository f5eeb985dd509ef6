"""MemoryStorage, Unstable and RaftLog: appends, conflicts, slicing, terms and snapshots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.raft import (
    CompactedError,
    ConfState,
    Entry,
    MemoryStorage,
    RaftError,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from cluster.raft.errors import SnapshotOutOfDateError
from cluster.raft.log import RaftLog, limit_size


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def ents(first: int, terms: list[int], size: int = 0) -> list[Entry]:
    """Entries ``first, first+1, ...`` with the given terms and ``size`` bytes of data each."""
    return [Entry(t, first + i, data=b"x" * size) for i, t in enumerate(terms)]


def storage_with(terms: list[int], size: int = 0) -> MemoryStorage:
    st_ = MemoryStorage()
    st_.append(ents(1, terms, size))
    return st_


def log_with(stable: list[int], unstable: list[int] | None = None, size: int = 0) -> RaftLog:
    """A RaftLog whose storage holds ``stable`` (indexes 1..) followed by unstable ``unstable``."""
    log = RaftLog(storage_with(stable, size), None)
    if unstable:
        log.append(ents(len(stable) + 1, unstable, size))
    return log


def log_terms(log: RaftLog) -> list[int | None]:
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


def storage_terms(st_: MemoryStorage) -> list[int]:
    return [st_.term(i) for i in range(st_.first_index(), st_.last_index() + 1)]


def idx(entries: list[Entry]) -> list[int]:
    return [e.index for e in entries]


def snapshot(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMetadata(index, term, ConfState(frozenset({1, 2, 3}))), b"state")


# ---------------------------------------------------------------------------
# MemoryStorage
# ---------------------------------------------------------------------------
def test_storage_append_replaces_conflicting_tail() -> None:
    """Appending entries that overlap with a different term drops the old tail from there on."""
    st_ = storage_with([1, 1, 2, 2, 2])
    st_.append(ents(4, [3, 3, 3]))
    assert (st_.first_index(), st_.last_index()) == (1, 6)
    assert storage_terms(st_) == [1, 1, 2, 3, 3, 3]

    # A shorter overlapping append truncates too (the tail after it is gone).
    st_.append(ents(2, [4]))
    assert st_.last_index() == 2
    assert storage_terms(st_) == [1, 4]

    # Pure extension.
    st_.append(ents(3, [4, 4]))
    assert storage_terms(st_) == [1, 4, 4, 4]


def test_storage_append_skips_compacted_prefix_and_rejects_gaps() -> None:
    """Entries below the first index are ignored; an append leaving a hole is an error."""
    st_ = storage_with([1, 1, 1, 2, 2])
    st_.create_snapshot(3, ConfState(frozenset({1})), b"")
    st_.compact(3)
    assert (st_.first_index(), st_.last_index()) == (4, 5)

    st_.append(ents(1, [1, 1]))  # wholly compacted: a no-op
    assert storage_terms(st_) == [2, 2]
    st_.append(ents(2, [1, 1, 3, 3]))  # 2..3 skipped, 4..5 replaced
    assert storage_terms(st_) == [3, 3]
    assert st_.term(3) == 1  # the compaction placeholder keeps the snapshot's term

    with pytest.raises(RaftError):
        st_.append(ents(7, [3]))  # index 6 would be missing
    assert st_.last_index() == 5


def test_storage_term_entries_and_compaction_errors() -> None:
    """term()/entries() raise Compacted/Unavailable outside the kept range; compact keeps term."""
    st_ = storage_with([1, 2, 3, 4, 5])
    st_.create_snapshot(3, ConfState(frozenset({1})), b"s")
    st_.compact(3)
    assert st_.first_index() == 4
    assert st_.term(3) == 3
    with pytest.raises(CompactedError):
        st_.term(2)
    with pytest.raises(UnavailableError):
        st_.term(6)
    with pytest.raises(CompactedError):
        st_.entries(3, 5)
    with pytest.raises(UnavailableError):
        st_.entries(4, 7)
    assert [e.index for e in st_.entries(4, 6)] == [4, 5]
    with pytest.raises(CompactedError):
        st_.compact(3)
    with pytest.raises(UnavailableError):
        st_.compact(6)
    with pytest.raises(SnapshotOutOfDateError):
        st_.create_snapshot(2, ConfState(), b"")
    with pytest.raises(SnapshotOutOfDateError):
        st_.apply_snapshot(snapshot(3, 3))


def test_storage_apply_snapshot_replaces_everything() -> None:
    """A newer snapshot discards all entries; terms are then known only at its index."""
    st_ = storage_with([1, 1, 1])
    snap = snapshot(10, 4)
    st_.apply_snapshot(snap)
    assert (st_.first_index(), st_.last_index()) == (11, 10)
    assert st_.term(10) == 4
    assert st_.snapshot() == snap
    assert st_.initial_state()[1] == snap.metadata.conf_state
    with pytest.raises(CompactedError):
        st_.term(3)


# ---------------------------------------------------------------------------
# limit_size
# ---------------------------------------------------------------------------
def test_limit_size_keeps_a_prefix_and_at_least_one_entry() -> None:
    """limit_size returns the longest prefix within the budget, but never nothing."""
    es = ents(1, [1, 1, 1, 1], size=10)
    assert limit_size(es, None) == es
    assert limit_size(es, 40) == es
    assert [e.index for e in limit_size(es, 39)] == [1, 2, 3]
    assert [e.index for e in limit_size(es, 20)] == [1, 2]
    assert [e.index for e in limit_size(es, 0)] == [1]
    assert limit_size([], 0) == []


# ---------------------------------------------------------------------------
# RaftLog: unstable append / truncation
# ---------------------------------------------------------------------------
def test_log_append_truncates_within_unstable() -> None:
    """A conflicting append inside the unstable tail replaces it from the conflict on."""
    log = log_with([1, 1, 1], [2, 2, 2])
    assert (log.unstable.offset, log.last_index()) == (4, 6)
    log.append(ents(5, [3]))
    assert log.last_index() == 5
    assert log_terms(log) == [1, 1, 1, 2, 3]
    assert [e.index for e in log.unstable_entries()] == [4, 5]
    assert log.storage.last_index() == 3  # storage untouched


def test_log_append_truncates_into_stable_part() -> None:
    """A conflict below the unstable offset moves it back; the stale stored tail is hidden."""
    log = log_with([1, 1, 1, 1], [1])
    assert log.persisted_index() == 4
    log.append(ents(3, [2, 2]))
    assert log.unstable.offset == 3
    assert log.last_index() == 4
    assert log_terms(log) == [1, 1, 2, 2]
    assert log.persisted_index() == 2  # entries 3..4 in storage are no longer ours
    assert log.term(5) is None
    assert [(e.index, e.term) for e in log.slice(1, 5)] == [(1, 1), (2, 1), (3, 2), (4, 2)]

    # The driver persists the new entries: storage truncates its own stale tail.
    unstable = log.unstable_entries()
    log.storage.append(unstable)
    log.stable_to(unstable[-1].index, unstable[-1].term)
    assert storage_terms(log.storage) == [1, 1, 2, 2]
    assert log.unstable.offset == 5
    assert log.persisted_index() == 4


def test_log_append_below_committed_is_refused() -> None:
    """append() never rewrites committed entries."""
    log = log_with([1, 1, 1])
    log.commit_to(3)
    with pytest.raises(RaftError):
        log.append(ents(3, [2]))
    assert log_terms(log) == [1, 1, 1]
    assert log.append([]) == 3


def test_stable_to_ignores_entries_replaced_meanwhile() -> None:
    """stable_to for a term that was overwritten while being persisted leaves the tail unstable."""
    log = log_with([1], [1, 1])
    log.append(ents(3, [2]))  # entry 3 replaced before the driver reported it durable
    log.stable_to(3, 1)
    assert log.unstable.offset == 2
    assert [(e.index, e.term) for e in log.unstable_entries()] == [(2, 1), (3, 2)]
    log.stable_to(2, 1)
    assert log.unstable.offset == 3
    assert log.persisted_index() == 2


# ---------------------------------------------------------------------------
# find_conflict / find_conflict_by_term
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("new", "want"),
    [
        ([], 0),
        ([(1, 1), (2, 2), (3, 3)], 0),
        ([(2, 2), (3, 3)], 0),
        ([(3, 3)], 0),
        ([(1, 1), (2, 2), (3, 3), (4, 4), (5, 4)], 4),
        ([(2, 2), (3, 3), (4, 4), (5, 4)], 4),
        ([(4, 4), (5, 4)], 4),
        ([(1, 4), (2, 4)], 1),
        ([(2, 1), (3, 4), (4, 4)], 2),
        ([(3, 1), (4, 2), (5, 4), (6, 4)], 3),
    ],
)
def test_find_conflict_table(new: list[tuple[int, int]], want: int) -> None:
    """find_conflict returns the first new or differing index, 0 when everything matches."""
    log = log_with([1], [2, 3])  # spans storage and unstable
    entries = [Entry(t, i) for i, t in new]
    assert log.find_conflict(entries) == want


def _linear_conflict(log: RaftLog, entries: list[Entry]) -> int:
    for e in entries:
        if log.term(e.index) != e.term:
            return e.index
    return 0


@st.composite
def _log_and_window(draw: st.DrawFn) -> tuple[list[int], int, list[Entry]]:
    """Our log's terms, its stable length, and a window of a leader log obeying log matching."""
    ours = draw(st.lists(st.integers(1, 4), max_size=12).map(sorted))
    stable = draw(st.integers(0, len(ours)))
    diverge = draw(st.integers(0, len(ours)))  # leader agrees on ours[:diverge]
    tail_len = draw(st.integers(0, 8))
    tail: list[int] = []
    term = ours[diverge - 1] if diverge else 1
    for k in range(tail_len):
        index0 = diverge + k
        term = draw(st.integers(term, term + 2))
        if index0 < len(ours) and ours[index0] == term:
            term += 1  # the same index and term would mean the same entry
        tail.append(term)
    leader = ours[:diverge] + tail
    if not leader:
        return ours, stable, []
    lo = draw(st.integers(0, len(leader) - 1))
    hi = draw(st.integers(lo, len(leader)))
    window = [Entry(t, i + 1) for i, t in enumerate(leader)][lo:hi]
    return ours, stable, window


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_log_and_window())
def test_find_conflict_matches_linear_scan(case: tuple[list[int], int, list[Entry]]) -> None:
    """For any input satisfying log matching, the binary search equals the linear scan."""
    ours, stable, window = case
    log = log_with(ours[:stable], ours[stable:])
    assert log.find_conflict(window) == _linear_conflict(log, window)


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        (6, 4, (6, 4)),
        (6, 5, (6, 4)),
        (6, 3, (4, 2)),
        (6, 2, (4, 2)),
        (4, 1, (2, 1)),
        (3, 1, (2, 1)),
        (6, 0, (0, 0)),
        (1, 1, (1, 1)),
        (0, 3, (0, 0)),
        (9, 4, (9, 0)),  # beyond our log: unknown term
    ],
)
def test_find_conflict_by_term(index: int, term: int, want: tuple[int, int]) -> None:
    """The hint is the last entry at or before ``index`` whose term is at most ``term``."""
    log = log_with([1, 1, 2], [2, 4, 4])
    assert log.find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_stops_at_compacted_index() -> None:
    """Below the compaction point the term is unknown, so that index is returned with term 0."""
    st_ = storage_with([1, 1, 2, 2, 4, 4])
    st_.create_snapshot(3, ConfState(frozenset({1})), b"")
    st_.compact(3)
    log = RaftLog(st_, None)
    assert log.find_conflict_by_term(6, 2) == (4, 2)
    assert log.find_conflict_by_term(6, 1) == (2, 0)


# ---------------------------------------------------------------------------
# maybe_append
# ---------------------------------------------------------------------------
def test_maybe_append_rejects_mismatched_prev() -> None:
    """A previous (index, term) we do not hold is refused and nothing changes."""
    log = log_with([1, 2, 3])
    assert log.maybe_append(3, 2, 3, ents(4, [4])) is None
    assert log.maybe_append(4, 3, 3, ents(5, [4])) is None  # prev beyond our log
    assert log_terms(log) == [1, 2, 3]
    assert log.committed == 0


def test_maybe_append_appends_truncates_and_caps_commit() -> None:
    """Matching prev: conflicts are replaced, commit is capped by the last new index."""
    log = log_with([1, 2, 3])
    assert log.maybe_append(3, 3, 10, ents(4, [4, 4])) == 5
    assert log.committed == 5
    log2 = log_with([1, 2, 3, 3, 3])
    assert log2.maybe_append(2, 2, 3, ents(3, [4])) == 3
    assert log_terms(log2) == [1, 2, 4]
    assert log2.committed == 3
    # An empty append (a probe) only moves commit up to the prev index.
    log3 = log_with([1, 1, 1, 1])
    assert log3.maybe_append(2, 1, 4, []) == 2
    assert log3.committed == 2


def test_maybe_append_of_a_stale_prefix_keeps_the_tail() -> None:
    """An old, shorter (matching) append must not truncate entries we already have."""
    log = log_with([1, 1, 1, 2, 2])
    assert log.maybe_append(1, 1, 0, ents(2, [1])) == 2
    assert log_terms(log) == [1, 1, 1, 2, 2]
    assert log.unstable_entries() == []


def test_maybe_append_never_truncates_committed() -> None:
    """A conflict at or below the commit index is a RaftError and the log is untouched."""
    log = log_with([1, 1, 1])
    log.commit_to(3)
    with pytest.raises(RaftError):
        log.maybe_append(1, 1, 3, ents(2, [2, 2]))
    assert log_terms(log) == [1, 1, 1]
    assert log.committed == 3


def test_commit_to_never_decreases_and_is_bounded() -> None:
    """commit_to ignores lower indexes and refuses one beyond the last entry."""
    log = log_with([1, 1, 1])
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(RaftError):
        log.commit_to(4)
    assert not log.maybe_commit(3, 2)  # wrong term
    assert log.maybe_commit(3, 1)
    assert log.committed == 3


# ---------------------------------------------------------------------------
# slice
# ---------------------------------------------------------------------------
def test_slice_across_stable_unstable_boundary() -> None:
    """slice joins storage and unstable entries, honouring a byte limit (at least one entry)."""
    log = log_with([1, 1, 1, 1], [2, 2, 2], size=10)  # stable 1..4, unstable 5..7
    assert idx(log.slice(2, 8)) == [2, 3, 4, 5, 6, 7]
    assert idx(log.slice(3, 7, 35)) == [3, 4, 5]  # limit crosses into the unstable part
    assert idx(log.slice(2, 8, 25)) == [2, 3]  # limit reached inside storage
    assert idx(log.slice(3, 7, 20)) == [3, 4]  # exactly the stable part
    assert idx(log.slice(4, 7, 5)) == [4]  # at least one (stable)
    assert idx(log.slice(5, 7, 5)) == [5]  # at least one (unstable)
    assert idx(log.slice(6, 8)) == [6, 7]
    assert idx(log.slice(3, 3)) == []
    assert idx(log.entries(6, None)) == [6, 7]
    assert log.entries(8, None) == []
    with pytest.raises(UnavailableError):
        log.slice(5, 9)


def test_slice_below_first_index_is_compacted() -> None:
    """A slice starting before the first kept entry raises CompactedError."""
    st_ = storage_with([1, 1, 1, 1])
    st_.create_snapshot(2, ConfState(frozenset({1})), b"")
    st_.compact(2)
    log = RaftLog(st_, None)
    log.append(ents(5, [2]))
    with pytest.raises(CompactedError):
        log.slice(2, 5)
    assert [e.index for e in log.slice(3, 6)] == [3, 4, 5]


def test_next_committed_entries_respects_size_limit() -> None:
    """Committed entries handed to the driver stop at max_committed_size_per_ready (>= 1)."""
    st_ = storage_with([1, 1, 1, 1], size=10)
    log = RaftLog(st_, 15)
    log.commit_to(4)
    assert [e.index for e in log.next_committed_entries()] == [1]
    log.applied_to(1)
    assert [e.index for e in log.next_committed_entries()] == [2]
    with pytest.raises(RaftError):
        log.applied_to(5)


# ---------------------------------------------------------------------------
# term / persisted_index / restore
# ---------------------------------------------------------------------------
def test_term_outside_the_log_is_none() -> None:
    """term() is None for compacted or future indexes and known one before the first entry."""
    st_ = storage_with([1, 2, 3, 4, 5])
    st_.create_snapshot(3, ConfState(frozenset({1})), b"")
    st_.compact(3)
    log = RaftLog(st_, None)
    log.append(ents(6, [6]))
    assert log.first_index() == 4
    assert log.term(2) is None
    assert log.term(3) == 3
    assert log.term(5) == 5
    assert log.term(6) == 6
    assert log.term(7) is None
    assert RaftLog(MemoryStorage(), None).term(0) == 0
    assert RaftLog(MemoryStorage(), None).term(1) is None


def test_persisted_index_follows_stable_to() -> None:
    """persisted_index is the storage's last index until unstable entries are reported durable."""
    log = log_with([1, 1])
    assert log.persisted_index() == 2
    log.append(ents(3, [2, 2]))
    assert log.persisted_index() == 2
    log.storage.append(log.unstable_entries()[:1])
    log.stable_to(3, 2)
    assert log.persisted_index() == 3
    log.stable_to(4, 1)  # wrong term: not ours
    assert log.persisted_index() == 3
    log.storage.append(log.unstable_entries())
    log.stable_to(4, 2)
    assert log.persisted_index() == 4


def test_restore_from_snapshot() -> None:
    """restore() replaces the log with the snapshot (dropping a conflicting tail) and commits it."""
    log = log_with([1, 1, 1], [2] * 9)  # 1..12, uncommitted tail of term 2
    log.commit_to(3)
    log.applied_to(3)
    snap = snapshot(10, 5)
    log.restore(snap)
    assert log.committed == 10
    assert (log.first_index(), log.last_index()) == (11, 10)
    assert log.term(10) == 5
    assert log.last_term() == 5
    assert log.term(11) is None and log.term(12) is None and log.term(5) is None
    assert log.snapshot() == snap
    assert log.persisted_index() < 10  # not durable until the driver stores it
    assert not log.has_next_committed_entries()
    assert log.next_committed_entries() == []
    assert log.match_term(10, 5)
    assert log.is_up_to_date(10, 5) and not log.is_up_to_date(9, 5)

    # The driver installs it and reports it stable.
    log.storage.apply_snapshot(snap)
    log.stable_snap_to(10)
    log.applied_to(10)
    assert log.unstable.snapshot is None
    assert (log.first_index(), log.last_index()) == (11, 10)
    assert log.persisted_index() == 10
    assert log.maybe_append(10, 5, 11, ents(11, [5])) == 11
    assert log.committed == 11
    assert [e.index for e in log.next_committed_entries()] == [11]
