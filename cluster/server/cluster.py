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
        conf = m.conf
        members = []
        for peer in m.peers:
            if peer.id not in conf.voters and peer.id not in conf.learners:
                continue
            client_urls = [str(u) for u in m.cfg.advertise_client_urls] if peer.id == m.id else []
            members.append(
                pb.Member(
                    ID=peer.id,
                    name=peer.name,
                    peerURLs=[str(u) for u in peer.peer_urls],
                    clientURLs=client_urls,
                    isLearner=peer.id in conf.learners,
                )
            )
        return pb.MemberListResponse(header=m.header(), members=members)
