"""The Lock and Election services over an in-process member, through the generated stubs.

Leases are granted through Raft (``LeaseGrantRequest``) with long TTLs unless a
test wants one to expire; the member's lessor (it leads) expires them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import grpc
import pytest

from cluster.keyspace import prefix_range_end
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.v3electionpb import v3election_pb2 as epb
from cluster.proto.v3electionpb import v3election_pb2_grpc as epb_grpc
from cluster.proto.v3lockpb import v3lock_pb2 as lockpb
from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock_grpc
from tests.unit.server.live import LiveMember

T = TypeVar("T")
_ids = itertools.count(0x1000)
SESSION_EXPIRED = "mutex: session is expired"


@pytest.fixture
def lock(live: LiveMember) -> lock_grpc.LockAsyncStub:
    return cast("lock_grpc.LockAsyncStub", lock_grpc.LockStub(live.channel))


@pytest.fixture
def election(live: LiveMember) -> epb_grpc.ElectionAsyncStub:
    return cast("epb_grpc.ElectionAsyncStub", epb_grpc.ElectionStub(live.channel))


async def grant(live: LiveMember, ttl: int = 60) -> int:
    lease = next(_ids)
    await live.member.write(pb.LeaseGrantRequest(ID=lease, TTL=ttl))
    return lease


async def revoke(live: LiveMember, lease: int) -> None:
    await live.member.write(pb.LeaseRevokeRequest(ID=lease))


async def get(live: LiveMember, key: bytes) -> pb.RangeResponse:
    return await live.member.read(pb.RangeRequest(key=key))


async def pending(task: asyncio.Future[Any], seconds: float = 0.2) -> bool:
    """Whether ``task`` is still running ``seconds`` from now."""
    await asyncio.sleep(seconds)
    return not task.done()


async def within(aw: Awaitable[T], seconds: float = 5.0) -> T:
    async with asyncio.timeout(seconds):
        return await aw


async def rpc_error(aw: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await aw  # type: ignore[misc]
    return info.value


# -- Lock ------------------------------------------------------------------------------------


async def test_unit_prefix_range_end() -> None:
    assert prefix_range_end(b"a/") == b"a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"


async def test_mutual_exclusion_and_fifo_with_20_contenders(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    leases = [await grant(live) for _ in range(20)]
    inside: list[bytes] = []
    entered: list[int] = []  # create revisions of the holders' keys, in the order they held
    tokens: list[int] = []  # the holders' header revisions

    async def contender(lease: int) -> None:
        resp = await lock.Lock(lockpb.LockRequest(name=b"mx", lease=lease))
        assert resp.key == b"mx/%x" % lease
        assert not inside, f"{resp.key!r} entered while {inside} held the lock"
        inside.append(resp.key)
        kvs = (await get(live, resp.key)).kvs
        entered.append(kvs[0].create_revision)
        tokens.append(resp.header.revision)
        await asyncio.sleep(0.005)
        assert inside == [resp.key]
        inside.pop()
        await lock.Unlock(lockpb.UnlockRequest(key=resp.key))

    await within(asyncio.gather(*(contender(lease) for lease in leases)), 30)
    assert len(entered) == 20
    assert entered == sorted(entered)  # FIFO by create revision
    assert all(a < b for a, b in itertools.pairwise(tokens))  # fencing tokens grow
    left = await live.member.read(pb.RangeRequest(key=b"mx/", range_end=b"mx0"))
    assert left.count == 0


async def test_unlock_wakes_the_next(live: LiveMember, lock: lock_grpc.LockAsyncStub) -> None:
    la, lb = await grant(live), await grant(live)
    a = await lock.Lock(lockpb.LockRequest(name=b"u", lease=la))
    assert a.key == b"u/%x" % la
    assert a.header.revision == (await get(live, a.key)).kvs[0].create_revision
    b = asyncio.ensure_future(lock.Lock(lockpb.LockRequest(name=b"u", lease=lb)))
    assert await pending(b)
    unlocked = await lock.Unlock(lockpb.UnlockRequest(key=a.key))
    assert unlocked.header.member_id == live.member.id
    got = await within(b)
    assert isinstance(got, lockpb.LockResponse)
    assert got.key == b"u/%x" % lb
    assert got.header.revision >= unlocked.header.revision
    assert not (await get(live, a.key)).kvs


async def test_lock_again_with_the_same_lease_answers_the_same_key(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    lease = await grant(live)
    first = await lock.Lock(lockpb.LockRequest(name=b"re", lease=lease))
    again = await within(lock.Lock(lockpb.LockRequest(name=b"re", lease=lease)))
    assert isinstance(again, lockpb.LockResponse)
    assert again.key == first.key
    assert (await get(live, first.key)).kvs[0].lease == lease


async def test_revoking_the_holders_lease_releases_the_lock(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    la, lb = await grant(live), await grant(live)
    a = await lock.Lock(lockpb.LockRequest(name=b"rv", lease=la))
    b = asyncio.ensure_future(lock.Lock(lockpb.LockRequest(name=b"rv", lease=lb)))
    assert await pending(b)
    await revoke(live, la)
    got = await within(b)
    assert isinstance(got, lockpb.LockResponse)
    assert got.key == b"rv/%x" % lb
    assert not (await get(live, a.key)).kvs


async def test_expired_lease_releases_the_lock(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    la, lb = await grant(live, ttl=1), await grant(live)
    await lock.Lock(lockpb.LockRequest(name=b"ex", lease=la))
    b = asyncio.ensure_future(lock.Lock(lockpb.LockRequest(name=b"ex", lease=lb)))
    got = await within(b, 10)  # nobody keeps la alive: it expires within about 1.5 s
    assert isinstance(got, lockpb.LockResponse)
    assert got.key == b"ex/%x" % lb
    assert not live.member.lessor.exists(la)


async def test_a_waiter_whose_lease_expires_fails(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    la, lb = await grant(live), await grant(live, ttl=1)
    a = await lock.Lock(lockpb.LockRequest(name=b"wx", lease=la))
    err = await rpc_error(within(lock.Lock(lockpb.LockRequest(name=b"wx", lease=lb)), 10))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, SESSION_EXPIRED)
    assert (await get(live, a.key)).kvs  # the holder is untouched
    assert not (await get(live, b"wx/%x" % lb)).kvs


async def test_unknown_lease(live: LiveMember, lock: lock_grpc.LockAsyncStub) -> None:
    err = await rpc_error(lock.Lock(lockpb.LockRequest(name=b"nl", lease=0x7777777)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "etcdserver: requested lease not found"
    err = await rpc_error(lock.Unlock(lockpb.UnlockRequest(key=b"")))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: key is not provided",
    )


async def test_lease_zero_gets_a_session_lease(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    resp = await lock.Lock(lockpb.LockRequest(name=b"z"))
    lease = (await get(live, resp.key)).kvs[0].lease
    assert lease > 0
    assert resp.key == b"z/%x" % lease
    assert live.member.lessor.exists(lease)


async def test_a_cancelled_lock_deletes_its_key(
    live: LiveMember, lock: lock_grpc.LockAsyncStub
) -> None:
    la, lb, lc = await grant(live), await grant(live), await grant(live)
    a = await lock.Lock(lockpb.LockRequest(name=b"cx", lease=la))
    b = lock.Lock(lockpb.LockRequest(name=b"cx", lease=lb))
    b_key = b"cx/%x" % lb
    async with asyncio.timeout(5):
        while not (await get(live, b_key)).kvs:  # queued
            await asyncio.sleep(0.01)
    b.cancel()
    async with asyncio.timeout(5):
        while (await get(live, b_key)).kvs:
            await asyncio.sleep(0.01)
    assert live.member.lessor.exists(lb)  # etcd deletes the key, not the lease
    await lock.Unlock(lockpb.UnlockRequest(key=a.key))
    c = await within(lock.Lock(lockpb.LockRequest(name=b"cx", lease=lc)))
    assert isinstance(c, lockpb.LockResponse)
    assert c.key == b"cx/%x" % lc


# -- Election --------------------------------------------------------------------------------


def leader_key(resp: epb.CampaignResponse) -> epb.LeaderKey:
    return resp.leader


async def test_campaign_leader_proclaim_resign(
    live: LiveMember, election: epb_grpc.ElectionAsyncStub
) -> None:
    err = await rpc_error(election.Leader(epb.LeaderRequest(name=b"e")))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")

    l1, l2 = await grant(live), await grant(live)
    won = await election.Campaign(epb.CampaignRequest(name=b"e", lease=l1, value=b"one"))
    first = won.leader
    assert (first.name, first.key, first.lease) == (b"e", b"e/%x" % l1, l1)
    assert first.rev == won.header.revision
    leader = await election.Leader(epb.LeaderRequest(name=b"e"))
    assert (leader.kv.key, leader.kv.value, leader.kv.create_revision) == (
        first.key,
        b"one",
        first.rev,
    )

    second = asyncio.ensure_future(
        election.Campaign(epb.CampaignRequest(name=b"e", lease=l2, value=b"two"))
    )
    assert await pending(second)
    await election.Proclaim(epb.ProclaimRequest(leader=first, value=b"uno"))
    leader = await election.Leader(epb.LeaderRequest(name=b"e"))
    assert (leader.kv.value, leader.kv.lease) == (b"uno", l1)

    resigned = await election.Resign(epb.ResignRequest(leader=first))
    assert resigned.header.revision > leader.header.revision
    won2 = await within(second)
    assert isinstance(won2, epb.CampaignResponse)
    assert won2.leader.key == b"e/%x" % l2
    leader = await election.Leader(epb.LeaderRequest(name=b"e"))
    assert (leader.kv.key, leader.kv.value) == (won2.leader.key, b"two")

    # the former leader can no longer proclaim; resigning again changes nothing
    err = await rpc_error(election.Proclaim(epb.ProclaimRequest(leader=first, value=b"x")))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "election: not leader")
    await election.Resign(epb.ResignRequest(leader=first))
    assert (await election.Leader(epb.LeaderRequest(name=b"e"))).kv.value == b"two"

    # campaigning again with the leader's lease and a new value proclaims it
    again = await within(election.Campaign(epb.CampaignRequest(name=b"e", lease=l2, value=b"deux")))
    assert isinstance(again, epb.CampaignResponse)
    assert again.leader.rev == won2.leader.rev
    assert (await election.Leader(epb.LeaderRequest(name=b"e"))).kv.value == b"deux"


async def test_election_errors(live: LiveMember, election: epb_grpc.ElectionAsyncStub) -> None:
    missing = '"leader" field must be provided'
    err = await rpc_error(election.Proclaim(epb.ProclaimRequest(value=b"x")))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, missing)
    err = await rpc_error(election.Resign(epb.ResignRequest()))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, missing)
    err = await rpc_error(
        election.Campaign(epb.CampaignRequest(name=b"ee", lease=0x7777778, value=b"v"))
    )
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    )
    stale = epb.LeaderKey(name=b"ee", key=b"ee/1", rev=5, lease=1)
    err = await rpc_error(election.Proclaim(epb.ProclaimRequest(leader=stale, value=b"x")))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "election: not leader")


async def test_leader_lease_revoked_hands_over(
    live: LiveMember, election: epb_grpc.ElectionAsyncStub
) -> None:
    l1, l2 = await grant(live), await grant(live)
    await election.Campaign(epb.CampaignRequest(name=b"r", lease=l1, value=b"a"))
    second = asyncio.ensure_future(
        election.Campaign(epb.CampaignRequest(name=b"r", lease=l2, value=b"b"))
    )
    assert await pending(second)
    await revoke(live, l1)
    won = await within(second)
    assert isinstance(won, epb.CampaignResponse)
    assert won.leader.key == b"r/%x" % l2


async def test_a_cancelled_campaign_resigns(
    live: LiveMember, election: epb_grpc.ElectionAsyncStub
) -> None:
    l1, l2 = await grant(live), await grant(live)
    await election.Campaign(epb.CampaignRequest(name=b"cc", lease=l1, value=b"a"))
    call = election.Campaign(epb.CampaignRequest(name=b"cc", lease=l2, value=b"b"))
    key = b"cc/%x" % l2
    async with asyncio.timeout(5):
        while not (await get(live, key)).kvs:
            await asyncio.sleep(0.01)
    call.cancel()
    async with asyncio.timeout(5):
        while (await get(live, key)).kvs:
            await asyncio.sleep(0.01)


async def _next(stream: AsyncIterator[epb.LeaderResponse]) -> epb.LeaderResponse:
    async with asyncio.timeout(5):
        return await anext(stream)


async def test_observe_follows_leaders_and_values(
    live: LiveMember, election: epb_grpc.ElectionAsyncStub
) -> None:
    call = election.Observe(epb.LeaderRequest(name=b"o"))
    stream = aiter(call)
    try:
        first = asyncio.ensure_future(_next(stream))
        assert await pending(first)  # no leader yet: nothing to say
        l1, l2 = await grant(live), await grant(live)
        won = await election.Campaign(epb.CampaignRequest(name=b"o", lease=l1, value=b"v1"))
        seen = await within(first)
        assert isinstance(seen, epb.LeaderResponse)
        assert (seen.kv.key, seen.kv.value) == (won.leader.key, b"v1")
        assert seen.header.revision == won.leader.rev
        assert seen.header.member_id == live.member.id

        proclaimed = await election.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v2"))
        seen = await _next(stream)
        assert (seen.kv.key, seen.kv.value) == (won.leader.key, b"v2")
        assert seen.header.revision == proclaimed.header.revision

        second = asyncio.ensure_future(
            election.Campaign(epb.CampaignRequest(name=b"o", lease=l2, value=b"w"))
        )
        assert await pending(second)
        await election.Resign(epb.ResignRequest(leader=won.leader))
        seen = await _next(stream)
        assert (seen.kv.key, seen.kv.value) == (b"o/%x" % l2, b"w")
        await within(second)

        # a new observer starts from the current leader
        late = election.Observe(epb.LeaderRequest(name=b"o"))
        try:
            seen = await _next(aiter(late))
            assert (seen.kv.key, seen.kv.value) == (b"o/%x" % l2, b"w")
        finally:
            late.cancel()

        await revoke(live, l2)  # no leader: the stream waits for the next
        l3 = await grant(live)
        nxt = asyncio.ensure_future(_next(stream))
        assert await pending(nxt)
        await election.Campaign(epb.CampaignRequest(name=b"o", lease=l3, value=b"z"))
        seen = await within(nxt)
        assert isinstance(seen, epb.LeaderResponse)
        assert (seen.kv.key, seen.kv.value) == (b"o/%x" % l3, b"z")
    finally:
        call.cancel()
