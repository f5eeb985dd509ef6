"""``SerialWorker``: the member's WAL thread (calls in order, answered on the loop)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.server.worker import SerialWorker


async def test_calls_run_in_order_on_one_other_thread() -> None:
    worker = SerialWorker("test-worker")
    seen: list[tuple[int, int]] = []

    def record(i: int) -> int:
        time.sleep(0.001 * (5 - i))  # the first calls are the slowest: order still holds
        seen.append((i, threading.get_ident()))
        return i * 10

    try:
        results = await asyncio.gather(*(worker.run(record, i) for i in range(5)))
    finally:
        worker.shutdown()
    assert results == [0, 10, 20, 30, 40]
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()


async def test_an_exception_reaches_the_awaiting_coroutine() -> None:
    worker = SerialWorker("test-worker")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space left"):
            await worker.run(fail)
        assert await worker.run(lambda: "still serving") == "still serving"
    finally:
        worker.shutdown()


async def test_a_cancelled_waiter_and_shutdown() -> None:
    worker = SerialWorker("test-worker")
    release = threading.Event()
    done: list[str] = []
    blocked = worker.run(release.wait, 5)
    queued = worker.run(done.append, "queued")
    blocked.cancel()  # the call itself still runs: the answer finds nobody waiting
    release.set()
    await asyncio.sleep(0)
    await asyncio.get_running_loop().run_in_executor(None, worker.shutdown)
    assert done == ["queued"]  # shutdown finished what was queued before it
    await asyncio.sleep(0.01)  # the answers arrive; none is set on the cancelled future
    assert blocked.cancelled() and queued.done()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.run(done.append, "late")
