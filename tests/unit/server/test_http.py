"""The member's HTTP side in this process: health, version, metrics, the JSON gateway, logs.

A real single-member cluster (``live_http``) serves ``--listen-client-http-urls`` and
``--listen-metrics-urls``; requests go through aiohttp's client as curl would send them.
The answers are compared with etcd's (3.4's binary, grpc-gateway 1.16's status mapping).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from cluster.bench.ports import free_ports
from cluster.config import ConfigError, load
from cluster.gcpauses import GCPauseBound
from cluster.logging_setup import bind_member, configure
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server.http import HTTP_STATUS, Gateway, first_value, parse
from cluster.server.metrics import GO_CODE_NAMES
from scripts.make_certs import make_certs
from tests.unit.server.live_http import HttpMember, start_http_member


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def hm(tmp_path: Path) -> AsyncIterator[HttpMember]:
    m = await start_http_member(tmp_path / "m0")
    try:
        await m.wait_leader()
        yield m
    finally:
        await m.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: object = None, **headers: str
) -> tuple[int, Any]:
    data = "" if body is None else body if isinstance(body, str) else json.dumps(body)
    async with http.post(url, data=data, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith("{") else text


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[str, float]:
    """Every sample of a /metrics page: name{labels} -> value (labels sorted, as printed)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def scrape(http: aiohttp.ClientSession, hm: HttpMember) -> dict[str, float]:
    status, ctype, text = await get(http, f"{hm.metrics_url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return samples(text)


# -- health and version -------------------------------------------------------------------------


async def test_health_version_and_probes_on_a_healthy_member(
    hm: HttpMember, http: aiohttp.ClientSession
) -> None:
    for base in (hm.client_url, hm.metrics_url):
        status, _, body = await get(http, f"{base}/health")
        assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
        assert await get(http, f"{base}/livez") == (200, "text/plain; charset=utf-8", "ok\n")
        assert (await get(http, f"{base}/readyz"))[::2] == (200, "ok\n")
    status, _, body = await get(http, f"{hm.metrics_url}/readyz?verbose")
    assert body.splitlines() == [
        "[+]data_corruption ok",
        "[+]serializable_read ok",
        "[+]linearizable_read ok",
        "ok",
    ]
    assert (await get(http, f"{hm.client_url}/readyz/linearizable_read"))[::2] == (200, "ok\n")
    status, ctype, body = await get(http, f"{hm.client_url}/version")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    # the metrics listener serves neither the gateway nor /version
    assert (await get(http, f"{hm.metrics_url}/version"))[0] == 404
    assert (await post(http, f"{hm.metrics_url}/v3/kv/range", {"key": b64(b"k")}))[0] == 404
    # etcd answers only GET on these
    async with http.post(f"{hm.client_url}/health") as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "GET")
    values = await scrape(http, hm)
    assert values["etcd_server_health_success"] == 2
    assert values['etcd_server_healthcheck{name="linearizable_read",type="readyz"}'] == 1


async def test_health_without_a_leader(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # two of three members never start: no quorum, no leader
    m = await start_http_member(tmp_path / "m0", extra_peers=2, wait_published=False)
    try:
        await asyncio.sleep(0.3)  # a few election timeouts
        status, _, body = await get(http, f"{m.metrics_url}/health")
        assert (status, json.loads(body)) == (503, {"health": "false", "reason": "RAFT NO LEADER"})
        # serializable: no leader needed, the local store answers
        status, _, body = await get(http, f"{m.metrics_url}/health?serializable=true")
        assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
        assert (await get(http, f"{m.metrics_url}/livez"))[::2] == (200, "ok\n")
        status, _, body = await get(http, f"{m.metrics_url}/readyz")
        assert status == 503  # etcd's http.Error adds a newline after the last check's
        assert body == (
            "[+]data_corruption ok\n"
            "[+]serializable_read ok\n"
            "[-]linearizable_read failed: etcdserver: no leader\n\n"
        )
        status, _, body = await get(http, f"{m.metrics_url}/readyz?exclude=linearizable_read")
        assert (status, body) == (200, "ok\n")
        # the gateway relays the gRPC error with grpc-gateway's status
        status, body = await post(http, f"{m.client_url}/v3/kv/put", {"key": b64(b"k")})
        assert status == 503
        assert body == {"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                        "code": 14}  # fmt: skip
        values = await scrape(http, m)
        assert values["etcd_server_has_leader"] == 0
        assert values["etcd_server_is_leader"] == 0
        assert values["etcd_server_health_failures"] == 1
        assert values["etcd_server_proposals_failed_total"] >= 1
    finally:
        await m.stop()


async def test_health_with_an_alarm(hm: HttpMember, http: aiohttp.ClientSession) -> None:
    member_id = hm.member.id
    for alarm, reason in ((pb.NOSPACE, "ALARM NOSPACE"), (pb.CORRUPT, "ALARM CORRUPT")):
        await hm.maintenance.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member_id, alarm=alarm)
        )
        status, _, body = await get(http, f"{hm.client_url}/health")
        assert (status, json.loads(body)) == (503, {"health": "false", "reason": reason})
        name = pb.AlarmType.Name(alarm)
        status, _, body = await get(http, f"{hm.client_url}/health?exclude={name}")
        assert (status, json.loads(body)["health"]) == (200, "true")
        if alarm == pb.NOSPACE:
            assert (await get(http, f"{hm.client_url}/readyz"))[0] == 200  # only CORRUPT
        else:
            status, _, body = await get(http, f"{hm.client_url}/readyz")
            assert status == 503
            assert "[-]data_corruption failed: alarm activated: CORRUPT" in body
        await hm.maintenance.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member_id, alarm=alarm)
        )
    assert (await get(http, f"{hm.client_url}/health"))[0] == 200


# -- metrics ------------------------------------------------------------------------------------

ETCD_NAMES = (
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_server_quota_backend_bytes",
)


async def test_metrics_are_etcds_and_move_with_a_put(
    hm: HttpMember, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, hm)
    for name in ETCD_NAMES:
        assert name in before, name
    assert before["etcd_server_has_leader"] == before["etcd_server_is_leader"] == 1
    assert before["etcd_server_leader_changes_seen_total"] == 1
    assert before[f'etcd_server_id{{server_id="{hm.member.id:x}"}}'] == 1
    assert before['etcd_server_version{server_version="3.5.0"}'] == 1
    assert before["etcd_mvcc_db_total_size_in_bytes"] >= before[
        "etcd_mvcc_db_total_size_in_use_in_bytes"] > 0  # fmt: skip
    assert not [k for k in before if k.endswith("_created")]  # Go's client has none

    await hm.kv.Put(pb.PutRequest(key=b"m1", value=b"v"))
    assert (await post(http, f"{hm.client_url}/v3/kv/put", {"key": b64(b"m2")}))[0] == 200
    assert (await post(http, f"{hm.client_url}/v3/kv/range", {}))[0] == 400
    after = await scrape(http, hm)
    applied = "etcd_server_proposals_applied_total"
    assert after[applied] >= before[applied] + 2
    assert after["etcd_server_proposals_committed_total"] >= after[applied]
    assert after["etcd_debugging_mvcc_keys_total"] == before["etcd_debugging_mvcc_keys_total"] + 2
    fsyncs = "etcd_disk_wal_fsync_duration_seconds_count"
    assert after[fsyncs] >= before[fsyncs] + 2
    put = 'grpc_code="{}",grpc_method="{}",grpc_service="etcdserverpb.KV",grpc_type="unary"'
    assert after[f"grpc_server_handled_total{{{put.format('OK', 'Put')}}}"] == 2
    assert after[f"grpc_server_handled_total{{{put.format('InvalidArgument', 'Range')}}}"] == 1
    started = 'grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"'
    assert after[f"grpc_server_started_total{{{started}}}"] == 2

    # streams are counted by kind, and a cancelled one as Canceled
    watch = pb_grpc.WatchStub(hm.channel).Watch()
    await watch.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w")))
    assert (await watch.read()).created
    watch.cancel()
    await asyncio.sleep(0.1)
    values = await scrape(http, hm)
    assert values[
        'grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",'
        'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}'
    ] == 1  # fmt: skip


async def test_metrics_show_the_garbage_collector(
    hm: HttpMember, http: aiohttp.ClientSession
) -> None:
    values = await scrape(http, hm)
    assert 'python_gc_collections_total{generation="2"}' in values
    assert "python_gc_freezes_total" not in values  # no bound installed in this process
    bound = GCPauseBound(asyncio.get_running_loop(), max_pause=0.0)
    bound.install()
    try:
        gc.collect()
        values = await scrape(http, hm)
        assert values["python_gc_freezes_total"] == bound.freezes >= 1
        assert values["python_gc_longest_full_collection_seconds"] == bound.longest_pause > 0
    finally:
        bound.uninstall()
        gc.unfreeze()


def test_every_grpc_code_has_go_and_http_names() -> None:
    assert set(GO_CODE_NAMES) == set(grpc.StatusCode) == set(HTTP_STATUS)
    assert GO_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
    assert HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 400  # grpc-gateway 1.16
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429


# -- the gateway --------------------------------------------------------------------------------


async def test_gateway_kv_in_etcds_json(hm: HttpMember, http: aiohttp.ClientSession) -> None:
    url = f"{hm.client_url}/v3"
    status, put = await post(http, f"{url}/kv/put", {"key": b64(b"foo"), "value": b64(b"bar")})
    assert status == 200
    header = put["header"]
    assert header == {
        "cluster_id": str(hm.member.cluster_id),  # uint64 as a string
        "member_id": str(hm.member.id),
        "revision": header["revision"],
        "raft_term": str(hm.member.node.term),
    }
    rev = int(header["revision"])
    # the camelCase spelling, numbers as strings and unknown fields are accepted too
    query = {"key": b64(b"foo"), "rangeEnd": "", "limit": "5", "x": 1}
    status, got = await post(http, f"{url}/kv/range", query)
    assert status == 200
    assert got["kvs"] == [{"key": b64(b"foo"), "create_revision": str(rev),
                           "mod_revision": str(rev), "version": "1",
                           "value": b64(b"bar")}]  # fmt: skip
    assert got["count"] == "1"
    assert "more" not in got  # default values are left out, as grpc-gateway does

    txn = {
        "compare": [{"key": b64(b"foo"), "result": "EQUAL", "target": "VALUE",
                     "value": b64(b"bar")}],
        "success": [{"request_put": {"key": b64(b"foo"), "value": b64(b"baz"),
                                     "prev_kv": True}}],
    }  # fmt: skip
    status, done = await post(http, f"{url}/kv/txn", txn)
    assert status == 200 and done["succeeded"] is True
    assert done["responses"][0]["response_put"]["prev_kv"]["value"] == b64(b"bar")

    status, deleted = await post(http, f"{url}/kv/deleterange",
                                 {"key": b64(b"foo"), "prev_kv": True})  # fmt: skip
    assert (status, deleted["deleted"]) == (200, "1")
    assert deleted["prev_kvs"][0]["value"] == b64(b"baz")
    status, compacted = await post(http, f"{url}/kv/compaction", {"revision": rev})
    assert status == 200 and "header" in compacted
    status, err = await post(http, f"{url}/kv/range", {"key": b64(b"foo"), "revision": rev - 1})
    assert status == 400  # OutOfRange
    assert err["code"] == 11 and err["error"] == err["message"]
    assert err["message"] == "etcdserver: mvcc: required revision has been compacted"


async def test_gateway_errors(hm: HttpMember, http: aiohttp.ClientSession) -> None:
    url = f"{hm.client_url}/v3"
    assert await post(http, f"{url}/kv/range", {}) == (400, {
        "error": "etcdserver: key is not provided",
        "message": "etcdserver: key is not provided",
        "code": 3,
    })  # fmt: skip
    status, err = await post(http, f"{url}/kv/range", '{"key": ')
    assert (status, err["code"]) == (400, 3)
    status, err = await post(http, f"{url}/kv/range", '{"key": "Zm9v", "limit": "x"}')
    assert (status, err["code"]) == (400, 3)
    status, err = await post(http, f"{url}/kv/range", "[1]")
    assert (status, err["code"]) == (400, 3)
    status, err = await post(http, f"{url}/lease/revoke", {"ID": 1})
    assert (status, err["code"], err["message"]) == (
        404, 5, "etcdserver: requested lease not found")  # fmt: skip
    status, err = await post(http, f"{url}/auth/authenticate", {"name": "root", "password": "x"})
    assert (status, err["code"]) == (400, 9)  # FailedPrecondition: auth is not enabled
    assert await post(http, f"{url}/kv/nothing") == (404, "Not Found\n")
    async with http.get(f"{url}/kv/range") as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "POST")


async def test_gateway_leases_members_maintenance_lock(
    hm: HttpMember, http: aiohttp.ClientSession
) -> None:
    url = f"{hm.client_url}/v3"
    status, lease = await post(http, f"{url}/lease/grant", {"TTL": 30})
    assert status == 200 and lease["TTL"] == "30"
    lease_id = lease["ID"]
    assert (await post(http, f"{url}/kv/put",
                       {"key": b64(b"leased"), "lease": lease_id}))[0] == 200  # fmt: skip
    status, ttl = await post(http, f"{url}/kv/lease/timetolive", {"ID": lease_id, "keys": True})
    assert status == 200
    assert (ttl["grantedTTL"], ttl["keys"]) == ("30", [b64(b"leased")])
    status, leases = await post(http, f"{url}/lease/leases")
    assert [entry["ID"] for entry in leases["leases"]] == [lease_id]
    # keep-alive: one JSON line per request object in the body, then the stream ends
    async with http.post(f"{url}/lease/keepalive",
                         data=json.dumps({"ID": lease_id}) * 2) as resp:  # fmt: skip
        assert resp.status == 200
        lines = (await resp.text()).splitlines()
    assert [json.loads(line)["result"]["TTL"] for line in lines] == ["30", "30"]
    assert (await post(http, f"{url}/kv/lease/revoke", {"ID": lease_id}))[0] == 200
    status, got = await post(http, f"{url}/kv/range", {"key": b64(b"leased")})
    assert "kvs" not in got

    status, members = await post(http, f"{url}/cluster/member/list")
    assert [m["ID"] for m in members["members"]] == [str(hm.member.id)]
    assert members["members"][0]["name"] == "m0"
    status, st = await post(http, f"{url}/maintenance/status")
    assert (st["leader"], st["version"]) == (str(hm.member.id), "3.5.0")
    status, alarms = await post(http, f"{url}/maintenance/alarm", {"action": "GET"})
    assert (status, alarms.get("alarms", [])) == (200, [])
    status, hashed = await post(http, f"{url}/maintenance/hash")
    assert status == 200 and isinstance(hashed["hash"], int)  # uint32: a JSON number

    status, locked = await post(http, f"{url}/lock/lock", {"name": b64(b"gw-lock")})
    assert status == 200 and base64.b64decode(locked["key"]).startswith(b"gw-lock/")
    assert (await post(http, f"{url}/lock/unlock", {"key": locked["key"]}))[0] == 200
    status, won = await post(http, f"{url}/election/campaign",
                             {"name": b64(b"gw-e"), "value": b64(b"me")})  # fmt: skip
    assert status == 200
    status, leader = await post(http, f"{url}/election/leader", {"name": b64(b"gw-e")})
    assert leader["kv"]["value"] == b64(b"me")
    assert (await post(http, f"{url}/election/resign", {"leader": won["leader"]}))[0] == 200


async def test_gateway_snapshot_stream(hm: HttpMember, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{hm.client_url}/v3/maintenance/snapshot", data="{}") as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "application/json")
        chunks = [json.loads(line)["result"] async for line in resp.content]
    blob = b"".join(base64.b64decode(c.get("blob", "")) for c in chunks)
    assert int(chunks[-1].get("remaining_bytes", "0")) == 0
    assert len(blob) > 4096  # a whole bbolt file


async def test_gateway_watch_stream(hm: HttpMember, http: aiohttp.ClientSession) -> None:
    url = f"{hm.client_url}/v3"
    body = {"create_request": {"key": b64(b"w/"), "range_end": b64(b"w0"), "prev_kv": True}}
    async with http.post(f"{url}/watch", json=body) as resp:
        assert resp.status == 200
        created = json.loads(await resp.content.readline())["result"]
        assert created["created"] is True
        await post(http, f"{url}/kv/put", {"key": b64(b"w/a"), "value": b64(b"1")})
        await post(http, f"{url}/kv/put", {"key": b64(b"w/a"), "value": b64(b"2")})
        await post(http, f"{url}/kv/deleterange", {"key": b64(b"w/a")})
        events: list[dict[str, Any]] = []
        while len(events) < 3:
            line = await asyncio.wait_for(resp.content.readline(), 5)
            events += json.loads(line)["result"].get("events", [])
    assert [e.get("type", "PUT") for e in events] == ["PUT", "PUT", "DELETE"]
    assert events[1]["prev_kv"]["value"] == b64(b"1")
    assert events[2]["kv"]["key"] == b64(b"w/a")
    # the client went away: its watcher is removed
    async with asyncio.timeout(5):
        while hm.member.hub.watcher_count:
            await asyncio.sleep(0.02)


async def test_gateway_auth_uses_the_authorization_token(
    hm: HttpMember, http: aiohttp.ClientSession
) -> None:
    url = f"{hm.client_url}/v3"
    for path, body in (
        ("auth/user/add", {"name": "root", "password": "root-pw"}),
        ("auth/role/add", {"name": "root"}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/user/add", {"name": "alice", "password": "alice-pw"}),
        ("auth/enable", {}),
    ):
        assert (await post(http, f"{url}/{path}", body))[0] == 200, path
    status, auth = await post(http, f"{url}/auth/authenticate",
                              {"name": "root", "password": "root-pw"})  # fmt: skip
    assert status == 200 and auth["token"]
    status, err = await post(http, f"{url}/kv/put", {"key": b64(b"a")})
    assert (status, err["message"]) == (400, "etcdserver: user name is empty")
    status, err = await post(http, f"{url}/kv/put", {"key": b64(b"a")}, Authorization="bogus")
    assert (status, err["code"]) == (401, 16)
    assert (await post(http, f"{url}/kv/put", {"key": b64(b"a")},
                       Authorization=auth["token"]))[0] == 200  # fmt: skip
    _, alice = await post(http, f"{url}/auth/authenticate",
                          {"name": "alice", "password": "alice-pw"})  # fmt: skip
    status, err = await post(http, f"{url}/kv/range", {"key": b64(b"a")},
                             Authorization=alice["token"])  # fmt: skip
    assert (status, err["message"]) == (403, "etcdserver: permission denied")
    # a stream refused before its first message answers like a unary call
    status, err = await post(http, f"{url}/maintenance/snapshot", {},
                             Authorization=alice["token"])  # fmt: skip
    assert (status, err["code"]) == (403, 7)
    # /health reads past auth, as etcd's does
    assert (await get(http, f"{hm.client_url}/health"))[0] == 200


async def test_https_listeners_and_a_certificate_name_never_authenticates_the_gateway(
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path / "certs")  # the client certificate's CN is "root"
    m = await start_http_member(
        tmp_path / "m0",
        scheme="https",
        cert_file=str(certs.server_cert),
        key_file=str(certs.server_key),
        trusted_ca_file=str(certs.ca),
        client_cert_auth="true",
    )
    anonymous = ssl.create_default_context(cafile=str(certs.ca))
    with_cert = ssl.create_default_context(cafile=str(certs.ca))
    with_cert.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    try:
        await m.wait_leader()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as http:
            assert (await get(http, f"{m.metrics_url}/health"))[0] == 200
            url = f"{m.client_url}/v3"
            for path, body in (
                ("auth/user/add", {"name": "root", "password": "root-pw"}),
                ("auth/role/add", {"name": "root"}),
                ("auth/user/grant", {"user": "root", "role": "root"}),
                ("auth/enable", {}),
            ):
                assert (await post(http, f"{url}/{path}", body))[0] == 200, path
            # over gRPC this certificate would be user "root"; through the gateway it is no one
            status, err = await post(http, f"{url}/kv/put", {"key": b64(b"k")})
            assert (status, err["message"]) == (400, "etcdserver: user name is empty")
            _, auth = await post(http, f"{url}/auth/authenticate",
                                 {"name": "root", "password": "root-pw"})  # fmt: skip
            assert (await post(http, f"{url}/kv/put", {"key": b64(b"k")},
                               Authorization=auth["token"]))[0] == 200  # fmt: skip
        # --client-cert-auth: no certificate, no connection
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as http:
            with pytest.raises(aiohttp.ClientError):
                await get(http, f"{m.client_url}/health")
    finally:
        await m.stop()


async def test_a_stream_error_after_the_first_message_is_a_last_json_line() -> None:
    """grpc-gateway's stream error chunk, from a gRPC server that fails mid-stream."""

    async def snapshot(request: pb.SnapshotRequest, context: Any) -> AsyncIterator[Any]:
        yield pb.SnapshotResponse(remaining_bytes=1, blob=b"x")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")

    handler = grpc.method_handlers_generic_handler(
        "etcdserverpb.Maintenance",
        {"Snapshot": grpc.unary_stream_rpc_method_handler(
            snapshot, pb.SnapshotRequest.FromString, pb.SnapshotResponse.SerializeToString)},
    )  # fmt: skip
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    (port,) = free_ports(1)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    gateway = Gateway(f"127.0.0.1:{port}", max_body=1 << 20)
    app = web.Application()
    app.add_routes(gateway.routes())
    try:
        async with (
            TestServer(app) as ts,
            aiohttp.ClientSession() as http,
            http.post(ts.make_url("/v3/maintenance/snapshot"), data="{}") as resp,
        ):
            assert resp.status == 200
            lines = [json.loads(line) async for line in resp.content]
    finally:
        await gateway.close()
        await server.stop(None)
    assert lines == [
        {"result": {"remaining_bytes": "1", "blob": b64(b"x")}},
        {"error": {"grpc_code": 14, "http_code": 503, "message": "going away",
                   "http_status": "Service Unavailable"}},
    ]  # fmt: skip


def test_request_bodies() -> None:
    assert first_value(b"") == (False, None)
    assert first_value(b' {"key":"Zm9v"} {"ignored": 1}') == (True, {"key": "Zm9v"})
    req = parse({"key": "Zm9v", "range_end": "AA==", "limit": 3, "sort_order": "DESCEND"},
                pb.RangeRequest)  # fmt: skip
    assert req == pb.RangeRequest(key=b"foo", range_end=b"\0", limit=3,
                                  sort_order=pb.RangeRequest.DESCEND)  # fmt: skip
    assert parse(None, pb.RangeRequest) == pb.RangeRequest()


# -- configuration and logs ---------------------------------------------------------------------


def test_http_and_log_flags() -> None:
    base = ["--name=a", "--initial-cluster=a=http://localhost:2380"]
    cfg = load(base, {})
    assert (cfg.listen_client_http_urls, cfg.listen_metrics_urls) == ((), ())
    assert (cfg.log_level, cfg.log_format) == ("info", "json")
    cfg = load([*base, "--listen-client-http-urls=http://127.0.0.1:2381,http://[::1]:2381",
                "--listen-metrics-urls=http://0.0.0.0:2382", "--log-format=text"],
               {"ETCD_LOG_LEVEL": "DEBUG"})  # fmt: skip
    assert [str(u) for u in cfg.listen_client_http_urls] == [
        "http://127.0.0.1:2381", "http://[::1]:2381"]  # fmt: skip
    assert str(cfg.listen_metrics_urls[0]) == "http://0.0.0.0:2382"
    assert (cfg.log_level, cfg.log_format) == ("debug", "text")
    assert load(base, {"ETCD_LOG_LEVEL": "warning"}).log_level == "warn"
    with pytest.raises(ConfigError, match="--log-level: 'loud'"):
        load([*base, "--log-level=loud"], {})
    with pytest.raises(ConfigError, match="https but --cert-file"):
        load([*base, "--listen-metrics-urls=https://127.0.0.1:2382"], {})


def _log_lines(fmt: str, emit: Callable[[logging.Logger], None]) -> list[str]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure("info", fmt, member="infra1", stream=stream)
        bind_member(0x8E9E05C52164694D)
        emit(logging.getLogger("cluster.server.member"))
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return stream.getvalue().splitlines()


def test_json_log_lines_carry_level_ts_caller_member_and_fields() -> None:
    def emit(log: logging.Logger) -> None:
        log.debug("not shown at info")
        log.info("installed the leader's backend (consistent index %d)", 7, extra={"index": 7})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("the Raft loop failed")

    first, second = (json.loads(line) for line in _log_lines("json", emit))
    assert list(first)[:4] == ["level", "ts", "caller", "msg"]
    assert first["level"] == "info"
    assert first["msg"] == "installed the leader's backend (consistent index 7)"
    assert first["caller"].startswith("tests/unit/server/test_http.py:")
    assert (first["member"], first["member-id"], first["index"]) == (
        "infra1", "8e9e05c52164694d", 7)  # fmt: skip
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["stacktrace"]


def test_text_log_lines() -> None:
    [line] = _log_lines("text", lambda log: log.warning("slow fsync"))
    assert line.endswith(" WARNING infra1 cluster.server.member: slow fsync")
