"""GCPauseBound: the survivors of a slow full collection are frozen, later passes skip them."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from cluster import gcpauses
from cluster.gcpauses import GCPauseBound


class Node:
    """A tracked object, as a KeyIndex is."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # what a test froze goes back to the collector


def _tracked_ids() -> set[int]:
    return {id(o) for o in gc.get_objects()}  # generations 0-2; not the frozen ones


def test_survivors_of_a_slow_full_collection_are_frozen(loop: asyncio.AbstractEventLoop) -> None:
    bound = GCPauseBound(loop, max_pause=0.0)  # every full collection counts as slow
    bound.install()
    try:
        kept = [Node(i) for i in range(2000)]
        assert id(kept[0]) in _tracked_ids()
        gc.collect()
        assert bound.freezes == 1
        assert bound.longest_pause > 0
        tracked = _tracked_ids()
        assert not any(id(n) in tracked for n in kept)  # later passes do not walk them
        assert kept[1999].value == 1999  # frozen objects live on as before
        # the follow-up full collection runs on the loop (not from inside the callback)
        collections = gc.get_stats()[2]["collections"]
        loop.run_until_complete(asyncio.sleep(0))
        assert gc.get_stats()[2]["collections"] == collections + 1
        assert bound.freezes == 1  # the follow-up never freezes (nor follows up) itself
    finally:
        bound.uninstall()


def test_fast_full_collections_freeze_nothing(loop: asyncio.AbstractEventLoop) -> None:
    bound = GCPauseBound(loop, max_pause=60.0)
    bound.install()
    try:
        kept = [Node(i) for i in range(100)]
        gc.collect()
        gc.collect(0)  # a young collection is never considered
        assert bound.freezes == 0
        assert id(kept[0]) in _tracked_ids()
    finally:
        bound.uninstall()


def test_frozen_objects_are_still_freed_by_reference_counting(
    loop: asyncio.AbstractEventLoop,
) -> None:
    import weakref

    class Leaf:
        pass

    bound = GCPauseBound(loop, max_pause=0.0)
    bound.install()
    try:
        leaf = Leaf()
        ref = weakref.ref(leaf)
        gc.collect()
        assert bound.freezes >= 1
        del leaf
        assert ref() is None
    finally:
        bound.uninstall()


def test_install_is_process_wide_and_uninstall_removes_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    bound = GCPauseBound(loop)
    assert gcpauses.installed() is None
    bound.install()
    bound.install()  # once only
    try:
        assert gcpauses.installed() is bound
        assert gc.callbacks.count(bound._on_collection) == 1
    finally:
        bound.uninstall()
    assert gcpauses.installed() is None
    assert bound._on_collection not in gc.callbacks
    gc.collect()
    assert bound.freezes == 0


def test_a_closed_loop_gets_no_follow_up(loop: asyncio.AbstractEventLoop) -> None:
    bound = GCPauseBound(loop, max_pause=0.0)
    bound.install()
    loop.close()
    try:
        gc.collect()  # must not raise from the callback
        assert bound.freezes == 1
    finally:
        bound.uninstall()
