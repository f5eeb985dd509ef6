"""Locks and elections through etcd's v3lock / v3election services."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    KeyValue,
    NotElectionLeaderError,
)


def test_lock_mutual_exclusion_threads(endpoints: list[str], ns: str) -> None:
    """Contenders in threads: never two holders at once, and a read-modify-write of a key
    inside the lock (a get then a put, no transaction) loses no update."""
    name, counter = ns + "lock", ns + "counter"
    contenders, rounds = 4, 4
    inside = 0
    max_inside = 0
    guard = threading.Lock()
    errors: list[BaseException] = []
    with Client(endpoints) as c:
        c.put(counter, "0")

        def contender() -> None:
            nonlocal inside, max_inside
            try:
                for _ in range(rounds):
                    with c.lock(name, ttl=5) as key:
                        assert key.startswith(name.encode() + b"/")
                        with guard:
                            inside += 1
                            max_inside = max(max_inside, inside)
                        value = int(c.get(counter).value or b"0")
                        time.sleep(0.01)
                        c.put(counter, str(value + 1))
                        with guard:
                            inside -= 1
            except BaseException as e:
                errors.append(e)

        ts = [threading.Thread(target=contender) for _ in range(contenders)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors
        assert max_inside == 1
        assert c.get(counter).value == str(contenders * rounds).encode()
        assert c.get(name, prefix=True).count == 0  # every lock key released


def test_lock_timeout_and_lease_cleanup(client: Client, ns: str) -> None:
    name = ns + "lock"
    held = client.lock(name, ttl=10)
    try:
        leases_before = set(client.leases())
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.lock(name, ttl=10, timeout=0.5)
        assert time.monotonic() - t0 < 3
        # the waiter's own lease was revoked, and its queue key with it
        assert set(client.leases()) <= leases_before
        assert [kv.key for kv in client.get(name, prefix=True)] == [held.key]
        assert held.lost is not None and not held.lost.is_set()
    finally:
        held.release()
    assert held.lease is not None and held.lease.id not in client.leases()
    # a caller's own lease is used as is and survives the release
    lease = client.grant(30)
    with client.lock(name, lease=lease.id) as key:
        assert key == name.encode() + b"/" + f"{lease.id:x}".encode()
    assert lease.id in client.leases()
    client.revoke(lease.id)


async def test_lock_mutual_exclusion_tasks(aclient: AsyncClient, ns: str) -> None:
    name = ns + "alock"
    inside = 0
    max_inside = 0
    order: list[int] = []

    async def contender(i: int) -> None:
        nonlocal inside, max_inside
        for _ in range(3):
            async with aclient.lock(name, ttl=5):
                inside += 1
                max_inside = max(max_inside, inside)
                order.append(i)
                await asyncio.sleep(0.01)
                inside -= 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(contender(i) for i in range(4)))
    assert max_inside == 1 and len(order) == 12
    held = await aclient.lock(name)
    assert held.key.startswith(name.encode())
    await held.release()
    assert (await aclient.get(name, prefix=True)).count == 0


def test_election_campaign_observe_resign(endpoints: list[str], ns: str) -> None:
    name = ns + "election"
    with Client(endpoints) as c:
        assert c.leader(name) is None
        observed: list[KeyValue] = []
        obs = c.observe(name)
        done = threading.Event()

        def observer() -> None:
            for kv in obs:
                observed.append(kv)
                if len(observed) == 3:
                    done.set()

        threading.Thread(target=observer, daemon=True).start()
        first = c.campaign(name, "alpha", ttl=5)
        leader = c.leader(name)
        assert leader is not None and leader.value == b"alpha"
        assert leader.key == first.leader_key.key

        # a second candidate blocks until the first resigns
        second_won = threading.Event()
        second: list[object] = []

        def candidate() -> None:
            second.append(c.campaign(name, "beta", ttl=5))
            second_won.set()

        threading.Thread(target=candidate, daemon=True).start()
        assert not second_won.wait(0.5)
        first.proclaim("alpha-2")
        leader = c.leader(name)
        assert leader is not None and leader.value == b"alpha-2"
        first.resign()
        assert second_won.wait(10)
        with pytest.raises(NotElectionLeaderError):
            c.proclaim(first.leader_key, "stale")
        leader = c.leader(name)
        assert leader is not None and leader.value == b"beta"
        assert done.wait(10), observed
        obs.cancel()
        assert [kv.value for kv in observed] == [b"alpha", b"alpha-2", b"beta"]
        with second[0]:  # type: ignore[attr-defined]
            pass
        assert c.leader(name) is None


async def test_async_election(aclient: AsyncClient, ns: str) -> None:
    name = ns + "election"
    seen: list[bytes] = []

    async def watch_leaders() -> None:
        async for kv in aclient.observe(name):
            seen.append(kv.value)
            if len(seen) == 2:
                return

    watcher = asyncio.ensure_future(watch_leaders())
    async with aclient.campaign(name, "one", ttl=5) as lead:
        assert (await aclient.leader(name)) is not None
        await lead.proclaim("two")
        await asyncio.wait_for(watcher, 10)
    assert seen == [b"one", b"two"]
    assert await aclient.leader(name) is None
    assert lead.lease is not None and lead.lease.id not in await aclient.leases()
