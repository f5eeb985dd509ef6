"""Failover: calls move to another endpoint; watches and keep-alives survive a killed member."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.bench.ports import free_ports
from cluster.client import (
    AsyncClient,
    Client,
    ConnectionFailedError,
    EtcdError,
    Event,
    Watch,
)
from tests.client.servers import Servers

Seen = list[tuple[str, bytes, int, bytes]]


def describe(events: list[Event]) -> Seen:
    return [(e.type.value, e.key, e.revision, e.kv.value) for e in events]


def leader_first(servers: Servers, victim: str) -> list[str]:
    """Endpoints with the member to kill first (so clients start on it)."""
    with Client(servers.endpoints) as c:
        leader = next(ep for ep in servers.endpoints if c.status(ep).is_leader)
    eps = servers.endpoints
    target = leader if victim == "leader" else next(ep for ep in eps if ep != leader)
    return [target, *[ep for ep in eps if ep != target]]


def writer(
    endpoints: list[str], ns: str, n: int, wrote: threading.Event, half: threading.Event
) -> None:
    """Write ``n`` keys through ``endpoints``, retrying what fails during an election (a put
    caught in flight by the leader's death is cut short by a 1 s deadline and written again)."""
    with Client(endpoints, timeout=1, retry_timeout=10) as c:
        for i in range(n):
            while True:
                try:
                    c.put(f"{ns}k{i:03d}", str(i))
                    break
                except EtcdError:  # an ambiguous failure: writing again is fine here
                    time.sleep(0.05)
            if i == n // 3:
                half.set()
            time.sleep(0.005)
    wrote.set()


def drain(w: Watch, until_revision: int, timeout: float = 20) -> list[Event]:
    timer = threading.Timer(timeout, w.cancel)
    timer.start()
    out: list[Event] = []
    try:
        while w.next_revision <= until_revision:
            out.extend(next(w).events)
    except StopIteration:
        pass
    finally:
        timer.cancel()
    return out


@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_watch_resumes_after_its_member_is_killed(cluster3: Servers, ns: str, victim: str) -> None:
    eps = leader_first(cluster3, victim)
    n = 90
    with Client(eps) as wc:
        w = wc.watch(ns, prefix=True)
        assert w.endpoint == eps[0]
        start = w.next_revision
        wrote, half = threading.Event(), threading.Event()
        t = threading.Thread(target=writer, args=(eps[1:], ns, n, wrote, half), daemon=True)
        t.start()
        seen: list[Event] = []
        assert half.wait(20)
        cluster3.kill(eps[0])
        assert wrote.wait(30), "the writer did not finish"
        with Client(eps[1:]) as c:
            final = c.get("any").revision
            seen = drain(w, final)
            assert w.endpoint != eps[0]
            w.cancel()
            # the truth: every change since the watch began, from a fresh watch on a survivor
            with c.watch(ns, prefix=True, start_revision=start) as ref:
                truth = drain(ref, final)
    assert len(truth) >= n
    assert describe(seen) == describe(truth)  # nothing missed, nothing twice, same order
    assert {e.key for e in seen} == {f"{ns}k{i:03d}".encode() for i in range(n)}


async def test_async_watch_resumes_after_its_member_is_killed(cluster3: Servers, ns: str) -> None:
    eps = leader_first(cluster3, "follower")
    async with AsyncClient(eps) as ac, AsyncClient(eps[1:]) as writer_client:
        w = await ac.watch(ns, prefix=True)
        start = w.next_revision
        for i in range(20):
            await writer_client.put(f"{ns}a{i}", "x")
        cluster3.kill(eps[0])
        for i in range(20):
            await writer_client.put(f"{ns}b{i}", "y")
        final = (await writer_client.get("any")).revision
        seen: list[Event] = []
        async with asyncio.timeout(20):
            async for batch in w:
                seen.extend(batch.events)
                if w.next_revision > final:
                    break
        assert w.endpoint != eps[0]
        w.cancel()
    assert [e.revision for e in seen] == list(range(start, final + 1))
    assert len({e.key for e in seen}) == 40


def test_keep_alive_and_lock_survive_member_kill(cluster3: Servers, ns: str) -> None:
    eps = leader_first(cluster3, "leader")
    with Client(eps, retry_timeout=10) as c:
        lost = threading.Event()
        lease = c.lease(2, on_lost=lambda _lease: lost.set())
        c.put(ns + "k", "v", lease=lease)
        held = c.lock(ns + "lock", ttl=2)
        cluster3.kill(eps[0])
        time.sleep(3.5)  # well past both TTLs: kept alive through the surviving members
        assert not lost.is_set() and lease.alive
        assert held.lost is not None and not held.lost.is_set()
        assert c.get(ns + "k").value == b"v"
        assert c.current_endpoint != eps[0]
        with pytest.raises(EtcdError):  # a second lock on the name is still refused
            c.lock(ns + "lock", ttl=2, timeout=0.5)
        held.release()
        lease.revoke()
        assert c.get(ns + "k").kv is None


def test_unary_calls_skip_dead_endpoints(endpoints: list[str], ns: str) -> None:
    dead = [f"127.0.0.1:{p}" for p in free_ports(2)]
    with Client([*dead, *endpoints]) as c:
        # a write is retried only because the connection was refused: nothing was sent
        assert c.put(ns + "k", "v").revision > 0
        assert c.get(ns + "k").value == b"v"
        assert c.current_endpoint == endpoints[0]
    with Client(dead, retry_timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailedError) as e:
            c.get(ns + "k")
        assert time.monotonic() - t0 < 3
        assert e.value.endpoint in dead
