"""A member whose leader changes while a linearizable read waits on it: "leader changed"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.raft import Message, MessageType
from cluster.server import kvconv
from cluster.server.kvconv import RequestError
from tests.unit.server.live import start_member


async def test_a_read_waiting_on_a_leader_that_is_replaced_fails_with_leader_changed(
    tmp_path: Path,
) -> None:
    # Two more members in --initial-cluster that never start: this one cannot lead, and what
    # it sends them goes nowhere. Heartbeats injected from them make them leaders in turn.
    lm = await start_member(tmp_path / "m0", extra_peers=2)
    try:
        m = lm.member
        first, second = sorted(p.id for p in m.peers if p.id != m.id)

        def heartbeat_from(leader: int, term: int) -> None:
            m._receive([Message(MessageType.HEARTBEAT, to=m.id, frm=leader, term=term)])

        heartbeat_from(first, 5)
        async with asyncio.timeout(2):
            while m.leader != first:
                await asyncio.sleep(0.01)
        read = asyncio.ensure_future(m.linearizable_barrier())  # asks `first`, never answered
        await asyncio.sleep(0.1)
        assert not read.done()
        heartbeat_from(second, 6)
        async with asyncio.timeout(2):
            with pytest.raises(RequestError) as e:
                await read
        assert e.value == RequestError(*kvconv.ERR_LEADER_CHANGED)
        assert not m.reads._in_flight
    finally:
        await lm.stop()
