"""The stored value of a revision: ``KeyValue`` and its one encoding.

``encode_kv``/``decode_kv`` are the only place that knows how a ``KeyValue``
is laid out in the ``key`` bucket. They write exactly the protobuf wire format
of etcd's ``mvccpb.KeyValue`` (fields 1..6 in order, zero values omitted, as
gogoproto and the Python protobuf runtime both marshal it), by hand: the bytes
on disk are already etcd's, so ``hash_kv`` agrees with etcd for the same
history, and switching these two functions to ``cluster.proto.mvccpb.kv_pb2``
later changes no stored data.
"""

from __future__ import annotations

from dataclasses import dataclass


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
_I64_SIGN = 1 << 63


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


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data):
            raise KVCodecError("truncated varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift >= 70:
            raise KVCodecError("varint longer than ten bytes")


def _int64(n: int) -> int:
    n &= _U64 - 1
    return n - _U64 if n & _I64_SIGN else n


def decode_kv(data: bytes) -> KeyValue:
    """Parse an mvccpb.KeyValue; unknown fields are skipped, as protobuf does."""
    key = value = b""
    ints = [0, 0, 0, 0, 0, 0, 0]  # by field number; 2, 3, 4, 6 are used
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise KVCodecError("field number 0")
        if wire == 0:
            n, pos = _read_varint(data, pos)
            if field in (2, 3, 4, 6):
                ints[field] = _int64(n)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise KVCodecError(f"field {field} runs past the end")
            chunk = bytes(data[pos : pos + size])
            pos += size
            if field == 1:
                key = chunk
            elif field == 5:
                value = chunk
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise KVCodecError(f"field {field} has wire type {wire}")
    if pos != end:
        raise KVCodecError("truncated fixed-width field")
    return KeyValue(key, ints[2], ints[3], ints[4], value, ints[6])
