"""Revision keys and the KeyValue encoding."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.mvcc import KeyValue, KVCodecError, Revision, decode_kv, encode_kv, is_tombstone
from cluster.mvcc.revision import RevisionError

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def test_revision_bytes_are_etcds() -> None:
    raw = Revision(0x0102, 3).to_bytes()
    assert raw == b"\x00\x00\x00\x00\x00\x00\x01\x02_\x00\x00\x00\x00\x00\x00\x00\x03"
    assert len(raw) == 17
    marked = Revision(5, 0).to_bytes(tombstone=True)
    assert len(marked) == 18 and marked.endswith(b"t")
    assert is_tombstone(marked) and not is_tombstone(raw)
    assert Revision.from_bytes(raw) == Revision(0x0102, 3)
    assert Revision.from_bytes(marked) == Revision(5, 0)


@pytest.mark.parametrize(
    "bad", [b"", b"x" * 16, b"\0" * 8 + b"-" + b"\0" * 8, b"\0" * 8 + b"_" + b"\0" * 8 + b"x"]
)
def test_bad_revision_bytes(bad: bytes) -> None:
    with pytest.raises(RevisionError):
        Revision.from_bytes(bad)


@given(
    st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
    st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
)
def test_byte_order_is_revision_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    ra, rb = Revision(*a), Revision(*b)
    assert (ra < rb) == (ra.to_bytes() < rb.to_bytes())
    assert (ra < rb) == (ra.to_bytes(True) < rb.to_bytes())  # a mark sorts right after


@given(st.binary(max_size=40), I64, I64, I64, st.binary(max_size=40), I64)
def test_kv_round_trip(
    key: bytes, create: int, mod: int, ver: int, value: bytes, lease: int
) -> None:
    kv = KeyValue(key, create, mod, ver, value, lease)
    assert decode_kv(encode_kv(kv)) == kv


def test_kv_encoding_is_mvccpb() -> None:
    kv = KeyValue(b"foo", 2, 5, 3, b"bar", 0x694D77AA2F3B7A0C)
    assert encode_kv(kv) == (
        b"\x0a\x03foo\x10\x02\x18\x05\x20\x03\x2a\x03bar\x30" + bytes.fromhex("8cf4edf9a2f5dda669")
    )
    assert encode_kv(KeyValue(b"k")) == b"\x0a\x01k"  # a tombstone's value
    assert encode_kv(KeyValue(b"k", lease=-1)) == b"\x0a\x01k\x30" + b"\xff" * 9 + b"\x01"


@given(st.binary(max_size=40), I64, I64, I64, st.binary(max_size=40), I64)
def test_kv_encoding_matches_protobuf(
    key: bytes, create: int, mod: int, ver: int, value: bytes, lease: int
) -> None:
    try:
        kv_pb2 = importlib.import_module("cluster.proto.mvccpb.kv_pb2")
    except ImportError:  # generated code not there (yet)
        return
    msg = kv_pb2.KeyValue(
        key=key, create_revision=create, mod_revision=mod, version=ver, value=value, lease=lease
    )
    kv = KeyValue(key, create, mod, ver, value, lease)
    assert encode_kv(kv) == msg.SerializeToString(deterministic=True)


def test_decode_skips_unknown_fields_and_rejects_damage() -> None:
    raw = encode_kv(KeyValue(b"k", 1, 2, 3, b"v", 4))
    extra = b"\x38\x07" + b"\x42\x02hi" + b"\x49" + b"\0" * 8 + b"\x55" + b"\0" * 4  # fields 7-10
    assert decode_kv(raw + extra) == KeyValue(b"k", 1, 2, 3, b"v", 4)
    for bad in (b"\x0a\x05ab", b"\x10", b"\x10\x80", b"\x0b", b"\x00\x01", b"\x49\0"):
        with pytest.raises(KVCodecError):
            decode_kv(bad)
