"""The Lease service over real members in this process, through the generated gRPC stubs.

Most tests use the single-member ``live`` fixture (it leads; 10 ms heartbeats, 100 ms
election timeout: a minimum TTL of 1 s). The last ones run three members, each with its
own gRPC server, to check that followers forward keep-alives and remaining TTLs to the
leader, also after the leader stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cluster.bench.ports import free_ports
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.raft import StateType
from cluster.server.lease import IdGenerator
from cluster.server.member import Member
from tests.unit.server.live import LiveMember, start_member, start_peer

NOT_FOUND = "etcdserver: requested lease not found"


def _stubs(live: LiveMember) -> tuple[pb_grpc.LeaseAsyncStub, pb_grpc.KVAsyncStub]:
    return pb_grpc.LeaseStub(live.channel), pb_grpc.KVStub(live.channel)  # type: ignore[return-value]


async def _get(kv: pb_grpc.KVAsyncStub, key: bytes) -> list[bytes]:
    resp = await kv.Range(pb.RangeRequest(key=key, serializable=True))
    return [item.value for item in resp.kvs]


async def _until(cond: object, timeout: float, step: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():  # type: ignore[operator]
            await asyncio.sleep(step)


async def test_grant_timetolive_keys_and_revoke_deletes_keys_at_one_revision(
    live: LiveMember,
) -> None:
    lease, kv = _stubs(live)
    m = live.member
    granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
    assert 0 < granted.ID < 2**63 and granted.TTL == 30
    h = granted.header
    assert (h.cluster_id, h.member_id, h.raft_term) == (m.cluster_id, m.id, m.node.term)
    assert h.revision == m.kv.current_revision
    await kv.Put(pb.PutRequest(key=b"/l/b", value=b"2", lease=granted.ID))
    put = await kv.Put(pb.PutRequest(key=b"/l/a", value=b"1", lease=granted.ID))
    await kv.Put(pb.PutRequest(key=b"/l/c", value=b"3"))  # no lease

    ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
    assert (ttl.ID, ttl.grantedTTL) == (granted.ID, 30)
    assert 28 <= ttl.TTL <= 30
    assert list(ttl.keys) == [b"/l/a", b"/l/b"]
    assert ttl.header.member_id == m.id and ttl.header.revision == put.header.revision + 1
    no_keys = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
    assert list(no_keys.keys) == []

    before = m.kv.current_revision
    revoked = await lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID))
    assert revoked.header.revision == before + 1  # both keys deleted at one revision
    assert revoked.header.member_id == m.id
    assert await _get(kv, b"/l/a") == [] and await _get(kv, b"/l/b") == []
    assert await _get(kv, b"/l/c") == [b"3"]
    history = await kv.Range(pb.RangeRequest(key=b"/l/a", revision=before))
    assert [x.value for x in history.kvs] == [b"1"]

    gone = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
    assert (gone.ID, gone.TTL, gone.grantedTTL, list(gone.keys)) == (granted.ID, -1, 0, [])
    assert gone.header.member_id == m.id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=granted.ID))
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, NOT_FOUND)


async def test_put_with_an_unknown_lease_fails(live: LiveMember) -> None:
    _, kv = _stubs(live)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await kv.Put(pb.PutRequest(key=b"k", value=b"v", lease=0x1234))
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, NOT_FOUND)


async def test_given_id_duplicate_id_too_large_and_minimum_ttl(live: LiveMember) -> None:
    lease, _ = _stubs(live)
    m = live.member
    assert (await lease.LeaseGrant(pb.LeaseGrantRequest(ID=42, TTL=10))).ID == 42
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await lease.LeaseGrant(pb.LeaseGrantRequest(ID=42, TTL=20))
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )

    last = m.node.log.last_index()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_001))
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
    )
    assert m.node.log.last_index() == last  # refused before proposing
    assert (await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_000))).TTL == 9_000_000_000

    assert m.lessor.min_ttl == 1  # 10 ms heartbeats, 100 ms election timeout
    for asked in (0, -5):
        raised = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=asked))
        assert raised.TTL == 1
        ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=raised.ID))
        assert ttl.grantedTTL == 1


async def test_leases_lists_every_lease(live: LiveMember) -> None:
    lease, _ = _stubs(live)
    assert list((await lease.LeaseLeases(pb.LeaseLeasesRequest())).leases) == []
    ids = {(await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))).ID for _ in range(3)}
    resp = await lease.LeaseLeases(pb.LeaseLeasesRequest())
    assert {s.ID for s in resp.leases} == ids
    assert resp.header.member_id == live.member.id
    assert resp.header.revision == live.member.kv.current_revision


async def test_keepalive_keeps_a_lease_alive_while_one_without_expires(live: LiveMember) -> None:
    lease, kv = _stubs(live)
    kept = (await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2))).ID
    left = (await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2))).ID
    await kv.Put(pb.PutRequest(key=b"kept", value=b"1", lease=kept))
    await kv.Put(pb.PutRequest(key=b"left", value=b"1", lease=left))

    requests: asyncio.Queue[pb.LeaseKeepAliveRequest | None] = asyncio.Queue()

    async def gen() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        while (req := await requests.get()) is not None:
            yield req

    stream = lease.LeaseKeepAlive(gen())
    loop = asyncio.get_running_loop()
    start = loop.time()
    answers = []
    while loop.time() - start < 4.0:  # twice the TTL
        requests.put_nowait(pb.LeaseKeepAliveRequest(ID=kept))
        answers.append(await stream.read())
        await asyncio.sleep(0.5)
    assert {(a.ID, a.TTL) for a in answers} == {(kept, 2)}
    assert answers[-1].header.member_id == live.member.id
    assert await _get(kv, b"kept") == [b"1"]
    assert await _get(kv, b"left") == []  # the leader revoked it through Raft
    assert not live.member.lessor.exists(left)

    # An unknown (here: expired and revoked) lease: TTL 0, and the stream goes on.
    requests.put_nowait(pb.LeaseKeepAliveRequest(ID=left))
    assert (left, 0) == ((r := await stream.read()).ID, r.TTL)
    requests.put_nowait(pb.LeaseKeepAliveRequest(ID=kept))
    assert (await stream.read()).TTL == 2
    requests.put_nowait(None)  # the client is done: the stream ends
    assert await stream.read() is grpc.aio.EOF

    async def kept_gone() -> bool:
        return await _get(kv, b"kept") == []

    await _until(kept_gone, 5.0)  # without keep-alives it expires too


async def test_keepalive_right_after_grant_and_many_in_flight(live: LiveMember) -> None:
    lease, _ = _stubs(live)
    ids = [(await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=20))).ID for _ in range(5)]

    async def gen() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        for lease_id in [*ids, 777, *ids]:
            yield pb.LeaseKeepAliveRequest(ID=lease_id)

    answers = [(r.ID, r.TTL) async for r in lease.LeaseKeepAlive(gen())]
    assert sorted(answers) == sorted([*[(i, 20) for i in ids] * 2, (777, 0)])


async def test_without_a_leader_requests_fail_with_no_leader(tmp_path: Path) -> None:
    lm = await start_member(tmp_path / "m0", extra_peers=2)  # its peers never start
    try:
        lease, _ = _stubs(lm)
        unavailable = (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        for call in (
            lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10)),
            lease.LeaseLeases(pb.LeaseLeasesRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert (e.value.code(), e.value.details()) == unavailable

        async def one() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
            yield pb.LeaseKeepAliveRequest(ID=5)

        async def keep_alive() -> None:
            async for _ in lease.LeaseKeepAlive(one()):
                pass

        # Forwarding waits for a leader until the request timeout (5 s + 2 elections).
        results = await asyncio.gather(
            keep_alive(),
            lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=5)),
            return_exceptions=True,
        )
        for err in results:
            assert isinstance(err, grpc.aio.AioRpcError), err
            assert (err.code(), err.details()) == unavailable
    finally:
        await lm.stop()


def test_id_generator_is_etcds_request_id_generator() -> None:
    gen = IdGenerator(0x8E9E05C52164694D, now_ms=0x12_3456_789A)
    first = gen.next()
    assert first == 0x694D_1234_5678_9A01
    assert gen.next() == first + 1


# -- three members: forwarding to the leader --------------------------------------------------


class Three:
    def __init__(self) -> None:
        self.lives: list[LiveMember] = []
        self.stopped: set[int] = set()  # indexes of the members stopped

    @property
    def members(self) -> list[Member]:
        return [lm.member for lm in self.lives]

    def _live(self, m: Member) -> LiveMember:
        return self.lives[self.members.index(m)]

    def lease(self, m: Member) -> pb_grpc.LeaseAsyncStub:
        return pb_grpc.LeaseStub(self._live(m).channel)  # type: ignore[return-value]

    def kv(self, m: Member) -> pb_grpc.KVAsyncStub:
        return pb_grpc.KVStub(self._live(m).channel)  # type: ignore[return-value]

    def running(self) -> list[Member]:
        return [lm.member for i, lm in enumerate(self.lives) if i not in self.stopped]

    async def leader(self, timeout: float = 10.0) -> Member:
        async with asyncio.timeout(timeout):
            while True:
                for m in self.running():
                    if m.node.state == StateType.LEADER and m.lessor.is_primary:
                        others = [o for o in self.running() if o is not m]
                        if all(o.leader == m.id for o in others):
                            return m
                await asyncio.sleep(0.02)

    async def stop(self, m: Member) -> None:
        i = self.members.index(m)
        assert i not in self.stopped
        await self.lives[i].stop()
        self.stopped.add(i)


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[Three]:
    ports = free_ports(6)
    clients, peers = ports[:3], ports[3:]
    ticks = ["--heartbeat-interval=50", "--election-timeout=500"]
    c = Three()
    try:
        for i in range(3):
            c.lives.append(await start_peer(tmp_path / f"m{i}", f"m{i}", clients[i], peers, *ticks))
        await c.leader()

        async def published() -> bool:  # every member's client URL is known to all
            return all(all(x.clientURLs for x in m.members()) for m in c.members)

        await _until(published, 10.0)
        yield c
    finally:
        for m in c.running():
            await c.stop(m)


async def test_a_follower_forwards_keepalives_and_timetolive_to_the_leader(
    three: Three,
) -> None:
    leader = await three.leader()
    follower = next(m for m in three.members if m is not leader)
    lease = three.lease(follower)
    granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=4))  # proposed by the follower
    await three.kv(follower).Put(pb.PutRequest(key=b"f", value=b"1", lease=granted.ID))
    await asyncio.sleep(1.5)

    ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
    assert ttl.TTL in (1, 2) and ttl.grantedTTL == 4 and list(ttl.keys) == [b"f"]  # the leader's
    assert ttl.header.member_id == follower.id
    missing = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=99))
    assert (missing.ID, missing.TTL) == (99, -1)

    async def gen() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        for lease_id in (granted.ID, 99, granted.ID):
            yield pb.LeaseKeepAliveRequest(ID=lease_id)

    answers = [(r.ID, r.TTL, r.header.member_id) async for r in lease.LeaseKeepAlive(gen())]
    assert sorted(answers) == sorted(
        [(granted.ID, 4, follower.id), (granted.ID, 4, follower.id), (99, 0, follower.id)]
    )
    ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=granted.ID))
    assert ttl.TTL in (3, 4)  # renewed on the leader

    # Leases through a follower: after a barrier, so a grant through another member shows.
    other = (await three.lease(leader).LeaseGrant(pb.LeaseGrantRequest(TTL=60))).ID
    listed = await lease.LeaseLeases(pb.LeaseLeasesRequest())
    assert {s.ID for s in listed.leases} == {granted.ID, other}


async def test_forwarded_keepalives_follow_a_new_leader(three: Three) -> None:
    leader = await three.leader()
    follower = next(m for m in three.members if m is not leader)
    lease = three.lease(follower)
    lease_id = (await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3))).ID
    await three.kv(follower).Put(pb.PutRequest(key=b"alive", value=b"1", lease=lease_id))

    requests: asyncio.Queue[pb.LeaseKeepAliveRequest | None] = asyncio.Queue()

    async def gen() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        while (req := await requests.get()) is not None:
            yield req

    stream = lease.LeaseKeepAlive(gen())
    requests.put_nowait(pb.LeaseKeepAliveRequest(ID=lease_id))
    assert (await stream.read()).TTL == 3

    await three.stop(leader)  # the follower's link to it breaks
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 7.0:  # well past the TTL, through the election
        requests.put_nowait(pb.LeaseKeepAliveRequest(ID=lease_id))
        resp = await stream.read()
        assert (lease_id, 3) == (resp.ID, resp.TTL)
        await asyncio.sleep(0.8)
    new = await three.leader()
    assert new is not leader
    assert await _get(three.kv(follower), b"alive") == [b"1"]
    requests.put_nowait(None)
    assert await stream.read() is grpc.aio.EOF
