"""Key-range arithmetic shared by the client and the members."""

from __future__ import annotations


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's
    GetPrefixRangeEnd); ``b"\\0"`` (every key from ``prefix`` on) when it is all 0xff."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"
