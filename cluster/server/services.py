"""Every gRPC service a member serves, added to one grpc.aio server (cli.serve, tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.proto.v3electionpb import v3election_pb2_grpc
from cluster.proto.v3lockpb import v3lock_pb2_grpc

from .auth import AuthServicer
from .authz import AdminOnly
from .cluster import ClusterServicer
from .election import ElectionServicer
from .kv import KVServicer
from .lease import LeaseServicer
from .lock import LockServicer
from .maintenance import MaintenanceServicer
from .malformed import MalformedRequests
from .member import Member
from .watch import WatchServicer


def interceptors(member: Member) -> list[grpc.aio.ServerInterceptor]:
    """For ``grpc.aio.server(interceptors=...)``: metrics (grpc_server_handled_total),
    undecodable requests refused cleanly, then the root-only methods under auth."""
    return [member.metrics.interceptor(), MalformedRequests(), AdminOnly(member.authz)]


def add_services(server: grpc.aio.Server, member: Member) -> list[Callable[[], Awaitable[None]]]:
    """Add every service; what to await when the server has stopped (open links to close)."""
    lease = LeaseServicer(member)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthServicer(member), server)
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(member, member.authz), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(member), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(member), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(lease, server)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchServicer(member), server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockServicer(member, member.authz), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(
        ElectionServicer(member, member.authz), server
    )
    return [lease.close]
