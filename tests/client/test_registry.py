"""Service registration and discovery (cluster.registry), in process and through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from cluster.client import AsyncClient, Client
from cluster.registry import (
    AsyncRegistry,
    Instance,
    Registry,
    ServiceEvent,
    ServiceWatch,
    discover,
    register,
    watch_service,
)
from tests.client.servers import ROOT


def next_events(w: ServiceWatch, n: int, timeout: float = 10) -> list[ServiceEvent]:
    timer = threading.Timer(timeout, w.cancel)
    timer.start()
    out: list[ServiceEvent] = []
    try:
        for ev in w:
            out.append(ev)
            if len(out) == n:
                break
    finally:
        timer.cancel()
    assert len(out) == n, f"only {out} before the timeout"
    return out


def wait_until(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_register_discover_watch(client: Client, ns: str) -> None:
    prefix = ns + "services"
    reg = Registry(client, prefix)
    with reg.watch_service("api") as changes:
        with reg.register("api", "api-1", "10.0.0.1", 8080, {"zone": "a"}, ttl=5) as r1:
            r2 = register(client, "api", "api-2", "10.0.0.2", 8081, ttl=5, prefix=prefix)
            register(client, "db", "db-1", "10.0.0.9", 5432, ttl=5, prefix=prefix).deregister()
            found = discover(client, "api", prefix=prefix)
            assert [(i.instance_id, i.endpoint, i.metadata) for i in found] == [
                ("api-1", "10.0.0.1:8080", {"zone": "a"}),
                ("api-2", "10.0.0.2:8081", {}),
            ]
            assert found[0].lease == r1.lease.id if r1.lease else False
            assert found[0].registered_at.endswith("Z")
            assert r1.key == f"{prefix}/api/api-1"
            raw = json.loads(client.get(r1.key).value or b"{}")
            assert set(raw) == {"address", "port", "metadata", "registered_at"}
            assert set(reg.services()) == {"api"}
            r2.deregister()
        assert discover(client, "api", prefix=prefix) == []
        events = next_events(changes, 4)
    assert [(e.type, e.instance.instance_id) for e in events] == [
        ("added", "api-1"), ("added", "api-2"), ("removed", "api-2"), ("removed", "api-1"),
    ]  # fmt: skip
    assert events[2].instance.endpoint == "10.0.0.2:8081"  # the last known instance
    assert events[0].revision < events[1].revision < events[2].revision


def test_watch_service_initial_and_updates(client: Client, ns: str) -> None:
    prefix = ns + "services"
    with (
        register(client, "web", "w1", "h1", 1, ttl=5, prefix=prefix),
        watch_service(client, "web", prefix=prefix, initial=True) as changes,
    ):
        client.put(
            f"{prefix}/web/w2",
            Instance("web", "w2", "h2", 2, {"v": 1}, "2026-01-01T00:00:00Z").to_json(),
        )
        client.put(
            f"{prefix}/web/w2",
            Instance("web", "w2", "h2", 3, {"v": 2}, "2026-01-01T00:00:00Z").to_json(),
        )
        client.put(f"{prefix}/web/junk", "not json")  # ignored
        events = next_events(changes, 3)
    assert [(e.type, e.instance.instance_id, e.instance.port) for e in events] == [
        ("added", "w1", 1), ("added", "w2", 2), ("updated", "w2", 3),
    ]  # fmt: skip


def test_reregisters_after_lease_loss(client: Client, ns: str) -> None:
    prefix = ns + "services"
    with register(client, "api", "a1", "h", 1, ttl=3, prefix=prefix) as reg:
        assert reg.lease is not None
        first = reg.lease.id
        client.revoke(first)  # as if the lease had expired during a partition
        assert discover(client, "api", prefix=prefix) == []
        assert wait_until(lambda: discover(client, "api", prefix=prefix), 5)
        found = discover(client, "api", prefix=prefix)
        assert found[0].lease != first and reg.registrations == 2 and reg.alive
    assert discover(client, "api", prefix=prefix) == []


async def test_async_registry(aclient: AsyncClient, ns: str) -> None:
    reg = AsyncRegistry(aclient, ns + "services")
    async with reg.watch_service("api") as changes:
        r = await reg.register("api", "x1", "h", 9, {"k": "v"}, ttl=3)
        assert [i.instance_id for i in await reg.discover("api")] == ["x1"]
        assert set(await reg.services()) == {"api"}
        await r.deregister()
        assert await reg.discover("api") == []
        got = []
        async with asyncio.timeout(10):
            async for ev in changes:
                got.append((ev.type, ev.instance.instance_id))
                if len(got) == 2:
                    break
    assert got == [("added", "x1"), ("removed", "x1")]


@contextmanager
def cli_register(endpoints: list[str], prefix: str, ttl: int) -> Iterator[subprocess.Popen[str]]:
    argv = [
        sys.executable, "-m", "cluster.registry", "--endpoints", ",".join(endpoints),
        "--prefix", prefix, "register", "api", "cli-1", "--address", "10.1.1.1",
        "--port", "7000", "--meta", "role=worker", "--ttl", str(ttl),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_json_line(stream: IO[str] | None, timeout: float = 15) -> dict[str, object]:
    assert stream is not None
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box and box[0], "no output from the CLI"
    out: dict[str, object] = json.loads(box[0])
    return out


def test_cli_killed_instance_disappears_within_ttl(endpoints: list[str], ns: str) -> None:
    prefix, ttl = ns + "services", 2
    with Client(endpoints) as c, cli_register(endpoints, prefix, ttl) as proc:
        hello = read_json_line(proc.stdout)
        assert hello["registered"] == f"{prefix}/api/cli-1" and hello["pid"] == proc.pid
        found = discover(c, "api", prefix=prefix)
        assert [(i.endpoint, i.metadata) for i in found] == [("10.1.1.1:7000", {"role": "worker"})]
        listed = subprocess.run(
            [sys.executable, "-m", "cluster.registry", "--endpoints", ",".join(endpoints),
             "--prefix", prefix, "list", "api", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(listed.stdout)["instance_id"] == "cli-1"
        with watch_service(c, "api", prefix=prefix) as changes:
            time.sleep(ttl)  # outlives its TTL while alive: the keep-alive works
            assert discover(c, "api", prefix=prefix)
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            proc.wait(10)
            assert discover(c, "api", prefix=prefix), "gone before the lease expired"
            removed = next_events(changes, 1, timeout=ttl + 3)[0]
            took = time.monotonic() - killed
        assert removed.type == "removed" and removed.instance.instance_id == "cli-1"
        assert took <= ttl + 1.0, f"took {took:.2f}s with a {ttl}s TTL"
        assert discover(c, "api", prefix=prefix) == []


def test_cli_ctrl_c_deregisters(endpoints: list[str], ns: str) -> None:
    prefix = ns + "services"
    with Client(endpoints) as c, cli_register(endpoints, prefix, 30) as proc:
        read_json_line(proc.stdout)
        assert discover(c, "api", prefix=prefix)
        os.kill(proc.pid, signal.SIGINT)
        assert read_json_line(proc.stdout) == {"deregistered": f"{prefix}/api/cli-1"}
        assert proc.wait(10) == 0
        assert discover(c, "api", prefix=prefix) == []  # at once, not after 30 s


def test_registry_rejects_bad_names(client: Client) -> None:
    with pytest.raises(ValueError):
        Registry(client).register("a/b", "x", "h", 1)
    with pytest.raises(ValueError):
        Registry(client).register("svc", "", "h", 1)
    with pytest.raises(ValueError):
        Registry(client, "/")
