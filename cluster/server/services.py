"""Every gRPC service a member serves, added to one grpc.aio server (cli.serve, tests)."""

from __future__ import annotations

import grpc

from cluster.proto.etcdserverpb import rpc_pb2_grpc

from .cluster import ClusterServicer
from .kv import KVServicer
from .maintenance import MaintenanceServicer
from .member import Member


def add_services(server: grpc.aio.Server, member: Member) -> None:
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(member), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(member), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(member), server)
