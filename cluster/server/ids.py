"""Unique ids a member hands out (request ids, lease ids): etcd's ``idutil.Generator``."""

from __future__ import annotations


class IdGenerator:
    """etcd's idutil.Generator: the member id's low 16 bits, then a 48-bit counter
    starting at the current Unix time in milliseconds (40 bits) shifted by 8.

    Starting from the clock matters: a restarted member must never reuse an id its previous
    life used, or an entry proposed then and applied now would answer a new request.
    """

    _TS_BITS, _COUNT_BITS = 40, 8
    _SUFFIX_BITS = _TS_BITS + _COUNT_BITS

    def __init__(self, member_id: int, now_ms: int) -> None:
        self._prefix = (member_id & 0xFFFF) << self._SUFFIX_BITS
        self._suffix = (now_ms & ((1 << self._TS_BITS) - 1)) << self._COUNT_BITS

    def next(self) -> int:
        self._suffix += 1
        return self._prefix | (self._suffix & ((1 << self._SUFFIX_BITS) - 1))
