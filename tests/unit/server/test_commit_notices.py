"""When a leader tells its followers of a commit: after answering its own clients, unless a
client of another member waits for that commit (three real members in this process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster.bench.ports import free_ports
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.raft import ConfChangeType, Entry, Message, MessageType
from tests.unit.server.live import LiveMember, start_peer, wait_leader


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[list[LiveMember]]:
    ports = free_ports(6)
    clients, peers = ports[:3], ports[3:]
    lives: list[LiveMember] = []
    try:
        for i, client in enumerate(clients):
            lives.append(await start_peer(tmp_path / f"m{i}", f"m{i}", client, peers))
        await wait_leader(lives)
        for lm in lives:  # no member's own first write can land among a test's
            await lm.member.published.wait()
        yield lives
    finally:
        for lm in lives:
            await lm.stop()


def _record(leader: LiveMember, events: list[tuple[str, int]]) -> None:
    """Log the leader's commit notices (appends without entries) and its applies."""
    member = leader.member
    send, apply = member.transport.send, member._apply

    def recording_send(messages: list[Message]) -> None:
        events.extend(("notice", m.commit) for m in messages if m.type == MessageType.APP)
        send(messages)

    def recording_apply(entry: Entry) -> None:
        events.append(("apply", entry.index))
        apply(entry)

    member.transport.send = recording_send  # type: ignore[method-assign]
    member._apply = recording_apply  # type: ignore[method-assign]


def _put(key: bytes) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=b"v")


async def test_a_leader_answers_its_own_client_before_telling_followers_of_the_commit(
    members: list[LiveMember],
) -> None:
    leader = await wait_leader(members)
    events: list[tuple[str, int]] = []
    _record(leader, events)
    await leader.member.write(_put(b"local"))
    index = leader.member.applied_index
    events.append(("answered", index))
    for lm in members:  # every follower learns of the commit
        await lm.member.wait_applied(index)
    first_notice = next(i for i, e in enumerate(events) if e[0] == "notice" and e[1] >= index)
    assert events.index(("apply", index)) < events.index(("answered", index)) < first_notice


async def test_a_leader_tells_followers_first_when_a_follower_proposed_the_entry(
    members: list[LiveMember],
) -> None:
    leader = await wait_leader(members)
    follower = next(lm for lm in members if lm is not leader)
    events: list[tuple[str, int]] = []
    _record(leader, events)
    await follower.member.write(_put(b"forwarded"))  # answered once the follower applied it
    index = follower.member.applied_index
    first_notice = next(i for i, e in enumerate(events) if e[0] == "notice" and e[1] >= index)
    assert first_notice < events.index(("apply", index))


async def test_a_removed_follower_still_hears_of_its_removal(members: list[LiveMember]) -> None:
    # The leader drops the member from its transport when it applies the change: the commit
    # notice must have gone out before that, or the removed member never learns and stays up.
    leader = await wait_leader(members)
    follower = next(lm for lm in members if lm is not leader)
    await leader.member.change_membership(ConfChangeType.REMOVE_NODE, follower.member.id)
    async with asyncio.timeout(5):
        await follower.member.removed.wait()
