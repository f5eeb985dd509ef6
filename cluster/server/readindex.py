"""Linearizable reads in batches: one ReadIndex round in flight per member.

Every read that must be linearizable (a Range without ``serializable``, lease and auth
reads) needs a read index: the leader's commit index, confirmed by a heartbeat round to
a quorum, at some moment after the read arrived. One round answers every read that
arrived before it started, so reads join the *next* round while one is in flight (a
round already under way may have fixed its index before they arrived) and all of them
share its answer, as etcd's linearizableReadLoop does. At 64 concurrent readers this
turns 64 heartbeat rounds into a handful.

A round is asked again if no answer comes within ``retry_after`` (a lost message, a
leader busy electing); it fails once ``timeout`` has passed, or at once when the member
fails or its leader changes (``fail_in_flight``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from . import kvconv
from .kvconv import RequestError


class LinearizableReads:
    def __init__(
        self,
        request_index: Callable[[bytes], None],
        next_context: Callable[[], bytes],
        *,
        retry_after: float,
        timeout: float,
    ) -> None:
        """``request_index(ctx)`` asks the Raft core for a read index (raising
        ``RequestError`` when it cannot); ``next_context`` gives unique contexts."""
        self._request_index = request_index
        self._next_context = next_context
        self._retry_after = retry_after
        self._timeout = timeout
        self._next: asyncio.Future[int] | None = None  # the round reads join now
        self._in_flight: dict[bytes, asyncio.Future[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def read_index(self) -> int:
        """A read index fixed after this call began (the caller bounds the wait)."""
        if self._closed:
            raise RequestError(*kvconv.ERR_STOPPED)
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            # Nobody may be left to see a round's error (they timed out): retrieve it.
            batch.add_done_callback(_consume_exception)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._rounds())
        return await asyncio.shield(batch)  # one waiter's timeout must not cancel the rest

    def resolve(self, context: bytes, index: int) -> None:
        """A ReadState from a Ready: the answer to the round asked with ``context``."""
        fut = self._in_flight.get(context)
        if fut is not None and not fut.done():
            fut.set_result(index)

    def fail_in_flight(self, error: RequestError) -> None:
        """The round under way cannot be answered (e.g. the leader changed)."""
        for fut in self._in_flight.values():
            if not fut.done():
                fut.set_exception(error)

    def close(self, error: RequestError) -> None:
        """No more rounds: every read waiting, in flight or not, gets ``error``."""
        self._closed = True
        self.fail_in_flight(error)
        if self._next is not None and not self._next.done():
            self._next.set_exception(error)
        self._next = None

    async def _rounds(self) -> None:
        try:
            while self._next is not None:
                batch, self._next = self._next, None
                try:
                    index = await self._round()
                except RequestError as exc:
                    if not batch.done():
                        batch.set_exception(exc)
                except asyncio.CancelledError:
                    if not batch.done():
                        batch.set_exception(RequestError(*kvconv.ERR_STOPPED))
                    raise
                else:
                    if not batch.done():
                        batch.set_result(index)
        finally:
            self._task = None

    async def _round(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            context = self._next_context()
            answer: asyncio.Future[int] = loop.create_future()
            self._in_flight[context] = answer
            try:
                self._request_index(context)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self._retry_after, deadline - loop.time())):
                        return await answer
            finally:
                self._in_flight.pop(context, None)
            if loop.time() >= deadline:
                raise RequestError(*kvconv.ERR_TIMEOUT)


def _consume_exception(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()
