"""``python -m cluster grpc-proxy start`` in front of 3 member processes.

The real etcdctl goes through the proxy (put/get/del/txn, watch, lease, lock, member
list, endpoint status); the proxy's upstream member is SIGKILLed under a running watch,
a lease keep-alive and writes, which all go on through another member; and, with the
proxy in this process so its counters can be read, N identical watches share one
upstream watch and serializable ranges come from a cache that writes elsewhere in the
cluster invalidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proxy import (
    DEFAULT_CACHE_ENTRIES,
    Proxy,
    ProxyConfig,
    RangeCache,
    _with_watch_id,
    start_server,
)
from scripts.make_certs import make_certs
from tests.e2e.procs import (
    BackgroundEtcdctl,
    Cluster,
    Proc,
    background,
    free_ports,
    needs_etcdctl,
    running,
)
from tests.e2e.test_tls import _tls_cluster, _tls_flags

pytestmark = needs_etcdctl


@contextmanager
def proxy_process(c: Cluster, tmp: Path) -> Iterator[Proc]:
    """The proxy as a process (``python -m cluster grpc-proxy start``), ready for etcdctl."""
    (port,) = free_ports(1)
    proxy = Proc("proxy", port, 0, tmp / "proxy", tmp / "proxy.log")
    proxy.args = [
        "grpc-proxy", "start", "--endpoints", ",".join(c.endpoints),
        "--listen-addr", f"127.0.0.1:{port}",
        "--advertise-client-url", f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    proxy.start()
    try:
        deadline = time.monotonic() + 20
        while c.run_etcdctl("get", "probe", endpoints=[proxy]).returncode != 0:
            assert proxy.running, proxy.log.read_text()
            assert time.monotonic() < deadline, "the proxy never answered"
            time.sleep(0.1)
        yield proxy
    finally:
        proxy.kill()


@asynccontextmanager
async def proxy_in_process(
    c: Cluster, cache_entries: int = DEFAULT_CACHE_ENTRIES
) -> AsyncIterator[tuple[Proxy, str]]:
    cfg = ProxyConfig(tuple(c.endpoints), listen_addr="127.0.0.1:0", cache_entries=cache_entries)
    proxy, server, port = await start_server(cfg)
    try:
        yield proxy, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await proxy.close()


def _watching(c: Cluster, watches: list[BackgroundEtcdctl], key: str, via: Proc) -> None:
    """Put sentinels on ``key`` through ``via`` until every background watch printed
    something (so all are established), then one more that all of them must print; their
    output is read up to it."""
    started: set[int] = set()
    for n in range(50):
        c.etcdctl("put", key, f"ready-{n}", endpoints=[via])
        for i, w in enumerate(watches):
            if i not in started:
                with contextlib.suppress(queue.Empty):
                    w.queue.get(timeout=0.3)
                    started.add(i)
        if len(started) == len(watches):
            break
    assert len(started) == len(watches), "a watch never saw a sentinel"
    c.etcdctl("put", key, "go", endpoints=[via])
    for w in watches:
        while w.line() != "go":
            pass


def test_etcdctl_through_the_proxy(tmp_path: Path) -> None:
    with running(tmp_path) as c, proxy_process(c, tmp_path) as proxy:
        via = [proxy]
        assert c.etcdctl("put", "/p/a", "1", endpoints=via) == "OK\n"
        direct = json.loads(c.etcdctl("get", "/p/a", "-w", "json"))
        proxied = json.loads(c.etcdctl("get", "/p/a", "-w", "json", endpoints=via))
        assert proxied["kvs"] == direct["kvs"]
        assert proxied["header"]["cluster_id"] == direct["header"]["cluster_id"]
        for _ in range(2):
            assert c.etcdctl("get", "/p/a", "--consistency=s", endpoints=via) == "/p/a\n1\n"
        # a write to a member, not through the proxy: the cached answer is invalidated
        c.etcdctl("put", "/p/a", "2", endpoints=c.members[2:])
        deadline = time.monotonic() + 5
        while c.etcdctl("get", "/p/a", "--consistency=s", "--print-value-only",
                        endpoints=via) != "2\n":  # fmt: skip
            assert time.monotonic() < deadline, "the proxy kept a stale answer"
            time.sleep(0.05)
        txn = 'value("/p/a") = "2"\n\nput /p/b yes\n\nput /p/b no\n\n'
        assert c.etcdctl("txn", stdin=txn, endpoints=via) == "SUCCESS\n\nOK\n"
        assert c.etcdctl("get", "/p/b", "--print-value-only", endpoints=via) == "yes\n"
        assert c.etcdctl("del", "/p/b", endpoints=via) == "1\n"
        assert c.etcdctl("get", "/p/b", endpoints=via) == ""

        with background("watch", "/w/", "--prefix", endpoints=via) as w:
            _watching(c, [w], "/w/ready", via=c.members[1])
            c.etcdctl("put", "/w/x", "from a member", endpoints=c.members[:1])
            assert w.lines(3) == ["PUT", "/w/x", "from a member"]
            c.etcdctl("put", "/w/y", "through the proxy", endpoints=via)
            assert w.lines(3) == ["PUT", "/w/y", "through the proxy"]

        out = c.etcdctl("lease", "grant", "60", endpoints=via)
        lease = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(60s\)\n", out)
        assert lease is not None, out
        lid = lease.group(1)
        c.etcdctl("put", "/p/leased", "x", f"--lease={lid}", endpoints=via)
        ttl = c.etcdctl("lease", "timetolive", lid, "--keys", endpoints=via)
        assert f"lease {lid} granted with TTL(60s)" in ttl and "/p/leased" in ttl
        assert re.search(r"keepalived with TTL\(60\)", c.etcdctl(
            "lease", "keep-alive", "--once", lid, endpoints=via))  # fmt: skip
        assert lid in c.etcdctl("lease", "list", endpoints=via)
        assert c.etcdctl("lease", "revoke", lid, endpoints=via) == f"lease {lid} revoked\n"
        assert c.etcdctl("get", "/p/leased", endpoints=via) == ""

        assert c.etcdctl("member", "list", endpoints=via) == c.etcdctl("member", "list")
        status = json.loads(c.etcdctl("endpoint", "status", "-w", "json", endpoints=via))
        assert status[0]["Status"]["header"]["cluster_id"] == direct["header"]["cluster_id"]
        out = c.etcdctl("lock", "/p/lock", "echo", "holding", endpoints=via)
        assert out == "holding\n"

        # auth: tokens pass through, and a cached answer is only for the same token
        for args in (
            ("user", "add", "root", "--new-user-password=root-pw"),
            ("role", "add", "root"),
            ("user", "grant-role", "root", "root"),
            ("user", "add", "bob", "--new-user-password=bob-pw"),
            ("auth", "enable"),
        ):
            c.etcdctl(*args, endpoints=via)
        for _ in range(2):
            assert c.etcdctl("--user=root:root-pw", "get", "/p/a", "--consistency=s",
                             "--print-value-only", endpoints=via) == "2\n"  # fmt: skip
        done = c.run_etcdctl("--user=bob:bob-pw", "get", "/p/a", "--consistency=s",
                             endpoints=via)  # fmt: skip
        assert done.returncode != 0 and "permission denied" in done.stderr, done.stderr
        done = c.run_etcdctl("get", "/p/a", "--consistency=s", endpoints=via)
        assert done.returncode != 0 and "user name is empty" in done.stderr, done.stderr


def test_tls_on_both_sides_of_the_proxy(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    c = _tls_cluster(tmp_path, certs)
    c.start()
    try:
        tls = _tls_flags(certs)
        c.leader(c.members, extra=tls)
        (port,) = free_ports(1)
        proxy = Proc("proxy", port, 0, tmp_path / "proxy", tmp_path / "proxy.log")
        proxy.args = [
            "grpc-proxy", "start", "--listen-addr", f"127.0.0.1:{port}",
            "--endpoints", ",".join(f"https://{e}" for e in c.endpoints),
            f"--cacert={certs.ca}", f"--cert={certs.client_cert}", f"--key={certs.client_key}",
            f"--cert-file={certs.server_cert}", f"--key-file={certs.server_key}",
            f"--trusted-ca-file={certs.ca}",
        ]  # fmt: skip
        proxy.start()
        try:
            deadline = time.monotonic() + 20
            while c.run_etcdctl(*tls, "put", "/tls", "yes", endpoints=[proxy]).returncode:
                assert proxy.running and time.monotonic() < deadline, proxy.log.read_text()
                time.sleep(0.1)
            assert c.etcdctl(*tls, "get", "/tls", "--print-value-only") == "yes\n"
            done = c.run_etcdctl(*_tls_flags(certs, client_cert=False), "get", "/tls",
                                 endpoints=[proxy])  # fmt: skip
            assert done.returncode != 0  # the proxy too wants a client certificate
        finally:
            proxy.kill()
    finally:
        c.stop()


def test_failover_when_the_upstream_member_is_killed(tmp_path: Path) -> None:
    with running(tmp_path) as c, proxy_process(c, tmp_path) as proxy:
        via = [proxy]
        out = c.etcdctl("lease", "grant", "4", endpoints=via)
        lid = out.split()[1]
        c.etcdctl("put", "/f/leased", "x", f"--lease={lid}", endpoints=via)
        with (
            background("watch", "/f/", "--prefix", endpoints=via) as w,
            background("watch", "/f/", "--prefix", endpoints=via) as w2,  # coalesced with w
            background("lease", "keep-alive", lid, endpoints=via) as ka,
        ):
            _watching(c, [w, w2], "/f/ready", via=proxy)
            assert "keepalived" in ka.line()
            for i in range(5):
                c.etcdctl("put", f"/f/{i}", f"v{i}", endpoints=via)
            c.members[0].kill()  # the proxy's upstream: the first endpoint
            # If it led, writes wait for a new leader (as they would without the proxy).
            c.leader(c.members[1:])
            for i in range(5, 10):
                c.etcdctl("put", f"/f/{i}", f"v{i}", endpoints=via)
            expected = [x for i in range(10) for x in ("PUT", f"/f/{i}", f"v{i}")]
            for watch in (w, w2):
                assert watch.lines(30, timeout=20) == expected
                assert watch.quiet(0.3)  # nothing twice
            time.sleep(5)  # longer than the lease's TTL: only the keep-alives save it
            assert "keepalived" in ka.line(timeout=5)
            ttl = c.etcdctl("lease", "timetolive", lid, "--keys", endpoints=via)
            assert "/f/leased" in ttl, ttl
        assert c.etcdctl("get", "/f/9", "--print-value-only", endpoints=via) == "v9\n"
        assert len(json.loads(c.etcdctl("member", "list", "-w", "json", endpoints=via))[
            "members"]) == 3  # fmt: skip
        assert "upstream 127.0.0.1:" in proxy.log.read_text()


async def _create(call: grpc.aio.StreamStreamCall, **create: object) -> pb.WatchResponse:
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(**create)))  # type: ignore[arg-type]
    resp: pb.WatchResponse = await asyncio.wait_for(call.read(), 10)
    assert resp.created and not resp.canceled, resp
    return resp


async def test_identical_watches_share_one_upstream_watch(tmp_path: Path) -> None:
    n = 20
    with running(tmp_path) as c:
        async with (
            proxy_in_process(c, cache_entries=0) as (proxy, endpoint),
            grpc.aio.insecure_channel(endpoint) as channel,
        ):
            stub = pb_grpc.WatchStub(channel)
            calls = [stub.Watch() for _ in range(n)]
            created = [await _create(call, key=b"/co/", range_end=b"/co0") for call in calls]
            assert [r.watch_id for r in created] == [0] * n  # each stream's own ids
            assert proxy.stats()["upstream_watches"] == 1
            assert proxy.stats()["client_watchers"] == n
            # the same watch again on one stream, under an id the client chose
            again = await _create(calls[0], key=b"/co/", range_end=b"/co0", watch_id=7)
            assert again.watch_id == 7 and proxy.stats()["upstream_watches"] == 1
            # other options or a start revision: watches of their own
            await _create(calls[1], key=b"/co/", range_end=b"/co0", prev_kv=True)
            rev = created[0].header.revision
            await _create(calls[2], key=b"/co/", range_end=b"/co0", start_revision=rev)
            assert proxy.stats()["upstream_watches"] == 3

            await asyncio.to_thread(c.etcdctl, "put", "/co/x", "1")
            seen: dict[tuple[int, int], int] = {}
            for i, call in enumerate(calls):
                expected = {0: [0, 7], 1: [0, 1], 2: [0, 1]}.get(i, [0])
                for _ in expected:
                    resp = await asyncio.wait_for(call.read(), 10)
                    assert [e.kv.key for e in resp.events] == [b"/co/x"], resp
                    seen[(i, resp.watch_id)] = resp.events[0].kv.mod_revision
                assert sorted(wid for (j, wid) in seen if j == i) == expected
            assert len(set(seen.values())) == 1  # one event, delivered to all
            assert seen[(1, 1)] and seen[(0, 7)]

            for call in calls:
                await call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=0)))
                resp = await asyncio.wait_for(call.read(), 10)
                assert resp.canceled and resp.watch_id == 0
            assert proxy.stats()["upstream_watches"] == 3  # 7, prev_kv, start rev remain
            for call in calls:
                call.cancel()
            deadline = time.monotonic() + 5
            while proxy.stats()["upstream_watches"]:
                assert time.monotonic() < deadline, proxy.stats()
                await asyncio.sleep(0.05)
            assert proxy.stats()["client_watchers"] == 0


async def test_serializable_ranges_come_from_the_cache(tmp_path: Path) -> None:
    with running(tmp_path) as c:
        async with proxy_in_process(c) as (proxy, endpoint):
            deadline = time.monotonic() + 10
            while not proxy.cache.live:  # its invalidation watch is up
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with grpc.aio.insecure_channel(endpoint) as channel:
                kv = pb_grpc.KVStub(channel)
                serializable = pb.RangeRequest(key=b"/c/a", serializable=True)
                await kv.Put(pb.PutRequest(key=b"/c/a", value=b"1"))
                first = await kv.Range(serializable)
                hits = proxy.cache.hits
                assert await kv.Range(serializable) == first
                assert proxy.cache.hits == hits + 1
                # written through the proxy: visible to the next read at once
                await kv.Put(pb.PutRequest(key=b"/c/a", value=b"2"))
                assert (await kv.Range(serializable)).kvs[0].value == b"2"
                # written to a member directly: the proxy's watch drops the entry
                await asyncio.to_thread(c.etcdctl, "put", "/c/a", "3")
                deadline = time.monotonic() + 5
                while (await kv.Range(serializable)).kvs[0].value != b"3":
                    assert time.monotonic() < deadline, "stale cache entry"
                    await asyncio.sleep(0.02)
                # a prefix range is dropped by a write to any key in it
                prefix = pb.RangeRequest(key=b"/c/", range_end=b"/c0", serializable=True)
                assert len((await kv.Range(prefix)).kvs) == 1
                await asyncio.to_thread(c.etcdctl, "put", "/c/b", "new")
                deadline = time.monotonic() + 5
                while len((await kv.Range(prefix)).kvs) != 2:
                    assert time.monotonic() < deadline, "stale cache entry"
                    await asyncio.sleep(0.02)
                # a txn through the proxy invalidates what it wrote
                await kv.Range(pb.RangeRequest(key=b"/c/t", serializable=True))
                txn = pb.TxnRequest(
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/c/t", value=b"t"))]
                )
                await kv.Txn(txn)
                got = await kv.Range(pb.RangeRequest(key=b"/c/t", serializable=True))
                assert [x.value for x in got.kvs] == [b"t"]
            assert proxy.stats()["cache_entries"] >= 1


# -- the proxy's own bookkeeping, without a cluster ---------------------------------------------


def test_responses_are_relabelled_without_a_copy() -> None:
    resp = pb.WatchResponse(watch_id=3, events=[])
    resp.header.revision = 9
    raw = resp.SerializeToString()
    for watch_id in (0, 7, 2**40, -1):
        got = pb.WatchResponse.FromString(_with_watch_id(raw, watch_id))
        assert (got.watch_id, got.header.revision) == (watch_id, 9)


def test_the_range_cache_drops_what_a_change_touches() -> None:
    cache = RangeCache(max_entries=3)
    cache.live = True

    def add(
        key: bytes, end: bytes = b"", token: str | None = None, rev: int = 5
    ) -> tuple[str | None, bytes]:
        req = pb.RangeRequest(key=key, range_end=end)
        k = RangeCache.cache_key(token, req)
        cache.add(k, req, rev, b"resp-" + key)
        return k

    a, prefix, from_b = add(b"a"), add(b"p/", b"p0"), add(b"b", b"\0")
    assert cache.get(a) == b"resp-a" and len(cache) == 3
    cache.invalidate(b"p/x")
    assert cache.get(prefix) is None and cache.get(a) is not None
    cache.invalidate(b"zz")  # in [b, +inf)
    assert cache.get(from_b) is None and len(cache) == 1
    cache.invalidate(b"0", b"b")  # a range over "a"
    assert cache.get(a) is None
    # per token; an answer older than a change already seen is not kept
    alice = add(b"k", token="alice")
    assert cache.get(RangeCache.cache_key("bob", pb.RangeRequest(key=b"k"))) is None
    assert cache.get(alice) == b"resp-k"
    cache.advance(10)
    assert cache.get(add(b"old", rev=9)) is None
    assert cache.get(add(b"new", rev=10)) == b"resp-new"
    for i in range(5):  # least recently used first out
        add(b"n%d" % i, rev=10)
    assert len(cache) == 3
    cache.live = False  # the invalidation watch is down: nothing is served
    assert cache.get(RangeCache.cache_key(None, pb.RangeRequest(key=b"n4"))) is None
