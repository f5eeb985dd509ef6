"""A real member in this process: ``Member`` plus a grpc.aio server, as ``cluster.cli.serve``.

``start_member`` starts one on free loopback ports with etcd's flags (fast
ticks: 10 ms heartbeats, 100 ms election timeout) and serves every service
(``add_services``); ``LiveMember.stop`` stops both. For a single-member
cluster, ``wait_leader`` waits until it has elected itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cluster.config import load
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server.kv import grpc_server_options
from cluster.server.member import Member
from cluster.server.services import add_services
from tests.e2e.procs import free_ports


@dataclass
class LiveMember:
    member: Member
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    endpoint: str
    maintenance: pb_grpc.MaintenanceStub
    kv: pb_grpc.KVStub
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def wait_leader(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.member.leader != self.member.id:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        for close in self.closers:
            await close()
        await self.member.stop()


async def start_member(data_dir: Path, *, extra_peers: int = 0, **flags: str) -> LiveMember:
    """One member named ``m0``; ``extra_peers`` more in --initial-cluster that never start."""
    client, *peers = free_ports(2 + extra_peers)
    initial = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(peers))
    argv = [
        "--name=m0",
        f"--data-dir={data_dir}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peers[0]}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peers[0]}",
        f"--initial-cluster={initial}",
        "--heartbeat-interval=10",
        "--election-timeout=100",
        *(f"--{name.replace('_', '-')}={value}" for name, value in flags.items()),
    ]
    return await serve_member(argv, client)


async def serve_member(argv: list[str], client: int) -> LiveMember:
    """A member from etcd-style ``argv``, served on 127.0.0.1:``client`` as ``cli.serve`` does."""
    cfg = load(argv, {})
    member = Member(cfg)
    await member.start()
    server = grpc.aio.server(options=grpc_server_options(cfg.max_request_bytes))
    closers = add_services(server, member)
    endpoint = f"127.0.0.1:{client}"
    server.add_insecure_port(endpoint)
    await server.start()
    channel = grpc.aio.insecure_channel(endpoint)
    return LiveMember(
        member,
        server,
        channel,
        endpoint,
        pb_grpc.MaintenanceStub(channel),
        pb_grpc.KVStub(channel),
        closers,
    )
