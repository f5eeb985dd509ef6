"""Raft snapshot files, as etcd's snap package.

One file per snapshot, ``%016x-%016x.snap`` (term, index), written atomically
(temp file, fsync, rename, fsync of the directory) so a crash leaves the old
set of files or the new one, never a half-written ``.snap``.

File format (big-endian)::

    magic "etsnap" (6) | version u16 | body length u64 | CRC32C(body) u32 | body
    body = encode_snapshot_metadata(meta) + snapshot.data

Every header field is checked on its own, and the CRC covers the body, so any
single flipped bit, a truncation or trailing garbage is detected. A file that
does not verify is never silently used: ``load`` renames it ``<name>.broken``
and falls back to the next older snapshot (the WAL still holds the entries
after it, unless they were released, which the WAL then reports).
"""

from __future__ import annotations

import logging
import os
import re
import struct

import crc32c

from cluster.raft import Snapshot

from .codec import CodecError, decode_snapshot_metadata, encode_snapshot_metadata
from .fs import FileSystem, OsFileSystem, write_file_atomically

log = logging.getLogger(__name__)

MAGIC = b"etsnap"
VERSION = 1
SUFFIX = ".snap"
BROKEN_SUFFIX = ".broken"
TMP_SUFFIX = ".tmp"

_HEADER = struct.Struct(">6sHQI")  # magic, version, body length, crc32c(body)
_VERSION_AT = 6
_LENGTH_AT = 8
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class SnapshotError(Exception):
    """A snapshot problem that is not corruption of one file (those are handled by ``load``)."""


class EmptySnapshotError(SnapshotError, ValueError):
    """``save`` was given a snapshot with index 0, which carries no state."""


class SnapshotCorruptError(SnapshotError):
    """A snapshot file failed verification; ``offset`` is where the problem was found."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"snap: {path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}{SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    """(term, index) of a ``.snap`` file name, or None for any other name."""
    m = _NAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def encode_snapshot_file(snapshot: Snapshot) -> bytes:
    body = encode_snapshot_metadata(snapshot.metadata) + snapshot.data
    return _HEADER.pack(MAGIC, VERSION, len(body), crc32c.crc32c(body)) + body


def decode_snapshot_file(path: str, data: bytes) -> Snapshot:
    """Verify and decode a snapshot file's bytes; ``path`` only names it in errors."""
    body = _verified_body(path, data)
    try:
        meta, at = decode_snapshot_metadata(body)
    except CodecError as exc:
        raise SnapshotCorruptError(path, _HEADER.size, f"bad metadata: {exc}") from exc
    if meta.index == 0:
        raise SnapshotCorruptError(path, _HEADER.size, "bad metadata: snapshot index 0")
    named = parse_snapshot_name(os.path.basename(path))
    if named is not None and named != (meta.term, meta.index):
        raise SnapshotCorruptError(
            path,
            _HEADER.size,
            f"metadata says term {meta.term} index {meta.index}, "
            f"file name says term {named[0]} index {named[1]}",
        )
    return Snapshot(meta, bytes(body[at:]))


def _verified_body(path: str, data: bytes) -> bytes:
    """The body after checking magic, version, length and CRC, in file order."""
    if len(data) < _HEADER.size:
        reason = "empty file" if not data else f"truncated header ({len(data)} bytes)"
        raise SnapshotCorruptError(path, len(data), reason)
    magic, version, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotCorruptError(path, 0, f"bad magic {magic!r}")
    if version != VERSION:
        raise SnapshotCorruptError(path, _VERSION_AT, f"unsupported version {version}")
    have = len(data) - _HEADER.size
    if have < length:
        raise SnapshotCorruptError(
            path, len(data), f"truncated: body of {have} bytes, want {length}"
        )
    if have > length:
        raise SnapshotCorruptError(
            path, _HEADER.size + length, f"{have - length} trailing bytes after the body"
        )
    body = data[_HEADER.size :]
    actual = crc32c.crc32c(body)
    if actual != crc:
        raise SnapshotCorruptError(
            path, _HEADER.size, f"crc mismatch (stored {crc:08x}, computed {actual:08x})"
        )
    return body


class Snapshotter:
    """Saves, loads and purges the ``.snap`` files of one directory."""

    def __init__(self, directory: str, fs: FileSystem | None = None) -> None:
        self.directory = directory
        self.fs: FileSystem = fs or OsFileSystem()

    def save(self, snapshot: Snapshot) -> str:
        """Write ``snapshot`` durably; returns its path."""
        if snapshot.is_empty():
            raise EmptySnapshotError("snap: refusing to save an empty snapshot (index 0)")
        meta = snapshot.metadata
        path = os.path.join(self.directory, snapshot_name(meta.term, meta.index))
        write_file_atomically(self.fs, path, encode_snapshot_file(snapshot))
        return path

    def read(self, path: str) -> Snapshot:
        """Read and verify one file; ``SnapshotCorruptError`` if it does not verify.

        I/O errors (missing file, permissions) propagate as ``OSError``.
        """
        return decode_snapshot_file(path, self.fs.read_bytes(path))

    def names(self) -> list[str]:
        """The ``.snap`` file names, newest (highest index, then term) first."""
        found = []
        for name in self.fs.listdir(self.directory):
            parsed = parse_snapshot_name(name)
            if parsed is not None:
                term, index = parsed
                found.append((index, term, name))
        found.sort(reverse=True)
        return [name for _, _, name in found]

    def load(self, acceptable: set[tuple[int, int]] | None = None) -> Snapshot | None:
        """The newest snapshot that verifies, or None if there is none.

        With ``acceptable`` (the (index, term) pairs the WAL has markers for),
        only those qualify: a file written just before a crash, whose WAL
        marker never made it, is skipped (etcd's LoadNewestAvailable). Files
        that fail verification are renamed ``.broken`` and the next is tried.
        """
        for name in self.names():
            term, index = parse_snapshot_name(name) or (0, 0)
            if acceptable is not None and (index, term) not in acceptable:
                continue
            path = os.path.join(self.directory, name)
            try:
                return self.read(path)
            except SnapshotCorruptError as exc:
                self._set_aside(path, exc)
        return None

    def _set_aside(self, path: str, exc: SnapshotCorruptError) -> None:
        broken = path + BROKEN_SUFFIX
        log.error("%s; renamed to %s", exc, os.path.basename(broken))
        self.fs.rename(path, broken)
        self.fs.sync_dir(self.directory)

    def purge(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` snapshots and leftover temp files.

        ``keep`` <= 0 keeps every snapshot, as etcd's ``--max-snapshots 0``.
        Returns the removed paths.
        """
        names = self.names()
        doomed = names[keep:] if keep > 0 else []
        doomed += [
            n
            for n in self.fs.listdir(self.directory)
            if n.endswith(TMP_SUFFIX) and parse_snapshot_name(n[: -len(TMP_SUFFIX)])
        ]
        removed = []
        for name in doomed:
            path = os.path.join(self.directory, name)
            self.fs.remove(path)
            removed.append(path)
        if removed:
            self.fs.sync_dir(self.directory)
        return removed
