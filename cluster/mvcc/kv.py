"""The stored value of a revision: ``KeyValue`` and its one encoding.

``encode_kv``/``decode_kv`` are the only place that knows how a ``KeyValue``
is laid out in the ``key`` bucket: exactly the protobuf wire format of etcd's
``mvccpb.KeyValue`` (fields 1..6 in order, zero values omitted, as gogoproto
and the Python protobuf runtime both marshal it), so the bytes on disk are
etcd's and ``hash_kv`` agrees with etcd for the same history. Encoding is by
hand (a few bytes, and no message object to build); decoding uses
``cluster.proto.mvccpb.kv_pb2``'s C parser, which a restart relies on to
decode every stored revision quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cluster.proto.mvccpb import kv_pb2


@dataclass(frozen=True, slots=True)
class KeyValue:
    """etcd's mvccpb.KeyValue. A deletion is stored as ``KeyValue(key)`` (all else zero)."""

    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


class KVCodecError(ValueError):
    """Bytes in the ``key`` bucket that are not an encoded KeyValue."""


_U64 = 1 << 64
# protobuf's C (upb) parser: about ten times faster than parsing in Python, which
# matters when a restart decodes every stored revision to rebuild the index.
_parse = kv_pb2.KeyValue.FromString


def _varint(n: int, out: bytearray) -> None:
    if n < 0:  # int64: two's complement in ten bytes, as protobuf does
        n += _U64
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _field_bytes(tag: int, data: bytes, out: bytearray) -> None:
    out.append(tag)
    _varint(len(data), out)
    out += data


def _field_int(tag: int, n: int, out: bytearray) -> None:
    out.append(tag)
    _varint(n, out)


def encode_kv(kv: KeyValue) -> bytes:
    """The protobuf encoding of ``kv`` as mvccpb.KeyValue."""
    out = bytearray()
    if kv.key:
        _field_bytes(0x0A, kv.key, out)  # 1: key, length-delimited
    if kv.create_revision:
        _field_int(0x10, kv.create_revision, out)  # 2: create_revision
    if kv.mod_revision:
        _field_int(0x18, kv.mod_revision, out)  # 3: mod_revision
    if kv.version:
        _field_int(0x20, kv.version, out)  # 4: version
    if kv.value:
        _field_bytes(0x2A, kv.value, out)  # 5: value
    if kv.lease:
        _field_int(0x30, kv.lease, out)  # 6: lease
    return bytes(out)


def decode_kv(data: bytes) -> KeyValue:
    """Parse an mvccpb.KeyValue; unknown fields are skipped, as protobuf does."""
    try:
        m = _parse(data)
    except DecodeError as exc:
        raise KVCodecError(str(exc)) from None
    return KeyValue(m.key, m.create_revision, m.mod_revision, m.version, m.value, m.lease)


def decode_index_fields(data: bytes) -> tuple[bytes, int, int, int]:
    """(key, create_revision, version, lease) of an encoded KeyValue: what a restart needs.

    Rebuilding the index on open decodes every stored revision; this skips
    building a ``KeyValue`` (and copying the value out) for each.
    """
    try:
        m = _parse(data)
    except DecodeError as exc:
        raise KVCodecError(str(exc)) from None
    return m.key, m.create_revision, m.version, m.lease
