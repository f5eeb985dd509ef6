"""etcdctl 3.4's ``lock`` and ``elect``, and the v3lock / v3election services, against real
member processes.

The etcdctl commands run clientv3/concurrency's recipes on the client side, over
the KV, Lease (grant, keep-alive) and Watch services, not over the v3lock /
v3election services: those are driven here through their gRPC stubs, with
contenders on every member (a follower forwards their writes and watches its
own applied state). Each long-running etcdctl is a ``Background`` process
whose stdout lines are read by a thread, so a test can wait for a line or
check that none comes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.v3electionpb import v3election_pb2 as epb
from cluster.proto.v3electionpb import v3election_pb2_grpc as epb_grpc
from cluster.proto.v3lockpb import v3lock_pb2 as lockpb
from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock_grpc
from tests.e2e.procs import BackgroundEtcdctl as Background
from tests.e2e.procs import Cluster, Proc, needs_etcdctl

BOTH_GRPC_SERVERS = True  # module_cluster: on grpcio's server, then on pygrpc-native

pytestmark = needs_etcdctl


@pytest.fixture
def background(module_cluster: Cluster) -> Iterator[list[Background]]:
    """Background etcdctl processes a test starts (append them): killed afterwards."""
    started: list[Background] = []
    yield started
    for bg in started:
        bg.kill()


def _start(started: list[Background], c: Cluster, *args: str, endpoint: Proc) -> Background:
    bg = Background(list(args), [endpoint])
    started.append(bg)
    return bg


def _keys(c: Cluster, prefix: str) -> list[str]:
    return [k for k in c.etcdctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]


def test_lock_blocks_the_second_until_the_first_is_killed(
    module_cluster: Cluster, background: list[Background]
) -> None:
    c = module_cluster
    m0, m1, _ = c.members
    first = _start(background, c, "lock", "--ttl=2", "lk1", endpoint=m0)
    key1 = first.line()
    assert key1.startswith("lk1/"), key1
    assert _keys(c, "lk1/") == [key1]

    second = _start(background, c, "lock", "lk1", endpoint=m1)
    assert second.quiet(2.0)  # waits while the first holds the lock
    assert len(_keys(c, "lk1/")) == 2  # queued behind it

    # SIGKILL: no unlock; the lock goes when the first's lease (2 s, not kept alive) expires
    first.signal(signal.SIGKILL)
    first.wait()
    t0 = time.monotonic()
    key2 = second.line(timeout=20)
    assert key2.startswith("lk1/") and key2 != key1
    assert time.monotonic() - t0 < 15
    assert _keys(c, "lk1/") == [key2]

    # SIGTERM: etcdctl unlocks (deletes its key) and exits 0
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert _keys(c, "lk1/") == []


def test_lock_runs_a_command_while_holding(
    module_cluster: Cluster, background: list[Background]
) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    holder = _start(background, c, "lock", "lk2", endpoint=m0)
    key = holder.line()
    script = 'echo "key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV"'
    waiter = _start(background, c, "lock", "lk2", "--", "sh", "-c", script, endpoint=m2)
    assert waiter.quiet(1.5)
    holder.signal(signal.SIGTERM)  # unlocks: the command runs
    assert holder.wait() == 0
    out = waiter.line()
    assert waiter.wait() == 0
    fields = dict(part.split("=", 1) for part in out.split())
    assert fields["key"].startswith("lk2/") and fields["key"] != key
    assert int(fields["rev"]) > 0
    assert _keys(c, "lk2/") == []  # unlocked after the command

    # a command's exit status is etcdctl's
    done = c.run_etcdctl("lock", "lk2", "--", "sh", "-c", "exit 3", endpoints=[m1])
    assert done.returncode != 0
    assert _keys(c, "lk2/") == []


def test_lock_contenders_across_members_never_overlap(
    module_cluster: Cluster, background: list[Background], tmp_path: Path
) -> None:
    c = module_cluster
    log = tmp_path / "held.log"
    script = f'echo "in $0" >> {log}; sleep 0.2; echo "out $0" >> {log}'
    contenders = [
        _start(background, c, "lock", "lk3", "--", "sh", "-c", script, str(i), endpoint=m)
        for i, m in enumerate(c.members * 2)
    ]
    for bg in contenders:
        assert bg.wait(60) == 0, bg.describe()
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * len(contenders)
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        who = enter.split()[1]
        assert (enter, leave) == (f"in {who}", f"out {who}"), lines
    assert sorted(line.split()[1] for line in lines[::2]) == [str(i) for i in range(6)]
    assert _keys(c, "lk3/") == []


def test_elect_and_observe_a_leader_change(
    module_cluster: Cluster, background: list[Background]
) -> None:
    c = module_cluster
    m0, m1, m2 = c.members
    observer = _start(background, c, "elect", "-l", "el1", endpoint=m2)
    assert observer.quiet(1.0)  # no leader yet

    first = _start(background, c, "elect", "el1", "p1", endpoint=m0)
    key1, value1 = first.lines(2)
    assert key1.startswith("el1/") and value1 == "p1"
    assert observer.lines(2) == [key1, "p1"]

    second = _start(background, c, "elect", "el1", "p2", endpoint=m1)
    assert second.quiet(1.5)  # a candidate, not the leader

    first.signal(signal.SIGTERM)  # resigns
    assert first.wait() == 0
    key2, value2 = second.lines(2)
    assert key2.startswith("el1/") and key2 != key1 and value2 == "p2"
    assert observer.lines(2) == [key2, "p2"]

    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert _keys(c, "el1/") == []
    assert observer.quiet(0.5)
    observer.signal(signal.SIGTERM)
    assert observer.wait() == 0


# -- the v3lock and v3election services --------------------------------------------------------


async def test_lock_service_contenders_across_members(module_cluster: Cluster) -> None:
    channels = [grpc.aio.insecure_channel(m.endpoint) for m in module_cluster.members]
    try:
        inside: list[bytes] = []
        held: list[bytes] = []

        async def contender(channel: grpc.aio.Channel) -> None:
            granted = await pb_grpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=30))
            stub = lock_grpc.LockStub(channel)
            resp = await stub.Lock(lockpb.LockRequest(name=b"svc", lease=granted.ID))
            assert not inside, f"{resp.key!r} entered while {inside} held the lock"
            inside.append(resp.key)
            held.append(resp.key)
            await asyncio.sleep(0.02)
            inside.pop()
            await stub.Unlock(lockpb.UnlockRequest(key=resp.key))

        async with asyncio.timeout(60):
            await asyncio.gather(*(contender(ch) for ch in channels * 7))  # 21 contenders
        assert len(set(held)) == 21
    finally:
        for ch in channels:
            await ch.close()
    assert _keys(module_cluster, "svc/") == []


async def test_election_service_across_members(module_cluster: Cluster) -> None:
    channels = [grpc.aio.insecure_channel(m.endpoint) for m in module_cluster.members]
    e0, e1, e2 = (epb_grpc.ElectionStub(ch) for ch in channels)
    try:
        l0, l1 = [
            (await pb_grpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=30))).ID
            for ch in channels[:2]
        ]
        observe = e2.Observe(epb.LeaderRequest(name=b"svc-e"))
        stream = aiter(observe)
        async with asyncio.timeout(30):
            won = await e0.Campaign(epb.CampaignRequest(name=b"svc-e", lease=l0, value=b"a"))
            seen = await anext(stream)
            assert (seen.kv.key, seen.kv.value) == (won.leader.key, b"a")
            second = asyncio.ensure_future(
                e1.Campaign(epb.CampaignRequest(name=b"svc-e", lease=l1, value=b"b"))
            )
            await asyncio.sleep(0.5)
            assert not second.done()
            await e1.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"a2"))
            assert (await anext(stream)).kv.value == b"a2"
            await e2.Resign(epb.ResignRequest(leader=won.leader))
            won2 = await second
            seen = await anext(stream)
            assert (seen.kv.key, seen.kv.value) == (won2.leader.key, b"b")
            leader = await e0.Leader(epb.LeaderRequest(name=b"svc-e"))
            assert leader.kv.key == won2.leader.key
            await e0.Resign(epb.ResignRequest(leader=won2.leader))
        observe.cancel()
    finally:
        for ch in channels:
            await ch.close()
