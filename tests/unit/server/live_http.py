"""A real member in this process with its HTTP listeners, as ``cluster.cli.serve`` runs it.

``start_http_member`` starts one (like ``live.start_member``: fast ticks, free loopback
ports) with ``--listen-client-http-urls`` and ``--listen-metrics-urls``, its client gRPC
servers (``client_servers``, the gateway's socket among them); ``HttpMember.stop`` stops it
all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc

from cluster.bench.ports import free_ports
from cluster.config import load
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server.grpcserver import ClientServers, client_servers
from cluster.server.http import MemberHttp
from cluster.server.member import Member


@dataclass
class HttpMember:
    member: Member
    servers: ClientServers
    http: MemberHttp
    channel: grpc.aio.Channel
    client_url: str  # the gateway's listener: http://127.0.0.1:<port>
    metrics_url: str  # the metrics listener
    maintenance: pb_grpc.MaintenanceStub
    kv: pb_grpc.KVStub

    async def wait_leader(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.member.leader != self.member.id:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.channel.close()
        await self.http.stop()
        await self.servers.stop(None)
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
    servers = client_servers(cfg, member, http)
    await servers.start()
    await http.start_clients()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{client}")
    return HttpMember(
        member,
        servers,
        http,
        channel,
        f"{scheme}://127.0.0.1:{http_port}",
        f"{scheme}://127.0.0.1:{metrics_port}",
        pb_grpc.MaintenanceStub(channel),
        pb_grpc.KVStub(channel),
    )
