"""Short full passes of Python's cyclic garbage collector in a member with a large store.

A full (oldest-generation) collection walks every tracked object and stops the whole
process meanwhile, event loop and Raft included. A member's long-lived objects are
mostly its key index (a tracked ``KeyIndex`` and ``Revision`` per key), which holds no
reference cycles: at a million keys a full pass costs 0.3-0.5 s and finds nothing,
and it comes round again each time the store grows by a quarter. Requests stall for
the whole pass (measured with ``python -m cluster.bench large``: 520 ms).

``GCPauseBound`` bounds that: when a full collection took longer than ``max_pause``,
its survivors are moved to the collector's permanent generation (``gc.freeze``), so
later passes walk only what was made since. Frozen objects are still freed by
reference counting; what freezing gives up is finding cycles among them. Those are
rare here (the index and configuration have none; a request that happens to be in
flight at that moment and later dies inside a cycle stays in memory), and freezes are
rare too: each one follows a collection that walked enough new survivors to take
``max_pause``, which takes sustained growth of the store. ``/metrics`` shows how often
(``python_gc_freezes_total``) and the longest full pass seen
(``python_gc_longest_full_collection_seconds``). Measured: a member that took 300,000
puts froze 16-25 times; unfreezing it and collecting then found 150-360 objects of
cyclic garbage among 650,000 frozen ones. (``gc.get_freeze_count()`` walks the frozen
objects, ~0.1 s for two million: not for a metric.)

Right after freezing, a full collection is run (nothing left to walk, so it is quick):
the collector decides when the next full pass is due from the survivors of the last one
(a quarter more), and without it that would still count the frozen ones.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

DEFAULT_MAX_PAUSE = 0.02  # seconds

_installed: GCPauseBound | None = None


def installed() -> GCPauseBound | None:
    """The bound installed in this process, if any."""
    return _installed


class GCPauseBound:
    """Freeze the survivors of every full collection slower than ``max_pause``.

    Installed once per process, on the event loop that then runs the follow-up
    collection (collection callbacks may run in any thread, and a collection cannot
    be started from inside one).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_pause: float = DEFAULT_MAX_PAUSE):
        self._loop = loop
        self.max_pause = max_pause
        self.freezes = 0
        self.longest_pause = 0.0  # seconds, of the full collections seen
        self._began = 0.0
        self._following_up = False

    def install(self) -> None:
        global _installed
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)
        _installed = self

    def uninstall(self) -> None:
        global _installed
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if _installed is self:
            _installed = None

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.longest_pause = max(self.longest_pause, took)
        if took > self.max_pause and not self._following_up:
            gc.freeze()  # the collection is over: its survivors are all in the oldest generation
            self.freezes += 1
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._follow_up)

    def _follow_up(self) -> None:
        self._following_up = True  # never a freeze (and another follow-up) of its own
        try:
            gc.collect()
        finally:
            self._following_up = False
