"""The HTTP side of 3 real member processes: etcd's JSON gateway, health, metrics, JSON logs.

Each member serves ``--listen-client-http-urls`` (gateway, health, metrics, version) and
``--listen-metrics-urls``. The gateway is driven by the PyPI client ``etcd3gw`` (written
for etcd's grpc-gateway) and by plain urllib requests, as curl would send them.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd3gw
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.bench.ports import free_ports
from tests.e2e.procs import Cluster, Proc


@dataclass
class HttpCluster:
    cluster: Cluster
    http: list[str]  # each member's gateway: http://127.0.0.1:<port>
    metrics: list[str]  # each member's metrics listener

    def client(self, i: int) -> etcd3gw.Etcd3Client:
        port = int(self.http[i].rsplit(":", 1)[1])
        return etcd3gw.client(host="127.0.0.1", port=port, timeout=10)


def fetch(url: str, body: object = None) -> tuple[int, str]:
    """GET (``body`` None) or POST JSON; (status, text), errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric_values(url: str) -> dict[str, float]:
    status, text = fetch(f"{url}/metrics")
    assert status == 200
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def _wait_healthy(hc: HttpCluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for m in hc.cluster.members:
            if not m.running:
                raise AssertionError(f"{m.name} exited: {m.log.read_text()[-2000:]}")
        try:
            last = [fetch(f"{url}/health") for url in hc.http]
            if all(status == 200 for status, _ in last):
                return
        except OSError as exc:  # not listening yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"not healthy after {timeout} s: {last}")


@pytest.fixture(scope="module")
def hc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpCluster]:
    c = Cluster(tmp_path_factory.mktemp("gateway"))
    taken = {p for m in c.members for p in (m.client, m.peer)}
    ports = [p for p in free_ports(12) if p not in taken][:6]
    http = [f"http://127.0.0.1:{p}" for p in ports[:3]]
    metrics = [f"http://127.0.0.1:{p}" for p in ports[3:]]
    for m, h, mx in zip(c.members, http, metrics, strict=True):
        m.args += ["--listen-client-http-urls", h, "--listen-metrics-urls", mx]
    c.members[2].args += ["--experimental-gc-max-pause-ms", "0"]  # the GC left as Python has it
    c.start()
    try:
        result = HttpCluster(c, http, metrics)
        _wait_healthy(result)
        yield result
    finally:
        c.stop()


def test_health_version_and_metrics_on_every_member(hc: HttpCluster) -> None:
    for url in [*hc.http, *hc.metrics]:
        status, body = fetch(f"{url}/health")
        assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
        assert fetch(f"{url}/livez") == (200, "ok\n")
        assert fetch(f"{url}/readyz") == (200, "ok\n")
    for url in hc.http:
        status, body = fetch(f"{url}/version")
        assert json.loads(body) == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    views = [metric_values(url) for url in hc.metrics]
    assert [v["etcd_server_has_leader"] for v in views] == [1, 1, 1]
    assert sum(v["etcd_server_is_leader"] for v in views) == 1
    for v in views:
        assert v["etcd_mvcc_db_total_size_in_bytes"] > 0
        assert v["etcd_disk_wal_fsync_duration_seconds_count"] > 0
    # cluster.gcpauses is on by default; --experimental-gc-max-pause-ms 0 turns it off
    assert ["python_gc_freezes_total" in v for v in views] == [True, True, False]
    assert views[0]["python_gc_longest_full_collection_seconds"] >= 0

    # a write through one member's gateway is applied on every member
    before = [v["etcd_server_proposals_applied_total"] for v in views]
    status, _ = fetch(f"{hc.http[1]}/v3/kv/put", {"key": b64(b"m/k"), "value": b64(b"v")})
    assert status == 200
    deadline = time.monotonic() + 10
    while True:
        after = [metric_values(url)["etcd_server_proposals_applied_total"] for url in hc.metrics]
        if all(a > b for a, b in zip(after, before, strict=True)) and len(set(after)) == 1:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)


def test_etcd3gw_kv_and_transactions(hc: HttpCluster) -> None:
    c0, c2 = hc.client(0), hc.client(2)
    assert c0.put("gw/a", "1") is True
    assert c2.get("gw/a") == [b"1"]  # written through member 0, read (linearizable) on 2
    assert c2.create("gw/a", "x") is False
    assert c2.create("gw/b", "2") is True
    assert c0.replace("gw/b", "2", "3") is True
    assert c0.replace("gw/b", "2", "4") is False
    listed = c2.get_prefix("gw/")
    assert [(value, meta["key"]) for value, meta in listed] == [(b"1", b"gw/a"), (b"3", b"gw/b")]
    assert int(listed[1][1]["version"]) == 2
    assert c0.delete("gw/a") is True
    assert c0.delete("gw/a") is False
    assert c2.delete_prefix("gw/") is True
    assert c0.get_prefix("gw/") == []
    assert {m["name"] for m in c0.members()} == {"m0", "m1", "m2"}
    assert c2.status()["version"] == "3.5.0"


def test_etcd3gw_leases_and_lock(hc: HttpCluster) -> None:
    c0, c1 = hc.client(0), hc.client(1)
    lease = c0.lease(ttl=20)
    assert c1.put("gw/leased", "v", lease=lease) is True
    assert 0 < lease.ttl() <= 20
    assert lease.refresh() == 20  # lease/keepalive: one request, one JSON line
    assert lease.keys() == [b"gw/leased"]
    assert lease.revoke() is True
    assert c1.get("gw/leased") == []

    lock = c1.lock("gw-lock", ttl=20)
    assert lock.acquire() is True
    assert lock.is_acquired()
    assert c0.lock("gw-lock", ttl=20).is_acquired() is False
    assert lock.release() is True


def test_etcd3gw_watch_across_members(hc: HttpCluster) -> None:
    c0, c1 = hc.client(0), hc.client(1)
    rev = int(c1.status()["header"]["revision"])
    c1.put("gw/w", "before")
    events, cancel = c0.watch("gw/w", start_revision=rev + 1)
    got: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        for event in events:
            got.put(event)

    drain = threading.Thread(target=pump, daemon=True)
    drain.start()
    try:
        first = got.get(timeout=10)  # from history
        assert (first["kv"]["key"], first["kv"]["value"]) == (b"gw/w", b"before")
        hc.client(2).put("gw/w", "live")  # through a third member
        second = got.get(timeout=10)
        assert second["kv"]["value"] == b"live"
        c1.delete("gw/w")
        assert got.get(timeout=10).get("type") == "DELETE"
    finally:
        cancel()
    drain.join(10)


def test_gateway_errors_and_json_logs(hc: HttpCluster) -> None:
    status, body = fetch(f"{hc.http[0]}/v3/kv/range", {})
    assert (status, json.loads(body)) == (400, {
        "error": "etcdserver: key is not provided",
        "message": "etcdserver: key is not provided",
        "code": 3,
    })  # fmt: skip
    status, body = fetch(f"{hc.http[0]}/v3/kv/range", {"key": b64(b"k"), "revision": 10**9})
    assert (status, json.loads(body)["code"]) == (400, 11)
    # every member logs JSON lines with etcd's keys and its own name and id
    for m in hc.cluster.members:
        lines = [json.loads(line) for line in _json_lines(m)]
        assert lines, m.log.read_text()[-2000:]
        assert all({"level", "ts", "caller", "msg"} <= set(line) for line in lines)
        assert {line["member"] for line in lines} == {m.name}
        assert any("ready, serving clients" in line["msg"] and "member-id" in line
                   for line in lines)  # fmt: skip


def _json_lines(m: Proc) -> list[str]:
    return [line for line in Path(m.log).read_text().splitlines() if line.startswith("{")]
