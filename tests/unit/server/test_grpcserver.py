"""Which server answers which client URL (``cluster.server.grpcserver``), and that a member
answers the same through pygrpc-native (``--experimental-grpc-server=native``) as through
grpcio's own server: unary calls, etcd's error codes, a server stream, and the Watch and
LeaseKeepAlive streams pygrpc-native passes to the grpc.aio server behind it."""

from __future__ import annotations

import asyncio
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pygrpc_native.aio
import pytest

from cluster.bench.ports import free_ports
from cluster.config import GRPC_SERVERS, load
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server.grpcserver import listen_address, native_url
from tests.unit.server.live import LiveMember, start_member

BASE = [
    "--name=m0",
    "--initial-cluster=m0=http://127.0.0.1:2380",
    "--initial-advertise-peer-urls=http://127.0.0.1:2380",
]


def test_native_serves_the_first_plaintext_client_url(tmp_path: Path) -> None:
    urls = "--listen-client-urls=https://127.0.0.1:2379,http://127.0.0.1:3379,http://[::1]:4379"
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("not read here")
    tls = [f"--cert-file={tmp_path / 'c.pem'}", f"--key-file={tmp_path / 'k.pem'}"]
    native = ["--experimental-grpc-server=native"]
    assert str(native_url(load([*BASE, urls, *tls, *native], {}))) == "http://127.0.0.1:3379"
    assert native_url(load([*BASE, urls, *tls], {})) is None  # grpcio by default
    only_tls = load([*BASE, "--listen-client-urls=https://127.0.0.1:2379", *tls, *native], {})
    assert native_url(only_tls) is None  # pygrpc-native has no TLS


@pytest.fixture(params=GRPC_SERVERS)
async def member(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveMember]:
    lm = await start_member(tmp_path / "m0", experimental_grpc_server=request.param)
    try:
        await lm.wait_leader()
        yield lm
    finally:
        await lm.stop()


async def test_the_servers_built(member: LiveMember) -> None:
    (server,) = member.servers.servers
    native = member.member.cfg.grpc_server == "native"
    assert isinstance(server, pygrpc_native.aio.Server) == native


async def test_unary_calls_and_etcd_errors(member: LiveMember) -> None:
    put = await member.kv.Put(pb.PutRequest(key=b"k", value=b"v1"))
    got = await member.kv.Range(pb.RangeRequest(key=b"k"))
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"k", b"v1")]
    assert got.header.revision == put.header.revision
    assert got.header.member_id == member.member.id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await member.kv.Put(pb.PutRequest(key=b"", value=b"v"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "etcdserver: key is not provided"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await member.channel.unary_unary("/etcdserverpb.KV/Nothing")(b"")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_request_size_limits(member: LiveMember) -> None:
    """Over --max-request-bytes: etcd's "request is too large"; over the transport's own
    limit (512 KiB above it): RESOURCE_EXHAUSTED, from either server."""
    limit = member.member.cfg.max_request_bytes
    with pytest.raises(grpc.aio.AioRpcError) as too_large:
        await member.kv.Put(pb.PutRequest(key=b"k", value=b"x" * limit))
    assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_large.value.details() == "etcdserver: request is too large"
    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await member.kv.Put(pb.PutRequest(key=b"k", value=b"x" * (limit + 1024 * 1024)))
    assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await member.kv.Range(pb.RangeRequest(key=b"k"))).count == 0


async def test_streams(member: LiveMember) -> None:
    await member.kv.Put(pb.PutRequest(key=b"k", value=b"v1"))
    # a server stream (served by pygrpc-native itself)
    chunks = [c async for c in member.maintenance.Snapshot(pb.SnapshotRequest())]
    assert chunks and chunks[-1].remaining_bytes == 0
    # Watch: both ways (behind pygrpc-native, on grpc.aio)
    watch = pb_grpc.WatchStub(member.channel).Watch()
    await watch.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
    async with asyncio.timeout(5):
        created = await watch.read()
        assert created.created
        put = await member.kv.Put(pb.PutRequest(key=b"k", value=b"v2"))
        event = await watch.read()
    assert [(e.kv.value, e.kv.mod_revision) for e in event.events] == [(b"v2", put.header.revision)]
    watch.cancel()
    # LeaseKeepAlive: both ways too
    lease = pb_grpc.LeaseStub(member.channel)
    granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
    keepalive = lease.LeaseKeepAlive()
    async with asyncio.timeout(5):
        for _ in range(2):
            await keepalive.write(pb.LeaseKeepAliveRequest(ID=granted.ID))
            answer = await keepalive.read()
            assert (answer.ID, answer.TTL) == (granted.ID, 30)
    keepalive.cancel()


async def test_native_refuses_an_authority_that_is_not_host_port(tmp_path: Path) -> None:
    """The limitation the README states, and its remedy: a client given several addresses
    in one target sends them all as its ``:authority``; pygrpc-native refuses the call,
    grpcio's server does not; ``grpc.default_authority`` mends it."""
    lm = await start_member(tmp_path / "m0", experimental_grpc_server="native")
    try:
        await lm.wait_leader()
        several = f"ipv4:{lm.endpoint},{lm.endpoint}"
        async with grpc.aio.insecure_channel(several) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"k"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.INTERNAL
            assert "RST_STREAM" in (refused.value.details() or "")
        options = [("grpc.default_authority", lm.endpoint)]
        async with grpc.aio.insecure_channel(several, options=options) as channel:
            await pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"k"), timeout=5)
    finally:
        await lm.stop()


async def test_native_fallback_socket_lives_in_the_data_dir() -> None:
    """pygrpc-native's own choice, a new /tmp directory per server, would be left behind
    by every killed member; ours is in the data dir, replaced at the next start."""
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a Unix socket path is short
        data_dir = Path(short) / "m0"
        sock = data_dir / "member" / "native-fallback" / "grpc.sock"
        sock.parent.mkdir(parents=True)
        sock.write_bytes(b"")  # a killed member's leftover
        lm = await start_member(data_dir, experimental_grpc_server="native")
        try:
            await lm.wait_leader()
            assert stat.S_ISSOCK(sock.stat().st_mode)
            watch = pb_grpc.WatchStub(lm.channel).Watch()  # served through that socket
            await watch.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
            async with asyncio.timeout(5):
                assert (await watch.read()).created
            watch.cancel()
        finally:
            await lm.stop()
        assert not sock.parent.exists()


@pytest.mark.parametrize("server", GRPC_SERVERS)
async def test_an_ipv6_client_url(tmp_path: Path, server: str) -> None:
    """An IPv6 host goes to the server in brackets (without, neither server binds it)."""
    (ipv6,) = load([*BASE, "--listen-client-urls=http://[::1]:2379"], {}).listen_client_urls
    assert listen_address(ipv6) == "[::1]:2379"
    (port,) = free_ports(1)
    url = f"http://[::1]:{port}"
    lm = await start_member(
        tmp_path / "m0", experimental_grpc_server=server, listen_client_urls=url
    )
    try:
        await lm.wait_leader()
        async with grpc.aio.insecure_channel(f"[::1]:{port}") as channel:
            await pb_grpc.KVStub(channel).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
    finally:
        await lm.stop()
