"""Cluster service: the members (what `etcdctl member list` shows)."""

from __future__ import annotations

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc

from .member import Member


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def MemberList(
        self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberListResponse:
        m = self.member
        return pb.MemberListResponse(header=m.header(), members=m.members())
