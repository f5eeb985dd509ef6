"""Linearizable reads share ReadIndex rounds; a read never uses a round begun before it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from cluster.server import kvconv
from cluster.server.kvconv import RequestError
from cluster.server.readindex import LinearizableReads


class FakeCore:
    """Records each read-index request; the test answers them."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.refuse: RequestError | None = None
        self._ids = itertools.count(1)

    def request(self, ctx: bytes) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.asked.append(ctx)

    def context(self) -> bytes:
        return next(self._ids).to_bytes(8, "big")


def make(core: FakeCore, retry_after: float = 5.0, timeout: float = 10.0) -> LinearizableReads:
    return LinearizableReads(core.request, core.context, retry_after=retry_after, timeout=timeout)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_arriving_together_share_one_round() -> None:
    core = FakeCore()
    reads = make(core)
    waiting = [asyncio.ensure_future(reads.read_index()) for _ in range(50)]
    await settle()
    assert len(core.asked) == 1
    reads.resolve(core.asked[0], 42)
    assert await asyncio.gather(*waiting) == [42] * 50


async def test_a_read_arriving_during_a_round_waits_for_the_next_one() -> None:
    core = FakeCore()
    reads = make(core)
    first = asyncio.ensure_future(reads.read_index())
    await settle()
    later = asyncio.ensure_future(reads.read_index())  # the round in flight predates it
    await settle()
    assert len(core.asked) == 1
    reads.resolve(core.asked[0], 10)
    assert await first == 10
    await settle()
    assert not later.done()
    assert len(core.asked) == 2  # a new round, asked only after the first one ended
    reads.resolve(core.asked[1], 11)
    assert await later == 11


async def test_an_unanswered_round_is_asked_again() -> None:
    core = FakeCore()
    reads = make(core, retry_after=0.05)
    read = asyncio.ensure_future(reads.read_index())
    await asyncio.sleep(0.12)
    assert len(core.asked) >= 2
    reads.resolve(core.asked[0], 5)  # a late answer to an abandoned context: ignored
    await settle()
    assert not read.done()
    reads.resolve(core.asked[-1], 7)
    assert await read == 7


async def test_a_round_gives_up_after_the_timeout() -> None:
    core = FakeCore()
    reads = make(core, retry_after=0.02, timeout=0.1)
    with pytest.raises(RequestError) as e:
        await reads.read_index()
    assert e.value == RequestError(*kvconv.ERR_TIMEOUT)


async def test_a_leader_change_fails_the_round_in_flight_not_the_next() -> None:
    core = FakeCore()
    reads = make(core)
    first = asyncio.ensure_future(reads.read_index())
    await settle()
    later = asyncio.ensure_future(reads.read_index())
    await settle()
    reads.fail_in_flight(RequestError(*kvconv.ERR_LEADER_CHANGED))
    with pytest.raises(RequestError) as e:
        await first
    assert e.value == RequestError(*kvconv.ERR_LEADER_CHANGED)
    await settle()
    reads.resolve(core.asked[-1], 3)
    assert await later == 3


async def test_no_leader_is_reported_to_every_read_of_the_round() -> None:
    core = FakeCore()
    core.refuse = RequestError(*kvconv.ERR_NO_LEADER)
    reads = make(core)
    results = await asyncio.gather(*(reads.read_index() for _ in range(3)), return_exceptions=True)
    assert results == [RequestError(*kvconv.ERR_NO_LEADER)] * 3


async def test_one_reader_giving_up_does_not_cancel_the_others() -> None:
    core = FakeCore()
    reads = make(core)
    impatient = asyncio.ensure_future(reads.read_index())
    patient = asyncio.ensure_future(reads.read_index())
    await settle()
    impatient.cancel()
    await settle()
    reads.resolve(core.asked[0], 9)
    assert await patient == 9


async def test_close_fails_waiting_and_later_reads() -> None:
    core = FakeCore()
    reads = make(core)
    first = asyncio.ensure_future(reads.read_index())
    await settle()
    queued = asyncio.ensure_future(reads.read_index())
    await settle()
    reads.close(RequestError(*kvconv.ERR_STOPPED))
    for fut in (first, queued):
        with pytest.raises(RequestError):
            await fut
    with pytest.raises(RequestError):
        await reads.read_index()
