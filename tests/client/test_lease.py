"""Leases: grant, time-to-live, revoke, keep-alive (manual and automatic), expiry, loss."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from cluster.client import (
    AsyncClient,
    AsyncLease,
    Client,
    Lease,
    LeaseExistsError,
    LeaseNotFoundError,
)


def wait_until(pred: object, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(pred())  # type: ignore[operator]


def test_grant_ttl_revoke(client: Client, ns: str) -> None:
    g = client.grant(30)
    assert g.ttl == 30 and g.id > 0
    client.put(ns + "a", "1", lease=g.id)
    client.put(ns + "b", "2", lease=g.id)
    ttl = client.time_to_live(g.id, keys=True)
    assert ttl.granted_ttl == 30 and 0 < ttl.ttl <= 30
    assert sorted(ttl.keys) == [(ns + "a").encode(), (ns + "b").encode()]
    assert client.time_to_live(g.id).keys == []
    assert g.id in client.leases()
    assert client.keep_alive_once(g.id).ttl == 30
    client.revoke(g.id)
    assert client.get(ns, prefix=True).count == 0
    assert g.id not in client.leases()
    assert client.time_to_live(g.id).ttl == -1
    with pytest.raises(LeaseNotFoundError) as e:
        client.revoke(g.id)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(LeaseNotFoundError):
        client.keep_alive_once(g.id)


def test_grant_with_id(client: Client) -> None:
    wanted = 0x5EED_0000 + (time.time_ns() % 100_000)
    g = client.grant(10, id=wanted)
    assert g.id == wanted
    with pytest.raises(LeaseExistsError):
        client.grant(10, id=wanted)
    client.revoke(wanted)


def test_expiry_deletes_key_and_keep_alive_keeps_it(client: Client, ns: str) -> None:
    with client.lease(1) as kept:
        loose = client.grant(1)
        client.put(ns + "kept", "1", lease=kept)
        client.put(ns + "loose", "1", lease=loose.id)
        # the loose lease expires within its TTL (plus the leader's check interval)
        assert wait_until(lambda: client.get(ns + "loose").kv is None, 4)
        time.sleep(kept.ttl + 0.5)  # beyond the TTL: still there thanks to the keep-alive
        assert client.get(ns + "kept").value == b"1"
        assert kept.alive and not kept.lost.is_set()
        assert client.time_to_live(kept).ttl >= 0
    # leaving the block revoked it
    assert client.get(ns + "kept").kv is None
    assert kept.id not in client.leases()


def test_lease_loss_is_reported(client: Client, ns: str) -> None:
    lost: list[Lease] = []
    called = threading.Event()

    def on_lost(lease: Lease) -> None:
        lost.append(lease)
        called.set()

    lease = client.lease(3, on_lost=on_lost)
    client.put(ns + "k", "v", lease=lease)
    client.revoke(lease.id)  # behind the keeper's back
    assert called.wait(5), "on_lost not called"
    assert lost == [lease] and lease.lost.is_set() and not lease.alive
    assert lease.lost_reason and "revoked" in lease.lost_reason
    lease.revoke()  # quiet although it is gone already


def test_keep_alive_existing_lease(client: Client, ns: str) -> None:
    g = client.grant(1)
    client.put(ns + "k", "v", lease=g.id)
    kept = client.keep_alive(g.id)
    try:
        time.sleep(g.ttl + 0.6)
        assert client.get(ns + "k").value == b"v"
        assert kept.ttl == g.ttl
    finally:
        kept.close()
    assert wait_until(lambda: client.get(ns + "k").kv is None, 4)
    assert not kept.lost.is_set()  # stopped on purpose, not lost


async def test_async_lease(aclient: AsyncClient, ns: str) -> None:
    lost = asyncio.Event()

    async def on_lost(lease: AsyncLease) -> None:
        lost.set()

    async with aclient.lease(1) as kept:
        await aclient.put(ns + "k", "v", lease=kept)
        await asyncio.sleep(kept.ttl + 0.6)
        assert (await aclient.get(ns + "k")).value == b"v"
        assert kept.alive
    assert (await aclient.get(ns + "k")).kv is None

    other = await aclient.lease(5, on_lost=on_lost)
    await aclient.revoke(other.id)
    await asyncio.wait_for(lost.wait(), 5)
    assert other.lost.is_set() and not other.alive
    await other.revoke()
    g = await aclient.grant(20)
    assert g.id in await aclient.leases()
    assert (await aclient.time_to_live(g.id)).granted_ttl == 20
    assert (await aclient.keep_alive_once(g.id)).ttl == 20
    await aclient.revoke(g.id)
    with pytest.raises(LeaseNotFoundError):
        await aclient.keep_alive_once(g.id)
