"""Cluster service: the members (`etcdctl member list/add/remove/promote/update`).

Membership changes go through Raft as conf change entries (``Member.change_membership``);
a request answers once its change is applied on the member that took it. What this
member can check by itself (unknown member, peer URL in use, promoting a voter) is
refused at once with etcd's error. A change proposed while another is still being
applied waits for it, then is proposed again (still refused: "etcdserver: unhealthy
cluster"). The Raft core's own refusals (a learner not caught up: etcd's "in sync with
leader" error) are reported when this member is the leader; a follower forwards the
proposal to the leader, which drops a refused one silently, so the client sees
"etcdserver: request timed out" instead. A member that applies its own removal sets
``Member.removed``; ``cluster.cli.serve`` then stops the process (as etcd does).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NoReturn

import grpc

from cluster.config import URL, ConfigError, compute_member_id, parse_url
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.raft import ConfChangeType

from . import kvconv, reconfig
from .kvconv import RequestError
from .member import Member


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")  # it raises


def _parse_peer_urls(texts: list[str]) -> tuple[URL, ...]:
    if not texts:
        raise RequestError(*kvconv.ERR_MEMBER_BAD_URLS)
    try:
        return tuple(parse_url(t, "peer-urls") for t in texts)
    except ConfigError as exc:
        raise RequestError(*kvconv.ERR_MEMBER_BAD_URLS) from exc


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def MemberList(
        self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberListResponse:
        m = self.member
        return pb.MemberListResponse(header=m.header(), members=m.members())

    async def MemberAdd(
        self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberAddResponse:
        try:
            return await self.member_add(request)
        except RequestError as err:
            await _abort(context, err)

    async def MemberRemove(
        self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberRemoveResponse:
        try:
            return await self.member_remove(request)
        except RequestError as err:
            await _abort(context, err)

    async def MemberPromote(
        self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberPromoteResponse:
        try:
            return await self.member_promote(request)
        except RequestError as err:
            await _abort(context, err)

    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberUpdateResponse:
        try:
            return await self.member_update(request)
        except RequestError as err:
            await _abort(context, err)

    # -- the requests, raising RequestError (usable without gRPC) ---------------------------
    def _check_urls_free(self, urls: tuple[URL, ...], except_id: int = 0) -> None:
        wanted = {str(u) for u in urls}
        for other in self.member.members():
            if except_id == other.ID:
                continue
            used = set()
            for text in other.peerURLs:
                try:
                    used.add(str(parse_url(text, "peer-urls")))
                except ConfigError:
                    used.add(text)
            if wanted & used:
                raise RequestError(*kvconv.ERR_PEER_URL_EXIST)

    async def member_add(self, request: pb.MemberAddRequest) -> pb.MemberAddResponse:
        m = self.member
        urls = _parse_peer_urls(list(request.peerURLs))
        self._check_urls_free(urls)
        member_id = compute_member_id(urls, m.cfg.initial_cluster_token, int(time.time()))
        if member_id in m.conf.voters | m.conf.learners:
            raise RequestError(*kvconv.ERR_MEMBER_EXIST)
        if m.cfg.strict_reconfig_check:
            reconfig.check_add(
                m.members(),
                learner=request.isLearner,
                local_id=m.id,
                active_since=m.transport.active_since,
                now=asyncio.get_running_loop().time(),
            )
        attrs = pb.Member(
            ID=member_id, peerURLs=[str(u) for u in urls], isLearner=request.isLearner
        )
        kind = ConfChangeType.ADD_LEARNER_NODE if request.isLearner else ConfChangeType.ADD_NODE
        await m.change_membership(kind, member_id, attrs)
        return pb.MemberAddResponse(header=m.header(), member=attrs, members=m.members())

    def _known(self, member_id: int) -> None:
        conf = self.member.conf
        if member_id not in conf.voters | conf.learners:
            raise RequestError(*kvconv.ERR_MEMBER_NOT_FOUND)

    async def member_remove(self, request: pb.MemberRemoveRequest) -> pb.MemberRemoveResponse:
        m = self.member
        self._known(request.ID)
        if m.cfg.strict_reconfig_check:
            reconfig.check_remove(
                m.members(),
                request.ID,
                local_id=m.id,
                active_since=m.transport.active_since,
                now=asyncio.get_running_loop().time(),
            )
        await m.change_membership(ConfChangeType.REMOVE_NODE, request.ID)
        return pb.MemberRemoveResponse(header=m.header(), members=m.members())

    async def member_promote(self, request: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        m = self.member
        self._known(request.ID)
        if request.ID not in m.conf.learners:
            raise RequestError(*kvconv.ERR_MEMBER_NOT_LEARNER)
        if m.cfg.strict_reconfig_check:
            reconfig.check_promote(m.members())
        await m.change_membership(ConfChangeType.ADD_NODE, request.ID)
        return pb.MemberPromoteResponse(header=m.header(), members=m.members())

    async def member_update(self, request: pb.MemberUpdateRequest) -> pb.MemberUpdateResponse:
        m = self.member
        self._known(request.ID)
        urls = _parse_peer_urls(list(request.peerURLs))
        self._check_urls_free(urls, except_id=request.ID)
        update = pb.MemberUpdateRequest(ID=request.ID, peerURLs=[str(u) for u in urls])
        await m.write(update)
        return pb.MemberUpdateResponse(header=m.header(), members=m.members())
