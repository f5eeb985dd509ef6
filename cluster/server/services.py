"""Every gRPC service a member serves, added to one grpc.aio server (cli.serve, tests).

Each method handler is wrapped once, here, rather than by grpc.aio interceptors, which run
on every call (see handlers.py): counted (``grpc_server_*``), undecodable requests refused
cleanly, and the root-only methods checked while auth is enabled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.proto.v3electionpb import v3election_pb2_grpc
from cluster.proto.v3lockpb import v3lock_pb2_grpc

from .auth import AuthServicer
from .authz import ADMIN_METHODS, Authorizer, admin_only
from .cluster import ClusterServicer
from .election import ElectionServicer
from .handlers import Handler, MethodHandlers, Wrap
from .kv import KVServicer
from .lease import LeaseServicer
from .lock import LockServicer
from .maintenance import MaintenanceServicer
from .malformed import refuse_malformed
from .member import Member
from .metrics import MemberMetrics
from .watch import WatchServicer


def add_services(
    server: grpc.aio.Server, member: Member, *, registered: bool = False
) -> list[Callable[[], Awaitable[None]]]:
    """Add every service; what to await when the server has stopped (open links to close).

    ``registered``: add the methods as registered ones, for a server that serves only
    those itself (pygrpc-native; see grpcserver.py).
    """
    methods = MethodHandlers()
    lease = LeaseServicer(member)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthServicer(member), methods)
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(member, member.authz), methods)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(member), methods)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(member), methods)
    rpc_pb2_grpc.add_LeaseServicer_to_server(lease, methods)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchServicer(member), methods)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockServicer(member, member.authz), methods)
    v3election_pb2_grpc.add_ElectionServicer_to_server(
        ElectionServicer(member, member.authz), methods
    )
    methods.install(server, wrapper(member.metrics, member.authz), registered=registered)
    return [lease.close]


def wrapper(metrics: MemberMetrics, authz: Authorizer) -> Wrap:
    """Wraps one method's handler: metrics outermost, then malformed requests, then
    the root-only check."""

    def wrap(method: str, handler: Handler) -> Handler:
        handler = refuse_malformed(handler)
        if method in ADMIN_METHODS:
            handler = admin_only(handler, authz)
        return metrics.count_calls(method, handler)

    return wrap
