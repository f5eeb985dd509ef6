"""A real member in this process: ``Member`` plus its client gRPC servers, as ``cluster.cli.serve``.

``start_member`` starts one on free loopback ports with etcd's flags (fast
ticks: 10 ms heartbeats, 100 ms election timeout) and serves every service
(``client_servers``: pygrpc-native unless ``--experimental-grpc-server=grpcio``);
``LiveMember.stop`` stops both. For a single-member
cluster, ``wait_leader`` waits until it has elected itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cluster.bench.ports import free_ports
from cluster.config import load
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.server import member as member_module
from cluster.server.grpcserver import ClientServers, client_servers
from cluster.server.http import MemberHttp
from cluster.server.member import Member
from cluster.storage.backend import RETIRED_SUFFIX, release_retired


@dataclass
class LiveMember:
    member: Member
    servers: ClientServers
    channel: grpc.aio.Channel
    endpoint: str
    maintenance: pb_grpc.MaintenanceStub
    kv: pb_grpc.KVStub

    async def wait_leader(self, timeout: float = 5.0) -> None:
        """Until this member leads and has published itself: a member's first write, which
        retries an election timeout later when it was proposed before there was a leader,
        and could otherwise land in the middle of a test that counts log entries."""
        async with asyncio.timeout(timeout):
            while self.member.leader != self.member.id:
                await asyncio.sleep(0.01)
            await self.member.published.wait()

    async def stop(self) -> None:
        await self.channel.close()
        await self.servers.stop(None)
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
    servers = client_servers(cfg, member, MemberHttp(member))
    await servers.start()
    endpoint = f"127.0.0.1:{client}"
    channel = grpc.aio.insecure_channel(endpoint)
    return LiveMember(
        member,
        servers,
        channel,
        endpoint,
        pb_grpc.MaintenanceStub(channel),
        pb_grpc.KVStub(channel),
    )


async def start_peer(
    data_dir: Path, name: str, client: int, peers: list[int], *flags: str
) -> LiveMember:
    """Member ``name`` ("m<i>", its peer port ``peers[i]``) of the cluster of ``peers``."""
    initial = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(peers))
    own = peers[int(name[1:])]
    argv = [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{own}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{own}",
        f"--initial-cluster={initial}",
        "--heartbeat-interval=10",
        "--election-timeout=100",
        *flags,
    ]
    return await serve_member(argv, client)


async def wait_leader(members: list[LiveMember], timeout: float = 10) -> LiveMember:
    """The member that leads, once one does."""
    async with asyncio.timeout(timeout):
        while True:
            for lm in members:
                if lm.member.leader == lm.member.id:
                    return lm
            await asyncio.sleep(0.02)


def retired_db_released(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Awaitable[None]]:
    """Record the members' releases of replaced dbs; the result waits for one of ``db``.

    Waits until a release found ``db``'s retired file and freed it, so a test knows
    the old file was kept aside (not freed inside the rename) and freed afterwards.
    """
    released: list[tuple[str, bool]] = []

    def recording_release(db_path: str) -> bool:
        released.append((db_path, release_retired(db_path)))
        return released[-1][1]

    monkeypatch.setattr(member_module, "release_retired", recording_release)

    async def wait_for(db: str) -> None:
        async with asyncio.timeout(10):
            while (db, True) not in released:
                await asyncio.sleep(0.01)
        assert not os.path.exists(db + RETIRED_SUFFIX)

    return wait_for
