"""Readies handled in the peer transport's callback (``Member._receive``), on three
in-process members: appends and acknowledgements are answered there, a Ready that must
wait for the WAL thread is left to the Raft loop, and a failure there stops the member."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.raft import Ready
from cluster.server.member import Member
from tests.e2e.procs import free_ports
from tests.unit.server.live import LiveMember, start_peer, wait_leader


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[list[LiveMember]]:
    ports = free_ports(6)
    clients, peers = ports[:3], ports[3:]
    started = [await start_peer(tmp_path / f"m{i}", f"m{i}", clients[i], peers) for i in range(3)]
    try:
        await wait_leader(started)
        yield started
    finally:
        for lm in started:
            await lm.stop()


@dataclass
class Recorded:
    leader: LiveMember
    followers: set[int]
    seen: dict[str, list[tuple[int, int]]]  # by way: (member id, entries in the Ready)


@pytest.fixture
async def recorded(members: list[LiveMember], monkeypatch: pytest.MonkeyPatch) -> Recorded:
    seen = _record_handlers(monkeypatch)
    leader = await wait_leader(members)
    return Recorded(leader, {lm.member.id for lm in members if lm is not leader}, seen)


def _record_handlers(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, int]]]:
    """Who handled each Ready, by way: (member id, entries in it)."""
    seen: dict[str, list[tuple[int, int]]] = {"callback": [], "loop": []}
    now, wait = Member._handle_now, Member._handle

    def handle_now(self: Member, rd: Ready) -> None:
        way = "callback" if sys._getframe(1).f_code.co_name == "_handle_ready_now" else "loop"
        seen[way].append((self.id, len(rd.entries)))
        now(self, rd)

    async def handle(self: Member, rd: Ready) -> None:
        if rd.snapshot is not None or len(rd.entries) > 1:
            seen["loop"].append((self.id, len(rd.entries)))
        await wait(self, rd)

    monkeypatch.setattr(Member, "_handle_now", handle_now)
    monkeypatch.setattr(Member, "_handle", handle)
    return seen


async def _converged(members: list[LiveMember], key: bytes) -> int:
    async with asyncio.timeout(10):
        while True:
            revs = {(await lm.kv.Range(pb.RangeRequest(key=key, serializable=True))).header.revision
                    for lm in members}  # fmt: skip
            if len(revs) == 1:
                return revs.pop()
            await asyncio.sleep(0.02)


async def test_appends_and_acks_are_handled_in_the_callback(
    members: list[LiveMember], recorded: Recorded
) -> None:
    for i in range(20):
        await recorded.leader.kv.Put(pb.PutRequest(key=b"k", value=b"%d" % i))
    assert await _converged(members, b"k") >= 21
    in_callback = {mid for mid, entries in recorded.seen["callback"] if entries == 1}
    assert recorded.followers <= in_callback  # each follower wrote one-entry appends there
    leader_id = recorded.leader.member.id
    assert leader_id in {mid for mid, _ in recorded.seen["callback"]}  # acks: commit, apply


async def test_a_ready_to_write_on_the_wal_thread_is_left_to_the_loop(
    members: list[LiveMember], recorded: Recorded
) -> None:
    puts = (pb.PutRequest(key=b"k%d" % i, value=b"v") for i in range(200))
    await asyncio.gather(*(recorded.leader.kv.Put(put) for put in puts))
    await _converged(members, b"k0")
    batched = {mid for mid, entries in recorded.seen["loop"] if entries > 1}
    assert recorded.followers & batched  # appends of many entries went to the loop
    assert all(entries <= 1 for _, entries in recorded.seen["callback"])


async def test_a_failure_in_the_callback_stops_the_member(
    members: list[LiveMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await wait_leader(members)
    follower = next(lm for lm in members if lm is not leader).member
    persist: Callable[[Ready], Any] = follower.log_store.persist

    def failing(rd: Ready) -> Any:
        if rd.entries:
            raise OSError(5, "Input/output error")
        return persist(rd)

    monkeypatch.setattr(follower.log_store, "persist", failing)
    await leader.kv.Put(pb.PutRequest(key=b"k", value=b"v"))  # the other follower acks
    async with asyncio.timeout(5):
        await follower.failed.wait()
    assert "Input/output error" in (follower.failure or "")
    applied = follower.applied_index
    await leader.kv.Put(pb.PutRequest(key=b"k", value=b"w"))
    await asyncio.sleep(0.2)
    assert follower.applied_index == applied  # nothing handled after the failure
