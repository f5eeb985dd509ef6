"""Revisions: ``(main, sub)`` pairs, and their 17-byte keys in the ``key`` bucket.

``main`` is the store revision of a write (one per put, delete or write txn);
``sub`` orders the changes made within it. In the ``key`` bucket a revision is
``8-byte big-endian main + b"_" + 8-byte big-endian sub`` (etcd's revToBytes),
so byte order is revision order; a trailing ``b"t"`` marks a tombstone.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

REV_BYTES_LEN = 17
MARKED_REV_BYTES_LEN = 18  # with the tombstone mark
TOMBSTONE_MARK = b"t"

_REV = struct.Struct(">QcQ")
_SEP = b"_"
MAX_REV = 2**63 - 1


class RevisionError(ValueError):
    """Bytes that are not a revision key."""


class Revision(NamedTuple):
    """A point in the store's history, ordered as ``(main, sub)``."""

    main: int
    sub: int = 0

    def to_bytes(self, tombstone: bool = False) -> bytes:
        """The ``key`` bucket key; ``tombstone`` appends etcd's ``b"t"`` mark."""
        raw = _REV.pack(self.main, _SEP, self.sub)
        return raw + TOMBSTONE_MARK if tombstone else raw

    @classmethod
    def from_bytes(cls, raw: bytes) -> Revision:
        """The revision of a ``key`` bucket key, marked or not."""
        if len(raw) not in (REV_BYTES_LEN, MARKED_REV_BYTES_LEN):
            raise RevisionError(f"revision key of {len(raw)} bytes")
        if len(raw) == MARKED_REV_BYTES_LEN and raw[17:] != TOMBSTONE_MARK:
            raise RevisionError(f"revision key with unknown mark {raw[17:]!r}")
        main, sep, sub = _REV.unpack_from(raw)
        if sep != _SEP:
            raise RevisionError(f"revision key with separator {sep!r}")
        return cls(main, sub)

    def __repr__(self) -> str:
        return f"Revision({self.main}, {self.sub})"


def is_tombstone(raw: bytes) -> bool:
    """Whether a ``key`` bucket key marks a deletion."""
    return len(raw) == MARKED_REV_BYTES_LEN and raw[17:] == TOMBSTONE_MARK
