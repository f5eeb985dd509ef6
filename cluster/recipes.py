"""Recipes on top of the client, after etcd's ``contrib/recipes``: ordered keys and a FIFO queue.

Both keep their items as keys ``<prefix>/<unique suffix>`` and order them by create revision,
the revision of the write that created each key, which the cluster assigns in commit order,
so the order is the same for every client whatever the clocks say. The suffix (nanoseconds
and random bits) only has to be unique; creation is a transaction that fails if the key
exists, and is retried with a new suffix.

``Queue.dequeue`` claims the oldest item with a transaction that deletes it only if its mod
revision is still the one read, so concurrent consumers never get the same item; when the
queue is empty it waits with a watch for the next put.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

from cluster.client import AsyncClient, Client, Compare, KeyValue, Op
from cluster.client.txn import KeyLike, LeaseLike, to_bytes

__all__ = ["AsyncOrderedKeys", "AsyncQueue", "OrderedKeys", "Queue"]


def _dir(prefix: KeyLike) -> bytes:
    p = to_bytes(prefix)
    if not p:
        raise ValueError("a recipe needs a non-empty prefix")
    return p if p.endswith(b"/") else p + b"/"


def _unique_key(directory: bytes) -> bytes:
    return directory + f"{time.time_ns():020d}-{secrets.token_hex(4)}".encode()


def _create_ops(
    key: bytes, value: bytes, lease: LeaseLike | None
) -> tuple[list[Compare], list[Op]]:
    return [Compare.create_revision(key) == 0], [Op.put(key, value, lease=lease), Op.get(key)]


def _created(resp_kvs: list[KeyValue] | None, key: bytes) -> KeyValue:
    if not resp_kvs:  # deleted between our put and get, in the same txn: cannot happen
        raise RuntimeError(f"created key {key!r} vanished")
    return resp_kvs[0]


class OrderedKeys:
    """Keys under ``prefix`` listed in creation order.

    >>> log = OrderedKeys(client, "/jobs/log")
    >>> log.append("first").key
    b'/jobs/log/0001764...-9f2c01ab'
    >>> [kv.value for kv in log.items()]
    [b'first']
    """

    def __init__(self, client: Client, prefix: KeyLike) -> None:
        self.client = client
        self.prefix = _dir(prefix)

    def append(self, value: KeyLike, *, lease: LeaseLike | None = None) -> KeyValue:
        """Create a new key holding ``value``, after every existing one; returns it."""
        while True:
            key = _unique_key(self.prefix)
            compare, ops = _create_ops(key, to_bytes(value), lease)
            r = self.client.txn(compare, ops)
            if r.succeeded:
                get = r.responses[1]
                return _created(getattr(get, "kvs", None), key)

    def items(self, *, limit: int = 0, revision: int = 0) -> list[KeyValue]:
        """The keys, oldest first (by create revision)."""
        r = self.client.get(
            self.prefix, prefix=True, sort_order="ascend", sort_target="create",
            limit=limit, revision=revision,
        )  # fmt: skip
        return r.kvs

    def first(self) -> KeyValue | None:
        """The oldest key, or None."""
        items = self.items(limit=1)
        return items[0] if items else None

    def remove(self, kv: KeyValue) -> bool:
        """Delete ``kv`` if it is unchanged since read; whether it was deleted."""
        r = self.client.txn([Compare.mod_revision(kv.key) == kv.mod_revision], [Op.delete(kv.key)])
        return r.succeeded

    def __len__(self) -> int:
        return self.client.get(self.prefix, prefix=True, count_only=True).count


class Queue:
    """A FIFO queue of values under ``prefix``, safe for many producers and consumers.

    >>> q = Queue(client, "/jobs/queue")
    >>> q.enqueue("job 1")
    >>> q.dequeue(timeout=5)
    b'job 1'
    """

    def __init__(self, client: Client, prefix: KeyLike) -> None:
        self.client = client
        self.keys = OrderedKeys(client, prefix)

    @property
    def prefix(self) -> bytes:
        return self.keys.prefix

    def enqueue(self, value: KeyLike) -> KeyValue:
        """Add ``value`` at the tail; returns the item's key-value."""
        return self.keys.append(value)

    def dequeue(self, timeout: float | None = None) -> bytes:
        """Take the oldest value, waiting for one while the queue is empty.

        Raises ``TimeoutError`` if none arrives within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            r = self.client.get(
                self.prefix, prefix=True, sort_order="ascend", sort_target="create", limit=1
            )
            if r.kvs:
                kv = r.kvs[0]
                if self.keys.remove(kv):
                    return kv.value
                continue  # another consumer took it
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"queue {self.prefix!r} stayed empty")
            self._wait_for_put(r.revision + 1, left)

    def _wait_for_put(self, start_revision: int, timeout: float | None) -> None:
        w = self.client.watch(
            self.prefix, prefix=True, start_revision=start_revision, filters=("nodelete",)
        )
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, w.cancel)
            timer.daemon = True
            timer.start()
        try:
            for _batch in w:
                return
        finally:
            w.cancel()
            if timer is not None:
                timer.cancel()

    def __len__(self) -> int:
        return len(self.keys)


class AsyncOrderedKeys:
    """:class:`OrderedKeys` for the asyncio client."""

    def __init__(self, client: AsyncClient, prefix: KeyLike) -> None:
        self.client = client
        self.prefix = _dir(prefix)

    async def append(self, value: KeyLike, *, lease: LeaseLike | None = None) -> KeyValue:
        while True:
            key = _unique_key(self.prefix)
            compare, ops = _create_ops(key, to_bytes(value), lease)
            r = await self.client.txn(compare, ops)
            if r.succeeded:
                return _created(getattr(r.responses[1], "kvs", None), key)

    async def items(self, *, limit: int = 0, revision: int = 0) -> list[KeyValue]:
        r = await self.client.get(
            self.prefix, prefix=True, sort_order="ascend", sort_target="create",
            limit=limit, revision=revision,
        )  # fmt: skip
        return r.kvs

    async def first(self) -> KeyValue | None:
        items = await self.items(limit=1)
        return items[0] if items else None

    async def remove(self, kv: KeyValue) -> bool:
        r = await self.client.txn(
            [Compare.mod_revision(kv.key) == kv.mod_revision], [Op.delete(kv.key)]
        )
        return r.succeeded

    async def size(self) -> int:
        return (await self.client.get(self.prefix, prefix=True, count_only=True)).count


class AsyncQueue:
    """:class:`Queue` for the asyncio client."""

    def __init__(self, client: AsyncClient, prefix: KeyLike) -> None:
        self.client = client
        self.keys = AsyncOrderedKeys(client, prefix)

    @property
    def prefix(self) -> bytes:
        return self.keys.prefix

    async def enqueue(self, value: KeyLike) -> KeyValue:
        return await self.keys.append(value)

    async def dequeue(self, timeout: float | None = None) -> bytes:
        """Take the oldest value, waiting while empty; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                r = await self.client.get(
                    self.prefix, prefix=True, sort_order="ascend", sort_target="create", limit=1
                )
                if r.kvs:
                    kv = r.kvs[0]
                    if await self.keys.remove(kv):
                        return kv.value
                    continue
                async with self.client.watch(
                    self.prefix, prefix=True, start_revision=r.revision + 1, filters=("nodelete",)
                ) as w:
                    async for _batch in w:
                        break

    async def size(self) -> int:
        return await self.keys.size()
