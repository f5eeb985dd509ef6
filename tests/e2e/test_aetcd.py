"""The aetcd client (PyPI: asyncio, etcd v3 gRPC) against 3-member clusters of real processes.

aetcd ships its own generated etcd protos and registers them in protobuf's default descriptor
pool under the same full names as ours (``etcdserverpb.*``, ``mvccpb.*``, ``authpb.*``), so aetcd
and ``cluster.proto`` cannot both be imported into one interpreter ("TypeError: Couldn't build
proto file into descriptor pool: duplicate symbol 'authpb.UserAddOptions'"). The pytest workers
import ``cluster.proto`` for the unit tests, so every aetcd call here runs in a child interpreter:
``python -m tests.e2e.test_aetcd SCENARIO ARGS_JSON`` runs one of the ``_scenario_*`` coroutines
below and prints what it saw as JSON, and the tests assert on that. Never import aetcd at module
level here.

aetcd 1.0.0 covers Range only partly: ``get``/``get_prefix`` take no limit and no revision, so
those reads use the client's own stub (``client.kvstub.Range``) with aetcd's ``rpc.RangeRequest``.
It turns gRPC errors into its own exceptions only in the calls it wraps: OUT_OF_RANGE (compacted or
future revision) becomes a plain ``aetcd.ClientError``; its ``RevisionCompactedError`` comes only
from watches.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.e2e.procs import ROOT, Cluster, running

if TYPE_CHECKING:
    import aetcd

T = TypeVar("T")

# --- the child interpreter's side ------------------------------------------------------------

RETRY_SERVICE_CONFIG = {
    # spread calls over every address; a dead member's subchannel is skipped
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": "etcdserverpb.KV"},
                {"service": "etcdserverpb.Maintenance"},
                {"service": "etcdserverpb.Cluster"},
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def _client(endpoints: list[str], timeout: int = 3) -> aetcd.Client:
    """An aetcd client over all ``endpoints`` ("127.0.0.1:PORT"), with gRPC retries.

    aetcd dials ``f"{host}:{port}"``; gRPC's ``ipv4:`` target takes a list of addresses, so the
    host carries every endpoint but the last port.
    """
    import aetcd

    *_, last = endpoints
    head, port = last.rsplit(":", 1)
    host = "ipv4:" + ",".join([*endpoints[:-1], head])
    options = {
        "grpc.enable_retries": 1,
        "grpc.service_config": json.dumps(RETRY_SERVICE_CONFIG),
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 500,
    }
    return aetcd.Client(host=host, port=int(port), timeout=timeout, options=options)


async def _retrying(op: Callable[[], Awaitable[T]], budget: float = 20) -> tuple[T, int]:
    """``op()`` again while aetcd reports UNAVAILABLE or a deadline, for ``budget`` seconds;
    the result and the attempts it took."""
    import aetcd

    deadline = time.monotonic() + budget
    attempts = 0
    while True:
        attempts += 1
        try:
            return await op(), attempts
        except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _s(b: bytes) -> str:
    return b.decode()


def _kv(kv: Any) -> dict[str, Any]:
    return {
        "key": _s(kv.key),
        "value": _s(kv.value),
        "create": kv.create_revision,
        "mod": kv.mod_revision,
        "version": kv.version,
    }


async def _range(client: aetcd.Client, key: bytes, **fields: Any) -> Any:
    """Range through the client's stub: aetcd's get() has no limit and no revision."""
    import aetcd

    return await client.kvstub.Range(aetcd.rpc.RangeRequest(key=key, **fields), timeout=3)


def _error(e: BaseException) -> dict[str, str]:
    import grpc

    if isinstance(e, grpc.RpcError):
        return {"type": "grpc", "code": e.code().name, "details": e.details() or ""}
    return {"type": type(e).__name__, "details": str(e)}


async def _scenario_ready(args: dict[str, Any]) -> Any:
    """Until every member answers Status naming the same leader; that leader's name."""
    deadline = time.monotonic() + 20
    while True:
        try:
            leaders = set()
            for ep in args["endpoints"]:
                async with _client([ep], timeout=1) as c:
                    st = await c.status()
                    leaders.add(st.leader.name if st.leader is not None else None)
            if len(leaders) == 1 and None not in leaders:
                return leaders.pop()
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"no agreed leader: {leaders}")
        await asyncio.sleep(0.1)


async def _scenario_status(args: dict[str, Any]) -> Any:
    out = []
    for ep in args["endpoints"]:
        async with _client([ep]) as c:
            st = await c.status()
            out.append(
                {
                    "version": st.version,
                    "db_size": st.db_size,
                    "leader": st.leader.name,
                    "leader_id": st.leader.id,
                    "raft_index": st.raft_index,
                    "raft_term": st.raft_term,
                    "members": sorted([m.name async for m in c.members()]),
                }
            )
    return out


async def _scenario_kv(args: dict[str, Any]) -> Any:
    import aetcd

    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        put = await c.put(b"/kv/a", b"3")
        out["put_revision"] = put.header.revision
        await c.put(b"/kv/b", b"1")
        await c.put(b"/kv/c", b"2")
        await c.put(b"/kvx", b"outside")
        replaced = await c.put(b"/kv/a", b"4", prev_kv=True)
        out["put_prev_kv"] = _kv(replaced.prev_kv)

        got = await c.get(b"/kv/a")
        out["get"] = _kv(got)
        out["get_serializable"] = _kv(await c.get(b"/kv/a", serializable=True))
        out["get_missing"] = await c.get(b"/kv/missing")

        rng = await c.get_prefix(b"/kv/")
        out["prefix"] = [(_s(kv.key), _s(kv.value)) for kv in rng]
        out["prefix_count"] = rng.count
        rng = await c.get_prefix(b"/kv/", keys_only=True)
        out["prefix_keys_only"] = [(_s(kv.key), _s(kv.value)) for kv in rng]
        rng = await c.get_prefix(b"/kv/", sort_order="descend", sort_target="value")
        out["prefix_by_value_desc"] = [_s(kv.key) for kv in rng]
        rng = await c.get_prefix(b"/kv/", sort_order="ascend", sort_target="mod")
        out["prefix_by_mod_asc"] = [_s(kv.key) for kv in rng]
        rng = await c.get_range(b"/kv/a", b"/kv/c")
        out["range"] = [_s(kv.key) for kv in rng]

        end = aetcd.utils.prefix_range_end(b"/kv/")
        resp = await _range(c, b"/kv/", range_end=end, limit=2)
        out["limit"] = {
            "keys": [_s(kv.key) for kv in resp.kvs],
            "more": resp.more,
            "count": resp.count,
        }
    return out


async def _scenario_delete(args: dict[str, Any]) -> Any:
    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        for k, v in [(b"/del/a", b"1"), (b"/del/b", b"2"), (b"/del/c/x", b"3"), (b"/delz", b"z")]:
            await c.put(k, v)
        one = await c.delete(b"/del/a", prev_kv=True)
        out["delete"] = {"deleted": one.deleted, "prev": _kv(one.prev_kv)}
        out["delete_missing"] = await c.delete(b"/del/a", prev_kv=True)
        many = await c.delete_prefix(b"/del/", prev_kv=True)
        out["delete_prefix"] = {
            "deleted": many.deleted,
            "prev": [(_s(kv.key), _s(kv.value)) for kv in many.prev_kvs],
        }
        out["left"] = [_s(kv.key) for kv in await c.get_prefix(b"/del")]
    return out


async def _scenario_txn(args: dict[str, Any]) -> Any:
    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        t = c.transactions
        created = await c.put(b"/cas", b"v1")
        rev = created.header.revision

        async def cas(expected: bytes, new: bytes) -> tuple[bool, Any]:
            ok, responses = await c.transaction(
                compare=[t.value(b"/cas") == expected, t.mod(b"/cas") > 0],
                success=[t.put(b"/cas", new), t.get(b"/cas")],
                failure=[t.put(b"/cas-lost", expected), t.get(b"/cas")],
            )
            [_, read] = responses  # a put's response, then the range's [(value, Get)]
            return ok, [_s(value) for value, _meta in read]

        out["swap"] = await cas(b"v1", b"v2")
        out["stale_swap"] = await cas(b"v1", b"v3")
        out["value"] = _s((await c.get(b"/cas")).value)
        out["lost"] = _s((await c.get(b"/cas-lost")).value)

        ok, _ = await c.transaction(
            compare=[t.create(b"/cas") == rev, t.version(b"/cas") == 2, t.version(b"/nope") == 0],
            success=[t.delete(b"/cas-lost", prev_kv=True)],
            failure=[],
        )
        out["revision_compares"] = ok
        out["lost_after"] = await c.get(b"/cas-lost")
        out["replace"] = [
            await c.replace(b"/cas", b"v2", b"v4"),
            await c.replace(b"/cas", b"v2", b"v5"),
        ]
        out["final"] = _s((await c.get(b"/cas")).value)
    return out


async def _scenario_history(args: dict[str, Any]) -> Any:
    import aetcd

    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        r1 = (await c.put(b"/hist", b"one")).header.revision
        r2 = (await c.put(b"/hist", b"two")).header.revision
        r3 = (await c.put(b"/hist", b"three")).header.revision
        out["revisions"] = [r1, r2, r3]
        out["at"] = {}
        for r in (r1, r2, r3):
            resp = await _range(c, b"/hist", revision=r)
            out["at"][r] = [_s(kv.value) for kv in resp.kvs]
        try:
            await _range(c, b"/hist", revision=r3 + 1000)
        except Exception as e:
            out["future"] = _error(e)

        await c.compact(r2)
        try:
            await _range(c, b"/hist", revision=r1)
        except Exception as e:
            out["read_compacted"] = _error(e)
        try:  # what aetcd itself makes of that status (the mapping its wrapped calls use)
            await _range(c, b"/hist", revision=r1, serializable=True)
        except Exception as e:
            try:
                aetcd.exceptions._handle_exception(e)
            except aetcd.ClientError as mapped:
                out["read_compacted_as_aetcd"] = _error(mapped)
        out["at_compaction_rev"] = [
            _s(kv.value) for kv in (await _range(c, b"/hist", revision=r2)).kvs
        ]
        try:
            await c.compact(r1)
        except aetcd.ClientError as e:
            out["compact_again"] = _error(e)
        await c.compact(r3, physical=True)
        try:
            await _range(c, b"/hist", revision=r2)
        except Exception as e:
            out["read_after_physical"] = _error(e)
        out["current"] = _s((await c.get(b"/hist")).value)
    return out


async def _scenario_write_through_leader_kill(args: dict[str, Any]) -> Any:
    """Writes k00..k29 over all endpoints; SIGKILLs the leader while k05..k24 are in flight."""
    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        st, _ = await _retrying(c.status)
        leader = st.leader.name
        out["old_leader"] = leader
        attempts = []

        async def put(i: int) -> None:
            _, n = await _retrying(lambda: c.put(f"/ha/k{i:02}".encode(), f"v{i}".encode()))
            attempts.append(n)

        for i in range(5):
            await put(i)
        inflight = [asyncio.ensure_future(put(i)) for i in range(5, 25)]
        await asyncio.sleep(0)  # let them go out
        killed_at = time.monotonic()
        os.kill(args["pids"][leader], signal.SIGKILL)
        await asyncio.gather(*inflight)
        for i in range(25, 30):
            await put(i)
        out["seconds_after_kill"] = time.monotonic() - killed_at
        out["attempts"] = sorted(attempts)

        rng, _ = await _retrying(lambda: c.get_prefix(b"/ha/"))
        out["values"] = {_s(kv.key): _s(kv.value) for kv in rng}
        st, _ = await _retrying(c.status)
        out["new_leader"] = st.leader.name if st.leader is not None else None
    return out


async def _scenario_watch(args: dict[str, Any]) -> Any:
    """A prefix watch from a past revision with prev_kv: history first, then live events."""
    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        first = (await c.put(b"/w/a", b"1")).header.revision
        await c.put(b"/w/a", b"2")
        await c.put(b"/wx", b"outside")
        end = b"/w0"  # the prefix "/w/" ends before "/w0"
        watch = await c.watch(b"/w/", range_end=end, start_revision=first, prev_kv=True)
        events: list[dict[str, Any]] = []

        async def collect() -> None:
            async for ev in watch:
                events.append(
                    {
                        "kind": ev.kind,
                        "key": _s(ev.kv.key),
                        "value": _s(ev.kv.value),
                        "mod": ev.kv.mod_revision,
                        # aetcd wraps an absent prev_kv too: an empty key means none
                        "prev": _s(ev.prev_kv.value) if ev.prev_kv and ev.prev_kv.key else None,
                    }
                )
                if len(events) == 5:
                    return

        task = asyncio.ensure_future(collect())
        await asyncio.sleep(0.3)
        await c.put(b"/w/b", b"3")
        await c.delete(b"/w/a")
        last = (await c.put(b"/w/b", b"4")).header.revision
        await asyncio.wait_for(task, 10)
        await watch.cancel()
        out["first"], out["last"], out["events"] = first, last, events
    return out


async def _scenario_lease(args: dict[str, Any]) -> Any:
    import aetcd

    out: dict[str, Any] = {}
    async with _client(args["endpoints"]) as c:
        lease = await c.lease(3)
        out["granted"] = lease.ttl
        await c.put(b"/lease/a", b"1", lease=lease)
        await c.put(b"/lease/b", b"2", lease=lease)
        out["keys"] = sorted(_s(k) for k in await lease.keys())
        for _ in range(5):  # 5 s of keep-alive: longer than the TTL
            await lease.refresh()
            await asyncio.sleep(1)
        out["alive_after_refresh"] = [_s(kv.key) for kv in await c.get_prefix(b"/lease/")]
        out["remaining"] = await lease.remaining_ttl()
        await lease.revoke()
        out["after_revoke"] = [_s(kv.key) for kv in await c.get_prefix(b"/lease/")]

        short = await c.lease(2)
        await c.put(b"/lease/short", b"x", lease=short)
        await asyncio.sleep(4)  # no keep-alive: the leader revokes it
        out["after_expiry"] = [_s(kv.key) for kv in await c.get_prefix(b"/lease/")]
        try:
            await c.put(b"/lease/c", b"3", lease=aetcd.leases.Lease(0x7777, 5, c))
        except Exception as e:
            out["unknown_lease"] = _error(e)
    return out


def _child_main(argv: list[str]) -> int:
    name, raw = argv
    scenario = globals()[f"_scenario_{name}"]
    result = asyncio.run(scenario(json.loads(raw)))
    print(json.dumps(result))
    return 0


# --- the pytest side --------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aetcd") is None and os.environ.get("CI") != "true",
    reason="aetcd is not installed (pip install -e '.[dev]')",
)


def run_aetcd(scenario: str, timeout: float = 60, **args: Any) -> Any:
    """Run ``_scenario_<scenario>(args)`` with aetcd in a child interpreter; its JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_aetcd", scenario, json.dumps(args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"aetcd scenario {scenario!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _ready(c: Cluster) -> None:
    run_aetcd("ready", endpoints=c.endpoints)


@pytest.fixture(scope="module")
def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the scenarios that only read and write their own keys."""
    with running(tmp_path_factory.mktemp("aetcd"), ready=_ready) as c:
        yield c


def test_aetcd_is_not_imported_by_pytest() -> None:
    # see the module docstring: it would clash with cluster.proto in this interpreter
    assert "aetcd" not in sys.modules


def test_put_get_and_ranges(kv_cluster: Cluster) -> None:
    got = run_aetcd("kv", endpoints=kv_cluster.endpoints)
    rev = got["put_revision"]
    assert got["put_prev_kv"] == {
        "key": "/kv/a",
        "value": "3",
        "create": rev,
        "mod": rev,
        "version": 1,
    }
    assert got["get"] == {"key": "/kv/a", "value": "4", "create": rev, "mod": rev + 4, "version": 2}
    assert got["get_serializable"]["value"] == "4"
    assert got["get_missing"] is None
    assert got["prefix"] == [["/kv/a", "4"], ["/kv/b", "1"], ["/kv/c", "2"]]
    assert got["prefix_count"] == 3
    assert got["prefix_keys_only"] == [["/kv/a", ""], ["/kv/b", ""], ["/kv/c", ""]]
    assert got["prefix_by_value_desc"] == ["/kv/a", "/kv/c", "/kv/b"]
    assert got["prefix_by_mod_asc"] == ["/kv/b", "/kv/c", "/kv/a"]
    assert got["range"] == ["/kv/a", "/kv/b"]
    assert got["limit"] == {"keys": ["/kv/a", "/kv/b"], "more": True, "count": 3}


def test_delete_with_prev_kv(kv_cluster: Cluster) -> None:
    got = run_aetcd("delete", endpoints=kv_cluster.endpoints)
    assert got["delete"]["deleted"] == 1
    assert (got["delete"]["prev"]["key"], got["delete"]["prev"]["value"]) == ("/del/a", "1")
    assert got["delete_missing"] is None
    assert got["delete_prefix"] == {"deleted": 2, "prev": [["/del/b", "2"], ["/del/c/x", "3"]]}
    assert got["left"] == ["/delz"]


def test_txn_compare_and_swap(kv_cluster: Cluster) -> None:
    got = run_aetcd("txn", endpoints=kv_cluster.endpoints)
    assert got["swap"] == [True, ["v2"]]  # success branch: put then get
    assert got["stale_swap"] == [False, ["v2"]]  # failure branch: nothing swapped
    assert got["value"] == "v2"
    assert got["lost"] == "v1"  # written by the failure branch
    assert got["revision_compares"] is True
    assert got["lost_after"] is None
    assert got["replace"] == [True, False]
    assert got["final"] == "v4"


def test_past_revisions_and_compaction(kv_cluster: Cluster) -> None:
    got = run_aetcd("history", endpoints=kv_cluster.endpoints)
    r1, r2, r3 = got["revisions"]
    assert got["at"] == {str(r1): ["one"], str(r2): ["two"], str(r3): ["three"]}
    assert got["future"] == {
        "type": "grpc",
        "code": "OUT_OF_RANGE",
        "details": "etcdserver: mvcc: required revision is a future revision",
    }
    compacted = "etcdserver: mvcc: required revision has been compacted"
    assert got["read_compacted"] == {"type": "grpc", "code": "OUT_OF_RANGE", "details": compacted}
    assert got["read_compacted_as_aetcd"] == {"type": "ClientError", "details": compacted}
    assert got["compact_again"] == {"type": "ClientError", "details": compacted}
    assert got["at_compaction_rev"] == ["two"]
    assert got["read_after_physical"]["details"] == compacted
    assert got["current"] == "three"


def test_status_from_every_member(kv_cluster: Cluster) -> None:
    got = run_aetcd("status", endpoints=kv_cluster.endpoints)
    assert len(got) == 3
    assert len({s["leader_id"] for s in got}) == 1
    assert len({s["raft_term"] for s in got}) == 1
    for s in got:
        assert s["version"] == "3.5.0"
        assert s["leader"] in {"m0", "m1", "m2"}
        assert s["members"] == ["m0", "m1", "m2"]
        assert s["db_size"] > 0
        assert s["raft_index"] > 0
        assert s["raft_term"] >= 1


def test_writes_survive_a_sigkilled_leader(tmp_path: Path) -> None:
    with running(tmp_path, ready=_ready) as c:
        pids = {m.name: m.popen.pid for m in c.members if m.popen is not None}
        got = run_aetcd("write_through_leader_kill", endpoints=c.endpoints, pids=pids)
        killed = next(m for m in c.members if m.name == got["old_leader"])
        assert killed.wait() == -signal.SIGKILL
        assert got["values"] == {f"/ha/k{i:02}": f"v{i}" for i in range(30)}
        assert got["new_leader"] not in (None, got["old_leader"])
        assert got["seconds_after_kill"] < 15
        assert all(m.running for m in c.members if m is not killed)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))


def test_watch_replays_history_then_streams_live_events(kv_cluster: Cluster) -> None:
    got = run_aetcd("watch", endpoints=kv_cluster.endpoints)
    first = got["first"]
    assert [(e["kind"], e["key"], e["value"], e["prev"]) for e in got["events"]] == [
        ("PUT", "/w/a", "1", None),
        ("PUT", "/w/a", "2", "1"),
        ("PUT", "/w/b", "3", None),
        ("DELETE", "/w/a", "", "2"),
        ("PUT", "/w/b", "4", "3"),
    ]
    mods = [e["mod"] for e in got["events"]]
    assert mods[0] == first and mods == sorted(mods) and mods[-1] == got["last"]


def test_leases_keep_alive_revoke_and_expiry(kv_cluster: Cluster) -> None:
    got = run_aetcd("lease", endpoints=kv_cluster.endpoints)
    assert got["granted"] == 3
    assert got["keys"] == ["/lease/a", "/lease/b"]
    assert got["alive_after_refresh"] == ["/lease/a", "/lease/b"]
    assert 0 < got["remaining"] <= 3
    assert got["after_revoke"] == []
    assert got["after_expiry"] == []
    assert got["unknown_lease"]["details"].endswith("requested lease not found")
