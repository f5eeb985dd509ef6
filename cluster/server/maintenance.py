"""Maintenance service: member status (what `etcdctl endpoint status` shows)."""

from __future__ import annotations

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc

from .member import Member

VERSION = "3.5.0"
"""The etcd API version we speak; clients gate features on it."""


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        m = self.member
        raft_log = m.node.log
        return pb.StatusResponse(
            header=m.header(),
            version=VERSION,
            dbSize=m.backend.size_bytes(),
            dbSizeInUse=m.backend.size_in_use_bytes(),
            leader=m.leader,
            raftIndex=raft_log.committed,
            raftTerm=m.node.term,
            raftAppliedIndex=raft_log.applied,
            isLearner=m.node.is_learner,
            dbSizeQuota=m.cfg.quota_backend_bytes,
        )
