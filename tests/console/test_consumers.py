"""The websocket consumers (console/consumers.py) through the whole ASGI stack: origin check,
session auth, routing; against a real member of ours, a real etcd, and an in-process member
whose watch hub shows that a socket's etcd watches end with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, User
from django.test import Client as DjangoClient
from pytest_django import Settings

from cluster.client import Op
from cluster.registry import AsyncRegistry, Instance
from console import etcd, live
from console.asgi import application
from console.consumers import CLOSE_UNAUTHENTICATED
from console.roles import EDITORS, VIEWERS
from tests.unit.server.live import LiveMember, start_member

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = b"http://127.0.0.1:8000"


@pytest.fixture(autouse=True)
def roles(transactional_db: None) -> None:
    """The role groups (a transactional test's flush drops what the migration made)."""
    for name in (VIEWERS, EDITORS):
        Group.objects.get_or_create(name=name)


async def session_cookie(user: User) -> bytes:
    def login() -> str:
        c = DjangoClient()
        c.force_login(user)
        return str(c.cookies["sessionid"].value)

    return f"sessionid={await database_sync_to_async(login)()}".encode()


async def connect(path: str, user: User | None, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1:8000")]
    if user is not None:
        headers.append((b"cookie", await session_cookie(user)))
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    return comm


async def receive(comm: WebsocketCommunicator, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next message of type ``kind`` (others before it are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg: dict[str, Any] = await comm.receive_json_from(timeout=timeout)
            if msg["type"] == kind:
                return msg


async def events(comm: WebsocketCommunicator, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next ``n`` watch events (across ``events`` messages)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got += (await receive(comm, "events", timeout))["events"]
    assert len(got) == n, got
    return got


async def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def summary(evs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["key"], e["value"]) for e in evs]


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/watch/", "/ws/services/", "/ws/cluster/"])
async def test_anonymous_sockets_are_closed_with_4401(path: str) -> None:
    comm = await connect(path, None)
    assert await comm.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": CLOSE_UNAUTHENTICATED,
    }
    await comm.send_json_to({"type": "start", "watch": 1, "key": "k"})
    assert await comm.receive_nothing(timeout=0.2)  # nothing is served
    await comm.send_input({"type": "websocket.disconnect", "code": CLOSE_UNAUTHENTICATED})
    await comm.wait()


async def test_another_origin_is_refused(viewer: User) -> None:
    comm = WebsocketCommunicator(
        application,
        "/ws/watch/",
        headers=[(b"origin", b"http://evil.example"), (b"cookie", await session_cookie(viewer))],
    )
    connected, _ = await comm.connect(timeout=5)
    assert not connected


# --- watch ----------------------------------------------------------------------------------


async def test_watch_streams_puts_and_deletes_with_previous_values(
    console_cluster: list[str], viewer: User, ns: str
) -> None:
    comm = await connect("/ws/watch/", viewer)
    await comm.send_json_to(
        {"type": "start", "watch": 7, "key": ns, "prefix": True, "prev_kv": True}
    )
    started = await receive(comm, "started")
    c = etcd.async_client()
    first = (await c.put(f"{ns}a", "1")).revision
    assert started["watch"] == 7 and started["start_revision"] == first  # from now on
    await c.put(f"{ns}a", "2", lease=(await c.grant(60)).id)
    await c.put(f"{ns}bin", b"\xff\x00")
    await c.delete(f"{ns}a")
    evs = await events(comm, 4)
    assert summary(evs) == [
        ("PUT", f"{ns}a", "1"),
        ("PUT", f"{ns}a", "2"),
        ("PUT", f"{ns}bin", "/wA="),
        ("DELETE", f"{ns}a", ""),
    ]
    assert [e["rev"] for e in evs] == list(range(first, first + 4))
    assert evs[1]["prev"]["value"] == "1" and evs[1]["lease"]  # lease as hex
    assert evs[2]["value_enc"] == "base64"
    assert evs[3]["prev"]["value"] == "2" and evs[3]["prev"]["lease"] == evs[1]["lease"]
    await comm.disconnect()


async def test_watch_filters_and_a_single_key(
    console_cluster: list[str], viewer: User, ns: str
) -> None:
    comm = await connect("/ws/watch/", viewer)
    c = etcd.async_client()
    await comm.send_json_to({"type": "start", "watch": 1, "key": f"{ns}x", "filter": "deletes"})
    await receive(comm, "started")
    await c.put(f"{ns}x", "1")
    await c.put(f"{ns}y", "1")  # another key
    await c.delete(f"{ns}x")
    assert summary(await events(comm, 1)) == [("DELETE", f"{ns}x", "")]
    # a new start replaces the watch; "puts only"
    await comm.send_json_to(
        {"type": "start", "watch": 2, "key": ns, "prefix": True, "filter": "puts"}
    )
    await receive(comm, "started")
    await c.delete(f"{ns}y")
    await c.put(f"{ns}z", "3")
    evs = await events(comm, 1)
    assert summary(evs) == [("PUT", f"{ns}z", "3")]
    await comm.send_json_to({"type": "start", "watch": 3, "key": "", "prefix": False})
    err = await receive(comm, "error")
    assert err["watch"] == 3 and "give a key" in err["message"]
    await comm.disconnect()


async def test_watch_resumes_from_a_revision_without_gaps_or_repeats(
    console_cluster: list[str], viewer: User, ns: str
) -> None:
    c = etcd.async_client()
    revs = [(await c.put(f"{ns}k{i}", str(i))).revision for i in range(5)]
    comm = await connect("/ws/watch/", viewer)
    # as a page does after a dropped socket: start at its last revision + 1
    await comm.send_json_to(
        {"type": "start", "watch": 1, "key": ns, "prefix": True, "start_revision": revs[2] + 1}
    )
    started = await receive(comm, "started")
    assert started["start_revision"] == revs[3]
    await c.txn(success=[Op.put(f"{ns}t1", "a"), Op.put(f"{ns}t2", "b")])  # one revision
    evs = await events(comm, 4)
    assert [e["key"] for e in evs] == [f"{ns}k3", f"{ns}k4", f"{ns}t1", f"{ns}t2"]
    assert evs[2]["rev"] == evs[3]["rev"] == revs[4] + 1
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


async def test_watch_from_a_compacted_revision_says_the_earliest_available(
    console_cluster: list[str], viewer: User, ns: str
) -> None:
    c = etcd.async_client()
    old = (await c.put(f"{ns}a", "1")).revision
    now = (await c.put(f"{ns}a", "2")).revision
    await c.compact(now)
    comm = await connect("/ws/watch/", viewer)
    await comm.send_json_to(
        {"type": "start", "watch": 4, "key": ns, "prefix": True, "start_revision": old}
    )
    msg = await receive(comm, "compacted")
    assert msg["watch"] == 4 and msg["requested"] == old and msg["compact_revision"] == now
    assert f"earliest revision still available is {now}" in msg["message"]
    await comm.send_json_to(
        {"type": "start", "watch": 5, "key": ns, "prefix": True, "start_revision": now}
    )
    assert (await receive(comm, "started"))["start_revision"] == now
    assert summary(await events(comm, 1)) == [("PUT", f"{ns}a", "2")]
    await comm.disconnect()


async def test_watch_against_a_real_etcd(console_etcd: list[str], viewer: User, ns: str) -> None:
    c = etcd.async_client()
    old = (await c.put(f"{ns}a", "1")).revision
    comm = await connect("/ws/watch/", viewer)
    await comm.send_json_to(
        {"type": "start", "watch": 1, "key": ns, "prefix": True, "start_revision": old,
         "prev_kv": True}
    )  # fmt: skip
    await receive(comm, "started")
    await c.put(f"{ns}a", "2")
    evs = await events(comm, 2)
    assert summary(evs) == [("PUT", f"{ns}a", "1"), ("PUT", f"{ns}a", "2")]
    assert evs[1]["prev"]["value"] == "1"
    now = (await c.put(f"{ns}b", "x")).revision
    await c.compact(now)
    await comm.send_json_to(
        {"type": "start", "watch": 2, "key": ns, "prefix": True, "start_revision": old}
    )
    assert (await receive(comm, "compacted"))["compact_revision"] == now
    await comm.disconnect()


@pytest.fixture
async def member(tmp_path: Path, settings: Settings) -> AsyncIterator[LiveMember]:
    """A member in this event loop, so a test can count its watchers; the console uses it."""
    lm = await start_member(tmp_path / "m0")
    try:
        await lm.wait_leader()
        settings.CONSOLE_ETCD_ENDPOINTS = [lm.endpoint]
        etcd.reset()
        yield lm
    finally:
        etcd.reset()
        await lm.stop()


async def test_a_watch_ends_with_its_socket(member: LiveMember, viewer: User) -> None:
    hub = member.member.hub
    comm = await connect("/ws/watch/", viewer)
    await comm.send_json_to({"type": "start", "watch": 1, "key": "a", "prefix": True})
    await receive(comm, "started")
    assert hub.watcher_count == 1
    await comm.send_json_to({"type": "start", "watch": 2, "key": "b"})  # replaces it
    await receive(comm, "started")
    await eventually(lambda: hub.watcher_count == 1)
    await comm.send_json_to({"type": "stop"})
    assert (await receive(comm, "stopped"))["watch"] == 2
    await eventually(lambda: hub.watcher_count == 0)

    await comm.send_json_to({"type": "start", "watch": 3, "key": "c"})
    await receive(comm, "started")
    assert hub.watcher_count == 1
    await comm.disconnect()  # the page goes away
    await eventually(lambda: hub.watcher_count == 0)


# --- services -------------------------------------------------------------------------------


@pytest.fixture
def registry(settings: Settings, ns: str) -> str:
    """A registry prefix of this test's own; TTLs read five times a second."""
    settings.CONSOLE_REGISTRY_PREFIX = f"{ns}services"
    settings.CONSOLE_SERVICES_TTL_INTERVAL = 0.2
    return str(settings.CONSOLE_REGISTRY_PREFIX)


async def change(comm: WebsocketCommunicator, timeout: float = 10) -> dict[str, Any]:
    return await receive(comm, "change", timeout)


async def test_services_live_changes(
    console_cluster: list[str], viewer: User, editor: User, registry: str
) -> None:
    c = etcd.async_client()
    reg = AsyncRegistry(c, registry)
    kept = await c.lease(10)  # kept alive by this test
    api0 = Instance("api", "api-0", "10.0.0.1", 80, {"zone": "a"}, "2026-01-01T00:00:00.000Z")
    await c.put(api0.key(registry), api0.to_json(), lease=kept.id)
    comm = await connect("/ws/services/", viewer)
    snap = await receive(comm, "snapshot")
    assert [(i["service"], i["id"], i["endpoint"]) for i in snap["instances"]] == [
        ("api", "api-0", "10.0.0.1:80")
    ]
    assert 0 < snap["instances"][0]["ttl"] <= 10 and snap["instances"][0]["granted_ttl"] == 10
    api = await connect("/ws/services/?service=api", viewer)  # one service's page
    assert len((await receive(api, "snapshot"))["instances"]) == 1

    # a process registers, then leaves gracefully (revokes its lease): deregistered
    one = await reg.register("web", "web-1", "10.0.0.2", 8080, {"v": "2"}, ttl=10)
    assert one.lease is not None
    msg = await change(comm)
    assert (msg["kind"], msg["instance"]["id"], msg["instance"]["metadata"]) == (
        "registered", "web-1", {"v": "2"},
    )  # fmt: skip
    assert msg["instance"]["lease"] == f"{one.lease.id:x}" and msg["instance"]["ttl"] > 0
    ttl = await receive(comm, "ttl")
    assert ttl["leases"][f"{one.lease.id:x}"] > 0
    await one.deregister()
    msg = await change(comm)
    assert (msg["kind"], msg["instance"]["id"], msg["by"]) == ("deregistered", "web-1", "")

    # a lease nobody keeps alive runs out: expired
    lease = await c.grant(2)
    inst = Instance("web", "web-2", "10.0.0.3", 8081, {}, "2026-01-01T00:00:00.000Z")
    await c.put(inst.key(registry), inst.to_json(), lease=lease.id)
    assert (await change(comm))["kind"] == "registered"
    msg = await change(comm, timeout=15)
    assert (msg["kind"], msg["instance"]["id"]) == ("expired", "web-2")

    # a console user revokes the lease (as the deregister view does): named
    live.note_console_revoke(kept.id, "ed")
    await kept.revoke()
    msg = await change(comm)
    assert (msg["kind"], msg["instance"]["id"], msg["by"]) == ("deregistered", "api-0", "ed")
    # the api page saw only its own service
    msg = await change(api)
    assert (msg["kind"], msg["instance"]["id"]) == ("deregistered", "api-0")
    await api.disconnect()

    # a page opened now gets the recent changes, oldest first
    late = await connect("/ws/services/?service=web", viewer)
    snap = await receive(late, "snapshot")
    assert snap["instances"] == []
    assert [(r["kind"], r["instance"]["id"]) for r in snap["recent"]] == [
        ("registered", "web-1"), ("deregistered", "web-1"),
        ("registered", "web-2"), ("expired", "web-2"),
    ]  # fmt: skip
    for page in (late, comm):
        await page.disconnect()


async def test_the_registry_watch_ends_after_the_last_page(
    member: LiveMember, viewer: User, settings: Settings
) -> None:
    settings.CONSOLE_SERVICES_LINGER = 0.2
    hub = member.member.hub
    first = await connect("/ws/services/", viewer)
    await receive(first, "snapshot")
    second = await connect("/ws/services/?service=x", viewer)
    await receive(second, "snapshot")
    assert hub.watcher_count == 1  # one watch for the whole console process
    await first.disconnect()
    await asyncio.sleep(0.4)
    assert hub.watcher_count == 1  # the other page still follows it
    await second.disconnect()
    await eventually(lambda: hub.watcher_count == 0)
    again = await connect("/ws/services/", viewer)  # starts again
    await receive(again, "snapshot")
    assert hub.watcher_count == 1
    await again.disconnect()
    await eventually(lambda: hub.watcher_count == 0)


# --- cluster --------------------------------------------------------------------------------


async def test_cluster_samples_every_interval(
    console_cluster: list[str], viewer: User, settings: Settings, ns: str
) -> None:
    settings.CONSOLE_DASHBOARD_INTERVAL = 0.2
    comm = await connect("/ws/cluster/", viewer)
    first = await receive(comm, "sample")
    assert first["error"] == "" and first["writes_per_s"] is None
    (m,) = first["members"]
    assert m["is_leader"] and m["healthy"] and first["leader"] == m["id"] == first["leader"]
    assert m["client_urls"] == [f"http://{console_cluster[0]}"]
    assert m["raft_index"] >= m["applied_index"] > 0 and m["commit_lag"] == 0
    assert m["db_size"] >= m["db_size_in_use"] > 0 and m["version"]
    c = etcd.async_client()
    for i in range(5):
        await c.put(f"{ns}k{i}", "v")
    second = await receive(comm, "sample")
    later = second
    while later["revision"] < first["revision"] + 5:
        later = await receive(comm, "sample")
    assert later["writes_per_s"] is not None and later["writes_per_s"] >= 0
    assert not later["leader_changed"]
    assert second["time"] - first["time"] == pytest.approx(0.2, abs=0.15)
    await comm.disconnect()


def test_the_watch_page(viewer: User, console_cluster: list[str]) -> None:
    assert DjangoClient().get("/watch/").status_code == 302  # login first
    c = DjangoClient()
    c.force_login(viewer)
    r = c.get("/watch/?key=/cfg/&prefix=1&rev=5&filter=deletes&prev_kv=1")
    assert r.status_code == 200
    assert r.context["form"] == {
        "key": "/cfg/", "prefix": True, "rev": "5", "filter": "deletes", "prev_kv": True,
    }  # fmt: skip
    config = r.context["config"]
    assert config["ws"] == "/ws/watch/" and config["autostart"] and config["max_rows"] == 1000
    body = r.content.decode()
    assert 'id="watch-config" type="application/json"' in body
    assert "console/watch.js" in body and "<script>" not in body  # no inline scripts (CSP)
    for link in ('href="/watch/"', 'href="/services/"', 'href="/cluster/"'):
        assert link in body
    assert c.get("/watch/?filter=bogus").context["form"]["filter"] == "all"
