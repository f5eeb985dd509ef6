"""The write-ahead log: round trips, rotation, retention, torn writes, corruption,
power loss and a full disk.

Records are parsed here independently of ``cluster.storage.wal`` (13-byte
header: length, ~length, type, crc; then the payload) so the tests can say
exactly which record a damaged byte belongs to.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import struct
import time
import traceback

import pytest

from cluster.raft import Entry, EntryType, HardState
from cluster.storage.codec import decode_entry
from cluster.storage.fs import LOG_ALLOCATE_STEP, OsFileSystem
from cluster.storage.wal import (
    WAL,
    WalContents,
    WALCorruptError,
    WALError,
    WalSnapshot,
    WALWriteError,
)
from tests.unit.storage.faultfs import FullDiskFS, NoSyncFS, PowerCut, PowerLossFS

META = b"member=8e9e05c52164694d cluster=cdf818194e3a8c32"
HEADER = struct.Struct("<IIBI")
ENTRY_RECORD = 2
ENTRY_SIZE = HEADER.size + 17 + 24  # a record of ent(i): term, index, type, 24 bytes of data
STATE_SIZE = HEADER.size + 24
# Real fsyncs cost milliseconds here; tests of logic rather than durability skip
# them. (Durability is tested with PowerLossFS, which decides what survives.)
FAST = NoSyncFS()
SNAPSHOT_RECORD = 5


# -- helpers -------------------------------------------------------------------


def payload(index: int, term: int, size: int = 24) -> bytes:
    seed = f"<{index}.{term}>".encode()
    return (seed * (size // len(seed) + 1))[:size]


def ent(index: int, term: int = 1, size: int = 24) -> Entry:
    return Entry(term, index, EntryType.NORMAL, payload(index, term, size))


def ents(first: int, last: int, term: int = 1, size: int = 24) -> list[Entry]:
    return [ent(i, term, size) for i in range(first, last + 1)]


def reopen(
    directory: str,
    snap: WalSnapshot | None = None,
    fs=FAST,
    segment_size: int = 64 * 1024 * 1024,
) -> tuple[WAL, WalContents]:
    w = WAL.open(directory, snap or WalSnapshot(), fs=fs, segment_size=segment_size)
    return w, w.read_all()


def read_contents(directory: str, snap: WalSnapshot | None = None) -> WalContents:
    w, contents = reopen(directory, snap)
    w.close()
    return contents


def records(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(offset, size, type, payload) of each whole record in a segment's bytes."""
    out = []
    at = 0
    while at + HEADER.size <= len(data):
        length, inverted, kind, _ = HEADER.unpack_from(data, at)
        assert length ^ 0xFFFFFFFF == inverted, f"damaged header at {at}"
        size = HEADER.size + length
        if at + size > len(data):
            break
        out.append((at, size, kind, data[at + HEADER.size : at + size]))
        at += size
    return out


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def segment_paths(directory: str) -> list[str]:
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(".wal")]


def parse_name(name: str) -> tuple[int, int]:
    seq, index = name.removesuffix(".wal").split("-")
    return int(seq, 16), int(index, 16)


@pytest.fixture
def wal_dir(tmp_path) -> str:
    return str(tmp_path / "wal")


def build_segmented(directory: str, entries: int, segment_size: int, seed: int = 7) -> list[Entry]:
    """A WAL of ``entries`` entries in random batches over many small segments."""
    rng = random.Random(seed)
    w = WAL.create(directory, META, fs=FAST, segment_size=segment_size)
    saved: list[Entry] = []
    index = 1
    while index <= entries:
        n = min(rng.randint(1, 9), entries - index + 1)
        batch = [ent(i, 1, rng.randint(0, 60)) for i in range(index, index + n)]
        w.save(HardState(1, 1, index + n - 1), batch)
        saved += batch
        index += n
    w.close()
    return saved


# -- round trips ---------------------------------------------------------------


def test_create_save_reopen_round_trip(wal_dir):
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 0), ents(1, 3))
    w.save(None, ents(4, 4, size=0))
    w.save(HardState(2, 2, 4), [Entry(2, 5, EntryType.CONF_CHANGE, b"\x00\xff" * 100)])
    w.close()
    contents = read_contents(wal_dir)
    assert contents.metadata == META
    assert contents.hard_state == HardState(2, 2, 4)
    assert contents.entries == [
        *ents(1, 3),
        ent(4, 1, 0),
        Entry(2, 5, EntryType.CONF_CHANGE, b"\x00\xff" * 100),
    ]


def test_new_wal_is_empty_and_named_from_zero(wal_dir):
    w = WAL.create(wal_dir, META)
    assert w.segment_names() == ["0000000000000000-0000000000000000.wal"]
    w.close()
    assert os.listdir(wal_dir) == ["0000000000000000-0000000000000000.wal"]
    contents = read_contents(wal_dir)
    assert contents == WalContents(META, HardState(), [])
    with pytest.raises(WALError):
        WAL.create(wal_dir, META)  # a directory that already holds a WAL


def test_read_mode_refuses_to_append_until_read_all(wal_dir):
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 1), ents(1, 2))
    w.close()
    size = os.path.getsize(segment_paths(wal_dir)[0])
    w = WAL.open(wal_dir, WalSnapshot())
    with pytest.raises(WALError):
        w.save(HardState(1, 1, 2), ents(3, 3))
    with pytest.raises(WALError):
        w.save_snapshot(WalSnapshot(1, 1))
    assert os.path.getsize(segment_paths(wal_dir)[0]) == size  # nothing was written
    assert w.read_all().entries == ents(1, 2)
    with pytest.raises(WALError):
        w.read_all()  # already in append mode
    w.save(HardState(1, 1, 3), ents(3, 3))
    w.close()
    assert read_contents(wal_dir).entries == ents(1, 3)


def test_append_after_read_all_survives_reopen(wal_dir):
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 0), ents(1, 5))
    w.close()
    for round_ in range(3):
        w, contents = reopen(wal_dir)
        first = 6 + round_ * 5
        assert contents.entries == ents(1, first - 1)
        w.save(HardState(1, 1, first), ents(first, first + 4))
        w.close()
    assert read_contents(wal_dir).entries == ents(1, 20)


def test_entries_of_a_newer_leader_replace_the_old_tail(wal_dir):
    w = WAL.create(wal_dir, META, fs=FAST)
    w.save(HardState(1, 1, 3), ents(1, 10, term=1))
    # A new leader (term 2) overwrote the uncommitted tail from index 6.
    w.save(HardState(2, 2, 3), ents(6, 8, term=2))
    w.close()
    assert read_contents(wal_dir).entries == ents(1, 5, 1) + ents(6, 8, 2)
    # And again, in a later segment, from an index below the segment's first index.
    w, _ = reopen(wal_dir, segment_size=1)  # every save now starts a new segment
    w.save(HardState(2, 2, 3), ents(9, 12, term=2))
    w.save(HardState(3, 3, 4), ents(5, 6, term=3))
    assert len(w.segment_names()) == 3
    w.close()
    contents = read_contents(wal_dir)
    assert contents.entries == ents(1, 4, 1) + ents(5, 6, 3)
    assert contents.hard_state == HardState(3, 3, 4)


def test_hard_state_is_the_last_saved(wal_dir):
    w = WAL.create(wal_dir, META, fs=FAST, segment_size=600)
    w.save(HardState(1, 1, 0), ents(1, 2))
    w.save(HardState(1, 1, 2), [])
    w.save(None, ents(3, 30))  # crosses into new segments; no hard state in the batch
    w.save(HardState(5, 3, 20), [])
    w.save(None, ents(31, 40))
    names = w.segment_names()
    assert len(names) > 2
    w.close()
    contents = read_contents(wal_dir)
    assert contents.hard_state == HardState(5, 3, 20)
    assert contents.entries == ents(1, 40)
    # Each segment repeats the hard state in its head, so replay from a late
    # segment still knows it.
    w, contents = reopen(wal_dir, segment_size=600)
    w.save_snapshot(WalSnapshot(40, 1))
    w.save(None, ents(41, 60))
    w.release_to(40, keep=1)
    w.close()
    contents = read_contents(wal_dir, WalSnapshot(40, 1))
    assert contents.hard_state == HardState(5, 3, 20)
    assert contents.metadata == META
    assert contents.entries == ents(41, 60)


def test_metadata_is_kept_in_every_segment(wal_dir):
    meta = bytes(range(256))
    w = WAL.create(wal_dir, meta, fs=FAST, segment_size=512)
    for i in range(1, 51, 5):
        w.save(HardState(1, 1, i), ents(i, i + 4))
    w.close()
    paths = segment_paths(wal_dir)
    assert len(paths) > 3
    for path in paths:
        recs = records(read(path))
        assert recs[1][2] == 1 and recs[1][3] == meta  # CRC record, then metadata
    w, contents = reopen(wal_dir, segment_size=512)
    assert contents.metadata == meta
    w.close()


# -- segments --------------------------------------------------------------------


def test_rotation_over_thousands_of_entries(wal_dir):
    saved = build_segmented(wal_dir, 3000, segment_size=4096)
    names = sorted(os.listdir(wal_dir))
    assert names[0] == "0000000000000000-0000000000000000.wal"
    assert len(names) > 20
    parsed = [parse_name(n) for n in names]
    assert [seq for seq, _ in parsed] == list(range(len(names)))  # consecutive
    last_index = 0
    for i, (name, (_, first_index)) in enumerate(zip(names, parsed, strict=True)):
        data = read(os.path.join(wal_dir, name))
        assert len(data) < 4096 + 9 * (HEADER.size + 17 + 60) + 100
        indexes = [decode_entry(p).index for _, _, k, p in records(data) if k == ENTRY_RECORD]
        assert indexes, name
        assert indexes == list(range(last_index + 1, last_index + 1 + len(indexes))), name
        if i > 0:
            assert first_index == indexes[0], name  # a segment is named by its first entry
        last_index = indexes[-1]
    for name in names[:-1]:
        assert os.path.getsize(os.path.join(wal_dir, name)) >= 4096  # cut only when full
    assert read_contents(wal_dir).entries == saved


def test_release_to_keeps_what_replay_needs_and_max_wals(wal_dir):
    seg = 2048
    w = WAL.create(wal_dir, META, fs=FAST, segment_size=seg)
    for i in range(1, 1001, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9))
    snap = WalSnapshot(600, 1)
    w.save_snapshot(snap)
    for i in range(1001, 1201, 10):
        w.save(HardState(1, 1, i + 9), ents(i, i + 9))
    names = w.segment_names()
    firsts = [parse_name(n)[1] for n in names]
    holding = max(i for i, f in enumerate(firsts) if f <= 601)  # the segment with entry 601
    assert holding > 8

    # keep wins when it asks for more than replay needs
    removed = w.release_to(600, keep=len(names))
    assert removed == []
    # --max-wals 5 style retention
    removed = w.release_to(600, keep=len(names) - 3)
    assert removed == names[:3]
    assert w.segment_names() == names[3:]
    # everything before the segment holding entry 601 may go (and the one before
    # it may stay when 601 opens its segment: etcd keeps the last one named <= 600)
    removed = w.release_to(600, keep=1)
    kept = 3 + len(removed)
    assert removed == names[3:kept]
    assert kept == holding or (kept == holding - 1 and firsts[holding] == 601)
    assert sorted(os.listdir(wal_dir)) == names[kept:] == w.segment_names()
    w.save(HardState(1, 1, 1250), ents(1201, 1250))
    w.close()

    contents = read_contents(wal_dir, snap)
    assert contents.entries == ents(601, 1250)
    assert contents.hard_state == HardState(1, 1, 1250)
    assert contents.metadata == META
    with pytest.raises(WALError):
        read_contents(wal_dir, WalSnapshot())  # entries 1..600 are gone


def test_release_to_from_a_later_snapshot_after_reopen(wal_dir):
    seg = 1024
    w = WAL.create(wal_dir, META, fs=FAST, segment_size=seg)
    for i in range(1, 301, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9))
    w.save_snapshot(WalSnapshot(250, 1))
    w.close()
    w, contents = reopen(wal_dir, WalSnapshot(250, 1), segment_size=seg)
    assert contents.entries == ents(251, 300)
    for i in range(301, 401, 10):
        w.save(HardState(2, 2, i), ents(i, i + 9, term=2))
    w.save_snapshot(WalSnapshot(390, 2))
    before = w.segment_names()
    w.release_to(390, keep=2)
    after = w.segment_names()
    assert len(after) == 2 and after == before[-2:]
    w.close()
    contents = read_contents(wal_dir, WalSnapshot(390, 2))
    assert contents.entries == ents(391, 400, term=2)


def test_missing_snapshot_marker_is_an_error(wal_dir):
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 10), ents(1, 10))
    w.save_snapshot(WalSnapshot(5, 1))
    w.close()
    with pytest.raises(WALError, match="snapshot marker"):
        read_contents(wal_dir, WalSnapshot(7, 1))  # no snapshot was recorded at 7
    with pytest.raises(WALCorruptError, match="term"):
        read_contents(wal_dir, WalSnapshot(5, 2))  # recorded at 5 with term 1
    assert read_contents(wal_dir, WalSnapshot(5, 1)).entries == ents(6, 10)
    assert WAL.snapshot_markers(wal_dir) == [WalSnapshot(0, 0), WalSnapshot(5, 1)]
    with pytest.raises(WALError):
        WAL.open(str(os.path.join(wal_dir, "nowhere")), WalSnapshot())


# -- torn writes -----------------------------------------------------------------


def _torn_fixture(directory: str) -> tuple[list[Entry], HardState, str, int, int]:
    """A WAL over 3 segments whose last record is a ~200-byte entry."""
    w = WAL.create(directory, META, fs=FAST, segment_size=600)
    for i in range(1, 21, 5):
        w.save(HardState(1, 1, i), ents(i, i + 4))
    w.save(HardState(2, 2, 20), ents(21, 24, term=2))
    w.save(None, [ent(25, 2, 180)])
    assert len(w.segment_names()) == 3
    w.close()
    path = segment_paths(directory)[-1]
    data = read(path)
    start, size, kind, _ = records(data)[-1]
    assert kind == ENTRY_RECORD and start + size == len(data)
    assert records(data)[-2][0] > 0  # not the segment's head: an earlier batch precedes it
    return ents(1, 20) + ents(21, 24, 2), HardState(2, 2, 20), path, start, size


def test_torn_last_record_at_every_byte_offset(tmp_path):
    pristine = str(tmp_path / "pristine")
    durable, hard_state, path, start, size = _torn_fixture(pristine)
    name = os.path.basename(path)
    work = str(tmp_path / "work")
    for cut in range(start, start + size):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        torn = os.path.join(work, name)
        os.truncate(torn, cut)
        w, contents = reopen(work, segment_size=600)
        assert contents.entries == durable, cut  # every earlier record is back
        assert contents.hard_state == hard_state
        assert contents.metadata == META
        assert os.path.getsize(torn) == start, cut  # the torn tail is cut off
        w.save(HardState(2, 2, 25), [ent(25, 2, 5)])
        w.close()
        contents = read_contents(work)
        assert contents.entries == [*durable, ent(25, 2, 5)], cut
        assert contents.hard_state == HardState(2, 2, 25)


def test_torn_tail_of_zeros_is_cut(tmp_path):
    pristine = str(tmp_path / "pristine")
    durable, _, path, start, size = _torn_fixture(pristine)
    name = os.path.basename(path)
    work = str(tmp_path / "work")
    everything = [*durable, ent(25, 2, 180)]
    for zeros in (1, 12, 13, 100, 512, 4096):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        tail = os.path.join(work, name)
        with open(tail, "ab") as f:
            f.write(bytes(zeros))  # the file grew but the data never landed
        w, contents = reopen(work)
        assert contents.entries == everything, zeros
        assert os.path.getsize(tail) == start + size, zeros
        w.save(None, [ent(26, 2)])
        w.close()
        assert read_contents(work).entries == [*everything, ent(26, 2)]
    # The last record itself never landed: its bytes are zeros to the end of the file.
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    tail = os.path.join(work, name)
    data = read(tail)
    write(tail, data[:start] + bytes(size))
    w, contents = reopen(work)
    assert contents.entries == durable
    assert os.path.getsize(tail) == start
    w.close()


def test_torn_last_record_with_unlanded_last_sector(tmp_path):
    directory = str(tmp_path / "wal")
    w = WAL.create(directory, META)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.save(None, [ent(6, 1, 1500)])  # one write spanning several sectors
    w.close()
    path = segment_paths(directory)[0]
    data = read(path)
    start, size, _, _ = records(data)[-1]
    boundary = (len(data) - 1) // 512 * 512
    assert start + size == len(data) and size > 1024
    assert start < boundary < len(data) and len(data) - boundary < 512
    # Power went out after the file's size was updated but before its last sector was written.
    write(path, data[:boundary] + bytes(len(data) - boundary))
    contents = read_contents(directory)
    assert contents.entries == ents(1, 5)
    assert os.path.getsize(path) == start


# -- corruption ------------------------------------------------------------------


def _record_at(data: bytes, offset: int) -> tuple[int, int]:
    for start, size, _, _ in records(data):
        if start <= offset < start + size:
            return start, size
    raise AssertionError(f"offset {offset} in no record")


def _flip_and_check(
    directory: str, path: str, lo: int, hi: int, rng: random.Random, trials: int
) -> None:
    original = read(path)
    for _ in range(trials):
        pos = rng.randrange(lo, hi)
        bit = 1 << rng.randrange(8)
        damaged = bytearray(original)
        damaged[pos] ^= bit
        write(path, bytes(damaged))
        with pytest.raises(WALCorruptError) as exc:
            read_contents(directory)
        err = exc.value
        start, size = _record_at(original, pos)
        assert err.path == path, (pos, err)
        assert err.offset == start, (pos, err)
        assert err.offset <= pos < err.offset + size
        assert read(path) == bytes(damaged), "a corrupt segment must not be repaired"
    write(path, original)


def test_flipped_bits_in_closed_segments_are_found(wal_dir):
    build_segmented(wal_dir, 400, segment_size=1024)
    paths = segment_paths(wal_dir)
    assert len(paths) > 8
    rng = random.Random(11)
    for path in rng.sample(paths[:-1], 6):
        _flip_and_check(wal_dir, path, 0, os.path.getsize(path), rng, trials=12)
    assert len(read_contents(wal_dir).entries) == 400  # all restored


def test_flipped_bits_in_the_middle_of_the_last_segment_are_found(wal_dir):
    w = WAL.create(wal_dir, META, fs=FAST)
    for i in range(1, 201, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, size=40))
    w.close()
    path = segment_paths(wal_dir)[0]
    recs = records(read(path))
    lo = recs[len(recs) // 4][0]
    hi = recs[3 * len(recs) // 4][0]
    _flip_and_check(wal_dir, path, lo, hi, random.Random(12), trials=60)
    assert read_contents(wal_dir).entries == ents(1, 200, size=40)


def test_reordered_segments_are_found(wal_dir):
    build_segmented(wal_dir, 300, segment_size=1024)
    paths = segment_paths(wal_dir)
    for i, j in ((2, 3), (1, 5), (len(paths) - 2, len(paths) - 1)):
        a, b = read(paths[i]), read(paths[j])
        write(paths[i], b)
        write(paths[j], a)
        with pytest.raises(WALCorruptError) as exc:
            read_contents(wal_dir)
        assert exc.value.path == paths[i]
        assert exc.value.offset == 0  # the chaining CRC record at its head
        write(paths[i], a)
        write(paths[j], b)
    assert len(read_contents(wal_dir).entries) == 300


def test_missing_middle_segment_is_found(wal_dir):
    build_segmented(wal_dir, 300, segment_size=1024)
    paths = segment_paths(wal_dir)
    os.remove(paths[4])
    with pytest.raises(WALCorruptError) as exc:
        read_contents(wal_dir)
    assert exc.value.path == paths[5]


def test_segment_of_another_wal_is_found(tmp_path):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    build_segmented(ours, 300, segment_size=1024, seed=1)
    build_segmented(theirs, 300, segment_size=1024, seed=2)  # same metadata, other history
    our_paths, their_paths = segment_paths(ours), segment_paths(theirs)
    write(our_paths[3], read(their_paths[3]))
    with pytest.raises(WALCorruptError) as exc:
        read_contents(ours)
    assert exc.value.path == our_paths[3]
    assert exc.value.offset == 0
    assert "chain" in exc.value.reason


# -- power loss ------------------------------------------------------------------


class _Model:
    """What the test knows was acknowledged, and what was in flight at the cut."""

    def __init__(self) -> None:
        self.snap = WalSnapshot()
        self.entries: list[Entry] = []  # acknowledged, after snap.index
        self.hard_state = HardState()
        self.term = 1
        self.inflight: list[Entry] = []
        self.inflight_hs: HardState | None = None

    @property
    def last(self) -> int:
        return self.entries[-1].index if self.entries else self.snap.index

    @property
    def commit(self) -> int:
        return max(self.hard_state.commit, self.snap.index)

    def term_at(self, index: int) -> int:
        if index == self.snap.index:
            return self.snap.term
        return self.entries[index - self.snap.index - 1].term

    def check_recovered(self, contents: WalContents, where: str) -> None:
        """Every acknowledged entry is back; at most a prefix of the batch in flight is added."""
        got = contents.entries
        allowed = [self.entries]
        if self.inflight:
            s = self.inflight[0].index
            keep = [e for e in self.entries if e.index < s]
            allowed += [keep + self.inflight[:k] for k in range(1, len(self.inflight) + 1)]
        assert got in allowed, f"{where}: recovered {len(got)} entries, not what was acknowledged"
        hard_states = [self.hard_state]
        if self.inflight_hs is not None and (
            not self.inflight or got == allowed[-1]  # the hard state comes after the entries
        ):
            hard_states.append(self.inflight_hs)
        assert contents.hard_state in hard_states, where
        assert contents.metadata == META, where
        self.entries = list(got)
        self.hard_state = contents.hard_state
        if got:
            self.term = max(self.term, got[-1].term)
        self.inflight, self.inflight_hs = [], None

    def save(self, w: WAL, hs: HardState | None, batch: list[Entry]) -> None:
        self.inflight, self.inflight_hs = batch, hs
        w.save(hs, batch, sync=True)
        # acknowledged
        if batch:
            s = batch[0].index
            self.entries = [e for e in self.entries if e.index < s] + batch
        if hs is not None:
            self.hard_state = hs
        self.inflight, self.inflight_hs = [], None


def _workload_step(w: WAL, m: _Model, rng: random.Random) -> None:
    op = rng.random()
    if op < 0.06 and m.commit > m.snap.index and m.last > m.snap.index + 1:
        # Snapshot strictly below the last index (see test_snapshot_marker_before_a_cut).
        index = rng.randint(m.snap.index + 1, min(m.commit, m.last - 1))
        snap = WalSnapshot(index, m.term_at(index))
        w.save_snapshot(snap)
        m.entries = [e for e in m.entries if e.index > index]
        m.snap = snap
        w.release_to(index, keep=rng.choice((1, 2, 5)))
    elif op < 0.14 and m.last > m.commit:
        # A new leader overwrites the uncommitted tail.
        m.term += 1
        first = rng.randint(m.commit + 1, m.last)
        batch = [
            Entry(m.term, i, EntryType.NORMAL, rng.randbytes(rng.randint(0, 120)))
            for i in range(first, first + rng.randint(1, 8))
        ]
        m.save(w, HardState(m.term, 2, m.commit), batch)
    elif op < 0.22:
        m.save(w, HardState(m.term, 1, rng.randint(m.commit, m.last)), [])
    else:
        n = rng.choice((1, 1, 2, 3, 5, 8, 13, 40))
        first = m.last + 1
        batch = [
            Entry(
                m.term,
                i,
                EntryType.CONF_CHANGE if rng.random() < 0.05 else EntryType.NORMAL,
                rng.randbytes(rng.randint(0, 150)),
            )
            for i in range(first, first + n)
        ]
        commit = rng.randint(m.commit, first + n - 1)
        m.save(w, HardState(m.term, 1, commit) if rng.random() < 0.8 else None, batch)


def _in_rotation(exc: BaseException) -> bool:
    names = {frame.name for frame in traceback.extract_tb(exc.__traceback__)}
    return "_cut" in names


def _power_loss_run(root: str, seed: int, cuts: int) -> tuple[int, int, int]:
    """Returns (cuts, cuts during rotation, cuts during recovery)."""
    seg = 1500
    rng = random.Random(seed)
    os.mkdir(os.path.join(root, "member"))  # the data dir exists, durably
    fs = PowerLossFS(root, rng=random.Random(seed * 7919))
    directory = os.path.join(root, "member", "wal")
    w = WAL.create(directory, META, fs=fs, segment_size=seg)
    m = _Model()
    done = in_rotation = in_recovery = 0
    while done < cuts:
        fs.crash_at(rng.randint(1, 40))
        try:
            while True:
                _workload_step(w, m, rng)
        except PowerCut as exc:
            in_rotation += _in_rotation(exc)
        w.close()
        fs.power_cut()
        done += 1
        while True:  # restart; the power may go again during recovery
            if rng.random() < 0.2:
                fs.crash_at(rng.randint(1, 3))
            try:
                w = WAL.open(directory, m.snap, fs=fs, segment_size=seg)
                contents = w.read_all()
                break
            except PowerCut:
                w.close()
                fs.power_cut()
                in_recovery += 1
        fs.crash_at(10**9)  # disarm a crash that recovery did not reach
        m.check_recovered(contents, f"seed {seed} cut {done}")
        assert not [n for n in os.listdir(directory) if n.endswith(".wal") and "tmp" in n]
    w.close()
    contents = read_contents(directory, m.snap)
    m.check_recovered(contents, f"seed {seed} final")
    return done, in_rotation, in_recovery


def test_power_cuts_lose_nothing_acknowledged(tmp_path):
    total = rotation = recovery = 0
    for seed in range(4):
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        cuts, rot, rec = _power_loss_run(str(root), seed, cuts=50)
        total, rotation, recovery = total + cuts, rotation + rot, recovery + rec
    assert total == 200
    assert rotation >= 10, rotation  # the cut did land inside segment rotation
    assert recovery >= 1, recovery


def test_unsynced_save_before_a_rotation_does_not_break_the_wal(tmp_path):
    root = str(tmp_path)
    fs = PowerLossFS(root)
    directory = os.path.join(root, "wal")
    w = WAL.create(directory, META, fs=fs, segment_size=1024)
    w.save(HardState(1, 1, 0), ents(1, 5))
    commit = 0
    # Commit-only hard states need no fsync (etcd's MustSync is false for them) ...
    while len(w.segment_names()) == 1:
        commit += 1
        w.save(HardState(1, 1, commit), [], sync=False)
    # ... and the next batch is synced in the new segment and acknowledged.
    w.save(HardState(1, 1, commit), ents(6, 10), sync=True)
    fs.power_cut()
    contents = read_contents(directory)
    assert contents.entries == ents(1, 10)
    assert contents.hard_state == HardState(1, 1, commit)


def test_power_cut_during_create_leaves_a_usable_directory(tmp_path):
    for n in range(1, 12):
        root = str(tmp_path / f"cut{n}")
        directory = os.path.join(root, "wal")
        os.makedirs(directory)  # the data dir existed already, durably
        fs = PowerLossFS(root)
        fs.crash_at(n)
        with contextlib.suppress(PowerCut):
            WAL.create(directory, META, fs=fs).close()
        fs.power_cut()
        if any(name.endswith(".wal") for name in os.listdir(directory)):
            contents = read_contents(directory)  # a WAL that is there must open
            assert contents.metadata == META, n
        else:
            WAL.create(directory, META).close()  # or there is none and it can be made


def test_snapshot_marker_before_a_cut(tmp_path):
    def run(directory: str, segment_size: int) -> WAL:
        w = WAL.create(directory, META, fs=FAST, segment_size=segment_size)
        w.save(HardState(1, 1, 3), ents(1, 10))
        w.save_snapshot(WalSnapshot(10, 1))  # installed snapshot at index 10
        w.save(HardState(1, 1, 10), [])  # the commit index the snapshot brings
        return w

    scratch = str(tmp_path / "scratch")
    probe = run(scratch, 1 << 30)
    probe.close()
    # Size the segment so that exactly the hard-state-only save fills it.
    size_after_marker = os.path.getsize(segment_paths(scratch)[0]) - STATE_SIZE
    directory = str(tmp_path / "wal")
    w = run(directory, size_after_marker + 1)
    assert [parse_name(n)[1] for n in w.segment_names()] == [0, 11]
    w.close()
    contents = read_contents(directory, WalSnapshot(10, 1))
    assert contents.entries == []
    assert contents.hard_state == HardState(1, 1, 10)
    w, _ = reopen(directory, WalSnapshot(10, 1))
    w.release_to(10, keep=1)
    w.close()
    assert read_contents(directory, WalSnapshot(10, 1)).hard_state == HardState(1, 1, 10)


# -- disk full -------------------------------------------------------------------


def test_disk_full_takes_the_partial_batch_back(wal_dir):
    fs = FullDiskFS(free=1 << 20)
    w = WAL.create(wal_dir, META, fs=fs)
    w.save(HardState(1, 1, 10), ents(1, 10))
    path = segment_paths(wal_dir)[0]
    size = os.path.getsize(path)
    fs.free = 300  # room for part of the next batch only
    with pytest.raises(WALWriteError):
        w.save(HardState(1, 1, 20), ents(11, 20, size=100))
    assert fs.enospc_count == 1
    assert os.path.getsize(path) == size  # the partial bytes were taken back
    assert fs.free == 300
    assert read_contents(wal_dir).entries == ents(1, 10)  # nothing unacknowledged appears

    # A sync that fails also takes the batch back.
    fs.grow(1 << 20)
    fs.fail_syncs = 1
    with pytest.raises(WALWriteError):
        w.save(HardState(1, 1, 20), ents(11, 20, size=100))
    assert os.path.getsize(path) == size
    contents = read_contents(wal_dir)
    assert contents.entries == ents(1, 10)
    assert contents.hard_state == HardState(1, 1, 10)

    # With space again the same WAL carries on.
    w.save(HardState(1, 1, 20), ents(11, 20, size=100))
    w.save(HardState(1, 1, 25), ents(21, 25))
    w.close()
    contents = read_contents(wal_dir)
    assert contents.entries == ents(1, 10) + ents(11, 20, size=100) + ents(21, 25)
    assert contents.hard_state == HardState(1, 1, 25)


def _one_batch_short_of_a_cut(wal_dir: str) -> tuple[FullDiskFS, WAL, int, int]:
    """A WAL on a FullDiskFS whose segment the next batch (of ``batch_size``) fills."""
    seg = 1024
    fs = FullDiskFS(free=1 << 20)
    w = WAL.create(wal_dir, META, fs=fs, segment_size=seg)
    index = 1
    batch_size = 2 * ENTRY_SIZE + STATE_SIZE
    while os.path.getsize(segment_paths(wal_dir)[-1]) + batch_size < seg:
        w.save(HardState(1, 1, index), [ent(index)])
        index += 1
    return fs, w, index, batch_size


def test_disk_full_during_rotation(wal_dir):
    fs, w, index, batch_size = _one_batch_short_of_a_cut(wal_dir)
    batch = ents(index, index + 1)  # fills the segment: the save ends with a cut
    fs.free = batch_size + 20  # the batch fits, the new segment's head does not
    # The batch is durable, so save succeeds; the failed cut is retried by a later save.
    w.save(HardState(1, 1, index + 1), batch)
    assert len(segment_paths(wal_dir)) == 1  # no half-made segment counts as one
    assert sorted(os.listdir(wal_dir)) == w.segment_names()  # the failed head is cleaned up
    fs.grow(1 << 20)
    w.save(HardState(1, 1, index + 2), [ent(index + 2)])
    assert len(w.segment_names()) == 2
    assert sorted(os.listdir(wal_dir)) == w.segment_names()
    w.save(HardState(1, 1, index + 3), [ent(index + 3)])
    w.close()
    contents = read_contents(wal_dir)
    assert contents.entries == ents(1, index + 3)
    assert contents.hard_state == HardState(1, 1, index + 3)


def test_failed_rotation_does_not_report_a_durable_batch_as_failed(wal_dir):
    fs, w, index, batch_size = _one_batch_short_of_a_cut(wal_dir)
    fs.free = batch_size + 20
    try:
        w.save(HardState(1, 1, index + 1), ents(index, index + 1))
        saved = True
    except WALWriteError:
        saved = False
    w.close()
    replayed = read_contents(wal_dir).entries == ents(1, index + 1)
    assert replayed == saved, "save() raised WALWriteError, yet its batch is replayed"


# -- replay cost -----------------------------------------------------------------


def test_replaying_the_last_segment_is_linear(tmp_path):
    def build(directory: str, segment_size: int) -> None:
        w = WAL.create(directory, META, fs=FAST, segment_size=segment_size)
        for i in range(1, 6001, 100):
            w.save(HardState(1, 1, i), ents(i, i + 99, size=64), sync=False)
        w.close()

    def replay_seconds(directory: str) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            assert len(read_contents(directory).entries) == 6000
            best = min(best, time.perf_counter() - start)
        return best

    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    build(one, 1 << 30)  # all 6000 entries in the last segment
    build(many, 64 << 10)  # the same in closed 64 KB segments
    assert len(os.listdir(one)) == 1 and len(os.listdir(many)) > 5
    # Same records, same bytes to verify: linear replay takes about the same time.
    assert replay_seconds(one) < 4 * replay_seconds(many) + 0.05


def test_os_filesystem_is_the_default(wal_dir):
    w = WAL.create(wal_dir, META)
    assert isinstance(w.fs, OsFileSystem)
    w.close()


# -- space reserved ahead (OsFileSystem.open_log) ------------------------------------


def _written_end(data: bytes) -> int:
    """Where the records of a segment end: the zeros of reserved space follow."""
    at = 0
    while at + HEADER.size <= len(data) and any(data[at : at + HEADER.size]):
        length, _, _, _ = HEADER.unpack_from(data, at)
        at += HEADER.size + length
    return at


def _crash_copy(live: str, crashed: str) -> None:
    """What a crash leaves of a WAL still open in ``live``: its files as they are."""
    shutil.copytree(live, crashed)


def test_the_last_segment_reserves_space_and_a_clean_close_gives_it_back(wal_dir):
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 3), ents(1, 3))
    path = segment_paths(wal_dir)[-1]
    data = read(path)
    end = _written_end(data)
    assert len(data) >= LOG_ALLOCATE_STEP and not any(data[end:])
    w.close()
    assert os.path.getsize(path) == end
    assert read_contents(wal_dir).entries == ents(1, 3)


def test_after_a_crash_the_reserved_tail_is_cut_quietly(tmp_path, caplog):
    live, crashed = str(tmp_path / "live"), str(tmp_path / "crashed")
    w = WAL.create(live, META)
    w.save(HardState(1, 1, 3), ents(1, 3))
    _crash_copy(live, crashed)
    w.close()
    path = segment_paths(crashed)[-1]
    end = _written_end(read(path))
    with caplog.at_level(logging.INFO, logger="cluster.storage.wal"):
        w, contents = reopen(crashed, fs=OsFileSystem())
    assert contents.entries == ents(1, 3)
    assert f"unwritten tail from offset {end} cut" in caplog.text
    assert "torn" not in caplog.text
    w.save(None, [ent(4)])  # appended right after the last record
    w.close()
    assert read_contents(crashed).entries == ents(1, 4)
    assert os.path.getsize(path) == _written_end(read(path))


def test_a_torn_record_before_the_reserved_tail_is_cut(tmp_path):
    live, crashed = str(tmp_path / "live"), str(tmp_path / "crashed")
    w = WAL.create(live, META)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.save(None, [ent(6, 1, 1500)])  # one write over several sectors
    _crash_copy(live, crashed)
    w.close()
    path = segment_paths(crashed)[-1]
    data = read(path)
    end = _written_end(data)
    start = records(data[:end])[-1][0]
    boundary = (end - 1) // 512 * 512
    assert start < boundary < end < len(data)
    # Its last sector never landed: zeros from there to the end of the reserved space.
    write(path, data[:boundary] + bytes(len(data) - boundary))
    assert read_contents(crashed).entries == ents(1, 5)
    assert os.path.getsize(path) == start


def test_a_half_written_header_before_the_reserved_tail_is_cut(tmp_path):
    live, crashed = str(tmp_path / "live"), str(tmp_path / "crashed")
    w = WAL.create(live, META)
    w.save(HardState(1, 1, 2), ents(1, 2))
    end = _written_end(read(segment_paths(live)[-1]))
    # A filler entry so that the next record's header straddles a sector boundary,
    # 6 bytes before it: its length and half of the inverted length land, the rest not.
    filler = (512 - 6 - end - HEADER.size - 17) % 512
    w.save(None, [ent(3, 1, filler)])
    w.save(None, [ent(4)])
    _crash_copy(live, crashed)
    w.close()
    path = segment_paths(crashed)[-1]
    data = read(path)
    start = records(data[: _written_end(data)])[-1][0]
    assert start % 512 == 506
    write(path, data[: start + 6] + bytes(len(data) - start - 6))
    assert read_contents(crashed).entries == [*ents(1, 2), ent(3, 1, filler)]
    assert os.path.getsize(path) == start
    # The same damage with a record after it is no torn write: corruption, by offset.
    damaged = bytearray(read(os.path.join(live, os.path.basename(path))))
    damaged[start + 6 : start + 8] = b"\0\0"
    write(path, bytes(damaged) + bytes(ents(5, 5)[0].data))
    with pytest.raises(WALCorruptError, match=f"offset {start}"):
        read_contents(crashed)


def test_earlier_segments_end_at_their_last_record(tmp_path):
    live, crashed = str(tmp_path / "live"), str(tmp_path / "crashed")
    w = WAL.create(live, META, segment_size=600)
    for i in range(1, 31, 3):
        w.save(HardState(1, 1, i + 2), ents(i, i + 2))
    assert len(w.segment_names()) >= 3
    _crash_copy(live, crashed)
    paths = segment_paths(crashed)
    for path in paths[:-1]:
        data = read(path)
        assert _written_end(data) == len(data), path
    assert len(read(paths[-1])) > _written_end(read(paths[-1]))  # still reserving
    w.close()
    w, contents = reopen(crashed, fs=OsFileSystem(), segment_size=600)
    assert contents.entries == ents(1, 30)
    w.close()


def test_no_room_to_reserve_appends_without_reserving(wal_dir, monkeypatch):
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    w = WAL.create(wal_dir, META)
    w.save(HardState(1, 1, 3), ents(1, 3))
    path = segment_paths(wal_dir)[-1]
    data = read(path)
    assert _written_end(data) == len(data)
    w.close()
    assert read_contents(wal_dir).entries == ents(1, 3)
