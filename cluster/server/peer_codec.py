"""Binary encoding of Raft messages between members.

Peers are always this implementation, so the encoding is ours (clients keep
etcd's gRPC API): one fixed header per message, then its context, entries and
snapshot metadata. Decoders reject truncated or trailing input.
"""

from __future__ import annotations

import struct

from cluster.raft import Entry, Message, MessageType, Snapshot
from cluster.storage.codec import (
    CodecError,
    decode_entry,
    decode_snapshot_metadata,
    encode_entry,
    encode_snapshot_metadata,
)

# type, to, from, term, log_term, index, commit, reject, reject_hint,
# entry count, context length, has snapshot
_HEADER = struct.Struct(">BQQQQQQBQIIB")
_LEN = struct.Struct(">I")
_BATCH = struct.Struct(">I")


def encode_message(m: Message, with_snapshot_data: bool = True) -> bytes:
    """One message; a snapshot's data is left out when it travels in chunks."""
    snap = m.snapshot
    parts = [
        _HEADER.pack(
            m.type,
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            m.reject,
            m.reject_hint,
            len(m.entries),
            len(m.context),
            snap is not None,
        ),
        m.context,
    ]
    for entry in m.entries:
        encoded = encode_entry(entry)
        parts.append(_LEN.pack(len(encoded)))
        parts.append(encoded)
    if snap is not None:
        meta = encode_snapshot_metadata(snap.metadata)
        data = snap.data if with_snapshot_data else b""
        parts += [_LEN.pack(len(meta)), meta, _LEN.pack(len(data)), data]
    return b"".join(parts)


def decode_message(data: bytes | memoryview, at: int = 0) -> tuple[Message, int]:
    """The message starting at ``at`` and the offset after it."""
    view = memoryview(data)
    if len(view) - at < _HEADER.size:
        raise CodecError("truncated message header")
    (
        kind,
        to,
        frm,
        term,
        log_term,
        index,
        commit,
        reject,
        reject_hint,
        n_entries,
        n_context,
        has_snapshot,
    ) = _HEADER.unpack_from(view, at)
    at += _HEADER.size
    try:
        msg_type = MessageType(kind)
    except ValueError as exc:
        raise CodecError(f"unknown message type {kind}") from exc
    context, at = _take(view, at, n_context)
    entries: list[Entry] = []
    for _ in range(n_entries):
        raw, at = _take_sized(view, at)
        entries.append(decode_entry(raw))
    snapshot = None
    if has_snapshot:
        raw_meta, at = _take_sized(view, at)
        meta, used = decode_snapshot_metadata(raw_meta)
        if used != len(raw_meta):
            raise CodecError("trailing bytes after snapshot metadata")
        snap_data, at = _take_sized(view, at)
        snapshot = Snapshot(meta, snap_data)
    message = Message(
        msg_type,
        to=to,
        frm=frm,
        term=term,
        log_term=log_term,
        index=index,
        entries=entries,
        commit=commit,
        snapshot=snapshot,
        reject=bool(reject),
        reject_hint=reject_hint,
        context=context,
    )
    return message, at


def encode_batch(messages: list[Message]) -> bytes:
    return _BATCH.pack(len(messages)) + b"".join(encode_message(m) for m in messages)


def decode_batch(data: bytes | memoryview) -> list[Message]:
    view = memoryview(data)
    if len(view) < _BATCH.size:
        raise CodecError("truncated message batch")
    (count,) = _BATCH.unpack_from(view)
    at = _BATCH.size
    out = []
    for _ in range(count):
        message, at = decode_message(view, at)
        out.append(message)
    if at != len(view):
        raise CodecError(f"{len(view) - at} trailing bytes after a message batch")
    return out


def _take(view: memoryview, at: int, n: int) -> tuple[bytes, int]:
    if len(view) - at < n:
        raise CodecError("truncated message")
    return bytes(view[at : at + n]), at + n


def _take_sized(view: memoryview, at: int) -> tuple[bytes, int]:
    if len(view) - at < _LEN.size:
        raise CodecError("truncated message")
    (n,) = _LEN.unpack_from(view, at)
    return _take(view, at + _LEN.size, n)
