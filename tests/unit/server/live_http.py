"""A real member in this process with its HTTP listeners, as ``cluster.cli.serve`` runs it.

``start_http_member`` starts one (like ``live.start_member``: fast ticks, free loopback
ports) with ``--listen-client-http-urls`` and ``--listen-metrics-urls``, the gRPC server
with its counted handlers and the gateway's socket; ``HttpMember.stop`` stops it all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cluster.config import load
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server.http import MemberHttp
from cluster.server.kv import grpc_server_options
from cluster.server.member import Member
from cluster.server.services import add_services
from tests.e2e.procs import free_ports


@dataclass
class HttpMember:
    member: Member
    server: grpc.aio.Server
    http: MemberHttp
    channel: grpc.aio.Channel
    client_url: str  # the gateway's listener: http://127.0.0.1:<port>
    metrics_url: str  # the metrics listener
    maintenance: pb_grpc.MaintenanceStub
    kv: pb_grpc.KVStub
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def wait_leader(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.member.leader != self.member.id:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.channel.close()
        await self.http.stop()
        await self.server.stop(None)
        for close in self.closers:
            await close()
        await self.member.stop()


async def start_http_member(
    data_dir: Path,
    *,
    extra_peers: int = 0,
    wait_published: bool = True,
    scheme: str = "http",
    **flags: str,
) -> HttpMember:
    """One member named ``m0``; ``extra_peers`` more in --initial-cluster that never start.

    Without a quorum (``extra_peers`` >= 1) pass ``wait_published=False``: the gRPC server
    and the gateway then start at once instead of after the member published itself.
    ``scheme`` "https" serves both HTTP listeners with TLS (pass --cert-file ... flags).
    """
    client, http_port, metrics_port, *peers = free_ports(4 + extra_peers)
    initial = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(peers))
    argv = [
        "--name=m0",
        f"--data-dir={data_dir}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-client-http-urls={scheme}://127.0.0.1:{http_port}",
        f"--listen-metrics-urls={scheme}://127.0.0.1:{metrics_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peers[0]}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peers[0]}",
        f"--initial-cluster={initial}",
        "--heartbeat-interval=10",
        "--election-timeout=100",
        *(f"--{name.replace('_', '-')}={value}" for name, value in flags.items()),
    ]
    cfg = load(argv, {})
    member = Member(cfg)
    await member.start()
    http = MemberHttp(member)
    await http.start_metrics()
    if wait_published:
        async with asyncio.timeout(10):
            await member.published.wait()
    server = grpc.aio.server(options=grpc_server_options(cfg.max_request_bytes))
    closers = add_services(server, member)
    http.add_gateway_port(server)
    server.add_insecure_port(f"127.0.0.1:{client}")
    await server.start()
    await http.start_clients()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{client}")
    return HttpMember(
        member,
        server,
        http,
        channel,
        f"{scheme}://127.0.0.1:{http_port}",
        f"{scheme}://127.0.0.1:{metrics_port}",
        pb_grpc.MaintenanceStub(channel),
        pb_grpc.KVStub(channel),
        closers,
    )
