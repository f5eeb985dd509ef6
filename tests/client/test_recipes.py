"""Ordered keys and the FIFO queue (cluster.recipes)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.client import AsyncClient, Client
from cluster.recipes import AsyncOrderedKeys, AsyncQueue, OrderedKeys, Queue


def test_ordered_keys_follow_creation_order(client: Client, ns: str) -> None:
    keys = OrderedKeys(client, ns + "log")
    made = [keys.append(f"v{i}") for i in range(5)]
    assert all(kv.key.startswith((ns + "log/").encode()) for kv in made)
    assert len({kv.key for kv in made}) == 5
    items = keys.items()
    assert [kv.value for kv in items] == [f"v{i}".encode() for i in range(5)]
    assert [kv.create_revision for kv in items] == sorted(kv.create_revision for kv in made)
    # an overwrite keeps the place: order is by create revision, not by modification
    client.put(items[0].key, "v0-updated")
    assert keys.items()[0].value == b"v0-updated"
    first = keys.first()
    assert first is not None and keys.remove(first)
    assert not keys.remove(first)  # gone already
    assert len(keys) == 4


def test_queue_fifo_single_consumer(client: Client, ns: str) -> None:
    q = Queue(client, ns + "q")
    for i in range(10):
        q.enqueue(f"item-{i}")
    assert len(q) == 10
    assert [q.dequeue(timeout=5) for _ in range(10)] == [f"item-{i}".encode() for i in range(10)]
    with pytest.raises(TimeoutError):
        q.dequeue(timeout=0.3)


def test_queue_blocking_dequeue_waits_for_enqueue(client: Client, ns: str) -> None:
    q = Queue(client, ns + "q")
    threading.Timer(0.4, q.enqueue, ("late",)).start()
    t0 = time.monotonic()
    assert q.dequeue(timeout=10) == b"late"
    assert 0.3 < time.monotonic() - t0 < 5


def test_queue_concurrent_consumers(endpoints: list[str], ns: str) -> None:
    """Three consumers drain 30 items: each item once, each consumer in FIFO order."""
    total, consumers = 30, 3
    got: list[list[int]] = [[] for _ in range(consumers)]
    errors: list[BaseException] = []
    with Client(endpoints) as producer_client, Client(endpoints) as consumer_client:
        producer = Queue(producer_client, ns + "q")
        consumer_q = Queue(consumer_client, ns + "q")
        per = total // consumers

        def consume(i: int) -> None:
            try:
                for _ in range(per):
                    got[i].append(int(consumer_q.dequeue(timeout=15)))
            except BaseException as e:
                errors.append(e)

        ts = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
        for t in ts:
            t.start()  # consumers start on an empty queue and wait
        for n in range(total):
            producer.enqueue(str(n))
            if n % 10 == 9:
                time.sleep(0.05)
        for t in ts:
            t.join(30)
        assert not errors, errors
        assert sorted(x for g in got for x in g) == list(range(total))
        for g in got:
            assert g == sorted(g), g
        assert len(producer) == 0


async def test_async_recipes(aclient: AsyncClient, ns: str) -> None:
    keys = AsyncOrderedKeys(aclient, ns + "log")
    for i in range(3):
        await keys.append(str(i))
    assert [kv.value for kv in await keys.items()] == [b"0", b"1", b"2"]
    assert await keys.size() == 3

    q = AsyncQueue(aclient, ns + "q")
    results: list[bytes] = []

    async def consumer() -> None:
        for _ in range(3):
            results.append(await q.dequeue(timeout=10))

    task = asyncio.ensure_future(consumer())
    await asyncio.sleep(0.2)
    for v in ["a", "b", "c"]:
        await q.enqueue(v)
    await asyncio.wait_for(task, 10)
    assert results == [b"a", b"b", b"c"]
    with pytest.raises(TimeoutError):
        await q.dequeue(timeout=0.3)
    assert await q.size() == 0
