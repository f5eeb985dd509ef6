"""Binary encodings of Raft values for the WAL and snapshot files.

Fixed big-endian headers followed by opaque bytes: cheap to produce on the
write path and strict to parse (every decoder rejects short or trailing input).
"""

from __future__ import annotations

import struct

from cluster.raft import ConfState, Entry, EntryType, HardState, SnapshotMetadata


class CodecError(ValueError):
    """Bytes that do not decode to the expected value."""


_ENTRY = struct.Struct(">QQB")
_HARD_STATE = struct.Struct(">QQQ")
_INDEX_TERM = struct.Struct(">QQ")
_COUNT = struct.Struct(">I")
_ID = struct.Struct(">Q")
_IDS = struct.Struct(">QQ")  # member id, cluster id


def encode_entry(entry: Entry) -> bytes:
    return _ENTRY.pack(entry.term, entry.index, entry.type) + entry.data


def decode_entry(data: bytes) -> Entry:
    if len(data) < _ENTRY.size:
        raise CodecError(f"entry record of {len(data)} bytes is too short")
    term, index, kind = _ENTRY.unpack_from(data)
    try:
        entry_type = EntryType(kind)
    except ValueError as exc:
        raise CodecError(f"unknown entry type {kind}") from exc
    return Entry(term, index, entry_type, bytes(data[_ENTRY.size :]))


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(hs.term, hs.vote, hs.commit)


def decode_hard_state(data: bytes) -> HardState:
    if len(data) != _HARD_STATE.size:
        raise CodecError(f"hard state record of {len(data)} bytes, want {_HARD_STATE.size}")
    return HardState(*_HARD_STATE.unpack(data))


def encode_index_term(index: int, term: int) -> bytes:
    return _INDEX_TERM.pack(index, term)


def decode_index_term(data: bytes) -> tuple[int, int]:
    if len(data) != _INDEX_TERM.size:
        raise CodecError(f"snapshot marker of {len(data)} bytes, want {_INDEX_TERM.size}")
    index, term = _INDEX_TERM.unpack(data)
    return index, term


def _encode_ids(ids: frozenset[int]) -> bytes:
    ordered = sorted(ids)
    return _COUNT.pack(len(ordered)) + b"".join(_ID.pack(i) for i in ordered)


def _decode_ids(data: bytes, at: int) -> tuple[frozenset[int], int]:
    if len(data) < at + _COUNT.size:
        raise CodecError("truncated id list")
    (count,) = _COUNT.unpack_from(data, at)
    at += _COUNT.size
    end = at + count * _ID.size
    if len(data) < end:
        raise CodecError("truncated id list")
    return frozenset(_ID.unpack_from(data, at + i * _ID.size)[0] for i in range(count)), end


def encode_snapshot_metadata(meta: SnapshotMetadata) -> bytes:
    cs = meta.conf_state
    return (
        _INDEX_TERM.pack(meta.index, meta.term) + _encode_ids(cs.voters) + _encode_ids(cs.learners)
    )


def decode_snapshot_metadata(data: bytes) -> tuple[SnapshotMetadata, int]:
    """The metadata and the offset just after it."""
    if len(data) < _INDEX_TERM.size:
        raise CodecError("truncated snapshot metadata")
    index, term = _INDEX_TERM.unpack_from(data)
    voters, at = _decode_ids(data, _INDEX_TERM.size)
    learners, at = _decode_ids(data, at)
    return SnapshotMetadata(index, term, ConfState(voters, learners)), at


def encode_member_ids(member_id: int, cluster_id: int) -> bytes:
    return _IDS.pack(member_id, cluster_id)


def decode_member_ids(data: bytes) -> tuple[int, int]:
    if len(data) != _IDS.size:
        raise CodecError(f"metadata record of {len(data)} bytes, want {_IDS.size}")
    member_id, cluster_id = _IDS.unpack(data)
    return member_id, cluster_id
