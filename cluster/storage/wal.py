"""The write-ahead log: segmented, CRC-chained, group-committed.

Segments are named ``%016x-%016x.wal`` (sequence, first raft index in it).
Each record is a 13-byte header — payload length, the length inverted (so a
damaged length is told apart from a torn write), record type, CRC32C — and
the payload. The CRC covers the header's length and type and the payload and
is chained: it starts from the previous record's CRC, and every segment opens
with a CRC record carrying the previous segment's last CRC. A record copied
from elsewhere, a reordered or missing segment, or a flipped bit is detected.

As in etcd, a WAL opened on existing files is in read mode until ``read_all``
has read and verified every record after the snapshot it starts from; only then
may it append. ``save`` writes a whole Ready batch with one write and one
fdatasync, into disk space the segment reserves ahead (``FileSystem.open_log``),
so the last segment may end in zeros after a crash. A torn last record (a crash
mid-write) and such zeros at the end of the last segment are truncated away and
logged; anything else that does not verify raises ``WALCorruptError`` naming the
file and byte offset. Every earlier segment was cut to its last record.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import crc32c

from cluster.raft import Entry, HardState

from .codec import (
    CodecError,
    decode_entry,
    decode_hard_state,
    decode_index_term,
    encode_entry,
    encode_hard_state,
    encode_index_term,
)
from .fs import AppendFile, FileSystem, OsFileSystem

log = logging.getLogger(__name__)

SEGMENT_SIZE = 64 * 1024 * 1024
SECTOR = 512

_HEADER = struct.Struct("<IIBI")  # length, ~length, type, crc
_CHECKED = struct.Struct("<IIB")  # the header fields the CRC covers
_U32 = struct.Struct("<I")
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class RecordType(enum.IntEnum):
    METADATA = 1
    ENTRY = 2
    STATE = 3
    CRC = 4
    SNAPSHOT = 5


class WALError(Exception):
    pass


class WALCorruptError(WALError):
    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"wal: {path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WALWriteError(WALError):
    """A write or sync failed; nothing of the batch counts as saved."""


@dataclass(frozen=True, slots=True)
class WalSnapshot:
    index: int = 0
    term: int = 0
    # True for a snapshot a leader sent: it replaced the whole log, so entries
    # after its index written before it are stale. A member's own snapshot
    # leaves the log beyond its index as it was.
    replaces_log: bool = False


@dataclass
class WalContents:
    metadata: bytes
    hard_state: HardState
    entries: list[Entry] = field(default_factory=list)


def segment_name(seq: int, index: int) -> str:
    return f"{seq:016x}-{index:016x}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    m = _SEGMENT_NAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def list_segments(fs: FileSystem, directory: str) -> list[tuple[int, int, str]]:
    """(seq, first index, name) of every segment, by sequence."""
    out = []
    for name in fs.listdir(directory):
        parsed = parse_segment_name(name)
        if parsed is not None:
            out.append((*parsed, name))
    out.sort()
    return out


def encode_record(kind: RecordType, payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """The bytes of one record and the CRC the next record chains from."""
    length = len(payload)
    checked = _CHECKED.pack(length, length ^ 0xFFFFFFFF, kind)
    crc = crc32c.crc32c(payload, crc32c.crc32c(checked, prev_crc))
    return checked + _U32.pack(crc) + payload, crc


class WAL:
    """One member's write-ahead log. Not thread-safe: one writer at a time."""

    def __init__(self, fs: FileSystem, directory: str, segment_size: int) -> None:
        self.fs = fs
        self.dir = directory
        self.segment_size = segment_size
        self.metadata = b""
        self._reading = True
        self._start = WalSnapshot()
        self._segments: list[tuple[int, int, str]] = []  # all segments on disk
        self._file: AppendFile | None = None
        self._crc = 0
        self.last_index = 0
        self.hard_state = HardState()
        self.on_fsync: Callable[[float], None] | None = None  # seconds per fsync (metrics)

    # -- creating and opening ---------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str,
        metadata: bytes,
        fs: FileSystem | None = None,
        segment_size: int = SEGMENT_SIZE,
    ) -> WAL:
        """Start a new WAL in append mode (``directory`` must hold no segments)."""
        fs = fs or OsFileSystem()
        if fs.exists(directory) and (list_segments(fs, directory) or fs.listdir(directory)):
            raise WALError(f"wal: {directory} already holds a WAL or other files")
        # Built aside and renamed into place, so a crash leaves no half-made WAL.
        tmp_dir = directory.rstrip("/") + ".tmp"
        if fs.exists(tmp_dir):
            for name in fs.listdir(tmp_dir):
                fs.remove(os.path.join(tmp_dir, name))
        fs.makedirs(tmp_dir)
        wal = cls(fs, tmp_dir, segment_size)
        wal.metadata = metadata
        wal._reading = False
        wal._open_segment(0, 1, first=True)
        wal.save_snapshot(WalSnapshot())
        wal.close()
        fs.rename(tmp_dir, directory)
        fs.sync_dir(os.path.dirname(os.path.abspath(directory)))
        wal.dir = directory
        wal._file = fs.open_log(os.path.join(directory, wal._segments[-1][2]))
        return wal

    @classmethod
    def open(
        cls,
        directory: str,
        snapshot: WalSnapshot,
        fs: FileSystem | None = None,
        segment_size: int = SEGMENT_SIZE,
    ) -> WAL:
        """Open an existing WAL in read mode, to be replayed from ``snapshot``."""
        fs = fs or OsFileSystem()
        segments = list_segments(fs, directory) if fs.exists(directory) else []
        if not segments:
            raise WALError(f"wal: no WAL segments in {directory}")
        for i, (seq, _, name) in enumerate(segments):
            if seq != segments[0][0] + i:
                raise WALCorruptError(
                    os.path.join(directory, name), 0, f"sequence {seq:x} out of order or missing"
                )
        wal = cls(fs, directory, segment_size)
        wal._segments = segments
        wal._start = snapshot
        return wal

    # -- reading ----------------------------------------------------------
    def read_all(self) -> WalContents:
        """Read and verify every record from the start snapshot on; then switch to append mode."""
        if not self._reading:
            raise WALError("wal: read_all on a WAL in append mode")
        start = self._start
        first = self._first_needed(start.index)
        reader = _Replay(start)
        for i in range(first, len(self._segments)):
            name = self._segments[i][2]
            path = os.path.join(self.dir, name)
            last = i == len(self._segments) - 1
            data = self.fs.read_bytes(path)
            end = reader.read_segment(path, data, last)
            if last and end is not None:
                self._truncate_torn(path, end, unwritten=_zeros_from(data, end))
        if not reader.found_snapshot:
            raise WALError(
                f"wal: snapshot marker (index {start.index}, term {start.term}) not found "
                f"in {self.dir}"
            )
        if reader.metadata is None or reader.crc is None:
            raise WALError(f"wal: no metadata record in {self.dir}")
        self.metadata = reader.metadata
        self.hard_state = reader.hard_state
        self.last_index = reader.entries[-1].index if reader.entries else start.index
        self._crc = reader.crc
        self._reading = False
        self._file = self.fs.open_log(os.path.join(self.dir, self._segments[-1][2]))
        return WalContents(reader.metadata, reader.hard_state, reader.entries)

    def _truncate_torn(self, path: str, offset: int, unwritten: bool) -> None:
        if unwritten:  # nothing but zeros: space reserved ahead and never written
            log.info("wal: %s: unwritten tail from offset %d cut", path, offset)
        else:
            log.warning(
                "wal: %s: torn record at offset %d truncated (crash mid-write)", path, offset
            )
        f = self.fs.open_append(path)
        try:
            f.truncate(offset)
            f.sync()
        finally:
            f.close()

    @staticmethod
    def snapshot_markers(directory: str, fs: FileSystem | None = None) -> list[WalSnapshot]:
        """Every snapshot marker in the WAL, oldest first (etcd's ValidSnapshotEntries).

        A snapshot file qualifies for recovery only if the WAL knows of it, so a
        snapshot saved just before a crash that lost its marker is not used.
        """
        fs = fs or OsFileSystem()
        segments = list_segments(fs, directory)
        reader = _Replay(WalSnapshot(), replay_entries=False)
        for i, (_, _, name) in enumerate(segments):
            path = os.path.join(directory, name)
            reader.read_segment(path, fs.read_bytes(path), last=i == len(segments) - 1)
        return reader.markers

    # -- appending --------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append a Ready batch with one write and (if ``sync``) one fdatasync."""
        if self._reading or self._file is None:
            raise WALError("wal: cannot append in read mode (call read_all first)")
        if not entries and hard_state is None:
            return
        crc = self._crc
        parts: list[bytes] = []
        for entry in entries:
            record, crc = encode_record(RecordType.ENTRY, encode_entry(entry), crc)
            parts.append(record)
        if hard_state is not None:
            record, crc = encode_record(RecordType.STATE, encode_hard_state(hard_state), crc)
            parts.append(record)
        self._write(b"".join(parts), sync)
        self._crc = crc
        if entries:
            self.last_index = entries[-1].index
        if hard_state is not None:
            self.hard_state = hard_state
        if self._file.size() >= self.segment_size:
            try:
                self._cut()
            except WALWriteError:
                # The batch is durable; keep appending to this segment and retry later.
                log.warning("wal: could not start a new segment", exc_info=True)

    def save_snapshot(self, snapshot: WalSnapshot) -> None:
        """Record that a snapshot at (index, term) exists; replay can start from it."""
        if self._reading or self._file is None:
            raise WALError("wal: cannot append in read mode (call read_all first)")
        payload = encode_index_term(snapshot.index, snapshot.term) + (
            b"\x01" if snapshot.replaces_log else b"\x00"
        )
        record, crc = encode_record(RecordType.SNAPSHOT, payload, self._crc)
        self._write(record, sync=True)
        self._crc = crc
        self.last_index = max(self.last_index, snapshot.index)

    def sync(self) -> None:
        if self._file is not None:
            try:
                self._file.sync()
            except OSError as exc:
                raise WALWriteError(f"wal: sync failed: {exc}") from exc

    def _write(self, data: bytes, sync: bool) -> None:
        f = self._file
        assert f is not None
        before = f.size()
        try:
            f.write(data)
            if sync:
                began = time.perf_counter()
                f.sync()
                if self.on_fsync is not None:
                    self.on_fsync(time.perf_counter() - began)
        except OSError as exc:
            # Take back whatever part of the batch reached the file, so the next
            # batch does not follow half a record.
            try:
                f.truncate(before)
            except OSError:
                log.exception("wal: could not truncate after a failed write")
                self._file = None  # unusable: the member must restart and replay
            raise WALWriteError(f"wal: write failed: {exc}") from exc

    def _cut(self) -> None:
        """Close the full segment and start the next one.

        The old segment is synced first: the new one chains from its last CRC,
        so it must not outlive unsynced records at a power cut. Its reserved tail is cut
        first (in the same sync): only the last segment may end in zeros.
        """
        if self._file is not None:
            self._file.truncate(self._file.size())
        self.sync()
        seq = self._segments[-1][0] + 1
        self._open_segment(seq, self.last_index + 1, first=False)

    def _open_segment(self, seq: int, index: int, first: bool) -> None:
        name = segment_name(seq, 0 if first else index)
        path = os.path.join(self.dir, name)
        tmp = path + ".tmp"
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        f = self.fs.open_append(tmp)
        crc = self._crc
        head = bytearray(_CHECKED.pack(4, 4 ^ 0xFFFFFFFF, RecordType.CRC))
        head += _U32.pack(crc) + _U32.pack(crc)
        record, crc = encode_record(RecordType.METADATA, self.metadata, crc)
        head += record
        if not self.hard_state.is_empty():
            record, crc = encode_record(RecordType.STATE, encode_hard_state(self.hard_state), crc)
            head += record
        try:
            f.write(bytes(head))
            f.sync()
        except OSError as exc:
            f.close()
            with contextlib.suppress(OSError):
                self.fs.remove(tmp)
            raise WALWriteError(f"wal: cannot start segment {name}: {exc}") from exc
        f.close()
        self.fs.rename(tmp, path)
        self.fs.sync_dir(self.dir)
        if self._file is not None:
            self._file.close()
        self._file = self.fs.open_log(path)
        self._crc = crc
        self._segments.append((seq, 0 if first else index, name))

    # -- releasing old segments -------------------------------------------
    def release_to(self, index: int, keep: int) -> list[str]:
        """Delete the oldest segments not needed to replay from a snapshot at ``index``.

        At least ``keep`` segments stay (etcd's ``--max-wals``); returns the removed names.
        """
        needed = self._first_needed(index)
        removable = min(needed, max(0, len(self._segments) - keep))
        removed = []
        for _, _, name in self._segments[:removable]:
            self.fs.remove(os.path.join(self.dir, name))
            removed.append(name)
        if removed:
            self.fs.sync_dir(self.dir)
            del self._segments[:removable]
        return removed

    def _first_needed(self, snapshot_index: int) -> int:
        """Position of the segment replay from ``snapshot_index`` starts at.

        The last segment whose first index is at most the snapshot index: its
        marker may follow it in a later segment, but never precedes it.
        """
        first = 0
        for i, (_, index, _) in enumerate(self._segments):
            if index <= snapshot_index:
                first = i
        return first

    def segment_names(self) -> list[str]:
        return [name for _, _, name in self._segments]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Replay:
    """Reads segments in order, verifying records and rebuilding state."""

    def __init__(self, start: WalSnapshot, replay_entries: bool = True) -> None:
        self.start = start
        self.replay_entries = replay_entries
        self.markers: list[WalSnapshot] = []
        self.crc: int | None = None
        self.metadata: bytes | None = None
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.found_snapshot = False

    def read_segment(self, path: str, data: bytes, last: bool) -> int | None:
        """Replay one segment; returns the offset of a torn tail to cut, if any."""
        offset, size = 0, len(data)
        while offset < size:
            torn = last and self._is_torn_tail(data, offset)
            if torn:
                return offset
            if size - offset < _HEADER.size:
                raise WALCorruptError(path, offset, "truncated record header")
            length, inverted, kind, crc = _HEADER.unpack_from(data, offset)
            if length ^ 0xFFFFFFFF != inverted:
                header_end = offset + _HEADER.size
                if (
                    last
                    and _has_zeroed_sector(data, offset, header_end)
                    and _zeros_from(data, header_end)
                ):
                    return offset  # a header half written, and nothing after it
                raise WALCorruptError(path, offset, "damaged record length")
            end = offset + _HEADER.size + length
            if end > size:
                if last:
                    return offset  # the record was being written when the power went
                raise WALCorruptError(path, offset, "record runs past the end of the segment")
            payload = data[offset + _HEADER.size : end]
            try:
                self._check_crc(path, offset, data, kind, length, crc, payload, last, end)
            except _TornRecord:
                return offset
            try:
                self._apply(path, offset, kind, payload)
            except CodecError as exc:
                raise WALCorruptError(path, offset, str(exc)) from exc
            offset = end
        return None

    @staticmethod
    def _is_torn_tail(data: bytes, offset: int) -> bool:
        """Nothing but zeros from ``offset`` on, or too little left for a header."""
        if len(data) - offset < _HEADER.size:
            return True
        if any(data[offset : offset + _HEADER.size]):
            return False  # a real header starts here: no need to scan the rest
        return _zeros_from(data, offset)

    def _check_crc(
        self,
        path: str,
        offset: int,
        data: bytes,
        kind: int,
        length: int,
        crc: int,
        payload: bytes,
        last: bool,
        end: int,
    ) -> None:
        if kind == RecordType.CRC:
            if length != 4:
                raise WALCorruptError(path, offset, "crc record of wrong size")
            (carried,) = _U32.unpack(payload)
            if carried != crc:
                raise WALCorruptError(path, offset, "crc record disagrees with itself")
            if self.crc is not None and carried != self.crc:
                raise WALCorruptError(
                    path,
                    offset,
                    f"crc chain broken: segment starts from {carried:#010x}, "
                    f"the previous one ended at {self.crc:#010x} (reordered or foreign segment)",
                )
            self.crc = carried
            return
        if self.crc is None:
            raise WALCorruptError(path, offset, "segment does not start with a crc record")
        checked = _CHECKED.pack(length, length ^ 0xFFFFFFFF, kind)
        computed = crc32c.crc32c(payload, crc32c.crc32c(checked, self.crc))
        if computed != crc:
            if last and _zeros_from(data, end) and _has_zeroed_sector(data, offset, end):
                raise _TornRecord(offset)
            raise WALCorruptError(
                path, offset, f"crc mismatch (stored {crc:#010x}, computed {computed:#010x})"
            )
        self.crc = computed

    def _apply(self, path: str, offset: int, kind: int, payload: bytes) -> None:
        start = self.start
        if kind == RecordType.ENTRY:
            if not self.replay_entries:
                return
            entry = decode_entry(payload)
            if entry.index <= start.index:
                return
            expected = start.index + len(self.entries) + 1
            if entry.index > expected:
                raise WALCorruptError(
                    path, offset, f"gap in entries: index {entry.index}, expected {expected}"
                )
            if entry.index < expected:
                # A newer leader overwrote the tail from this index on.
                del self.entries[entry.index - start.index - 1 :]
            self.entries.append(entry)
        elif kind == RecordType.STATE:
            self.hard_state = decode_hard_state(payload)
        elif kind == RecordType.METADATA:
            if self.metadata is not None and self.metadata != payload:
                raise WALCorruptError(path, offset, "metadata differs from earlier segments")
            self.metadata = payload
        elif kind == RecordType.CRC:
            pass  # verified by _check_crc
        elif kind == RecordType.SNAPSHOT:
            if len(payload) != 17 or payload[16] not in (0, 1):
                raise WALCorruptError(path, offset, "malformed snapshot marker")
            index, term = decode_index_term(payload[:16])
            replaces_log = payload[16] == 1
            self.markers.append(WalSnapshot(index, term, replaces_log))
            if index == start.index:
                if term != start.term:
                    raise WALCorruptError(
                        path,
                        offset,
                        f"snapshot marker at index {index} has term {term}, want {start.term}",
                    )
                self.found_snapshot = True
                if replaces_log:
                    self.entries.clear()  # written before the snapshot replaced them
            elif replaces_log and index > start.index and self.replay_entries:
                raise WALError(
                    f"wal: {path}: offset {offset}: a snapshot installed at index {index} "
                    f"replaced the log after index {start.index}; recovery needs that "
                    f"snapshot's file"
                )
        else:
            raise WALCorruptError(path, offset, f"unknown record type {kind}")


class _TornRecord(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _zeros_from(data: bytes, start: int) -> bool:
    """Nothing but zeros from ``start`` to the end (space reserved ahead reads so)."""
    return data.count(0, start) == len(data) - start


def _has_zeroed_sector(data: bytes, start: int, end: int) -> bool:
    """Is some sector-aligned piece of the record all zeros (a write that never landed)?

    The record is cut at sector boundaries; the first and last pieces may be
    partial, as a torn write can stop anywhere (etcd's isTornEntry does the same).
    """
    at = start
    while at < end:
        boundary = min(end, (at // SECTOR + 1) * SECTOR)
        if not any(data[at:boundary]):
            return True
        at = boundary
    return False
