"""Pending ReadIndex requests on a leader, confirmed by a quorum of heartbeat acks."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import Message


@dataclass(slots=True)
class ReadIndexStatus:
    request: Message
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnlyQueue:
    """Read requests in arrival order, keyed by their context.

    A heartbeat carries the newest pending context; a quorum of acks for it
    proves leadership at a moment after every earlier request arrived, so all
    of them are released together.
    """

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexStatus] = {}
        self._queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add_request(self, index: int, request: Message) -> None:
        ctx = request.context
        if ctx in self._pending:
            return
        self._pending[ctx] = ReadIndexStatus(request, index)
        self._queue.append(ctx)

    def recv_ack(self, node_id: int, ctx: bytes) -> set[int] | None:
        status = self._pending.get(ctx)
        if status is None:
            return None
        status.acks.add(node_id)
        return status.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Remove and return every request up to and including ``ctx``."""
        if ctx not in self._pending:
            return []
        released: list[ReadIndexStatus] = []
        while self._queue:
            head = self._queue.pop(0)
            released.append(self._pending.pop(head))
            if head == ctx:
                break
        return released

    def last_pending_ctx(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def clear(self) -> None:
        self._pending.clear()
        self._queue.clear()
