"""The Election gRPC service (etcd's v3election): leader election among leases.

Campaign waits until the caller leads the named election (its key, under
``name/``, is the oldest) and answers its ``LeaderKey``; Proclaim sets the
leader's value, Resign gives leadership up, Leader answers the leader's key,
Observe streams the leader's key and each of its changes. The recipe is
``cluster.server.concurrency``'s; ``LeaderKey.rev`` is the fencing token. As
etcd, Proclaim and Resign need the ``leader`` field ('"leader" field must be
provided'), Proclaim by a former leader fails with "election: not leader",
Leader with no candidate with "election: no leader" (code UNKNOWN, as etcd's
plain errors). Observe ends with the error of a failed read (etcd ends the
stream without one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

from cluster.proto.v3electionpb import v3election_pb2 as epb
from cluster.proto.v3electionpb import v3election_pb2_grpc as election_grpc

from .authz import Authorizer
from .concurrency import ERR_MISSING_LEADER_KEY, ConcurrencyMember, Election, LeaderKey
from .kvconv import RequestError

__all__ = ["ElectionServicer"]


def _leader_key(request: epb.ProclaimRequest | epb.ResignRequest) -> LeaderKey:
    if not request.HasField("leader"):
        raise RequestError(*ERR_MISSING_LEADER_KEY)
    lk = request.leader
    return LeaderKey(lk.name, lk.key, lk.rev, lk.lease)


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")  # it raises


class ElectionServicer(election_grpc.ElectionServicer):
    """etcd's v3election.Election service over a member."""

    def __init__(self, member: ConcurrencyMember, authz: Authorizer | None = None) -> None:
        self._election = Election(member)
        self._authz = authz

    async def _check(self, context: Any, name: bytes) -> None:
        """Read and write on the election's prefix (``name/``) for the caller."""
        if self._authz is not None:
            self._authz.prefix(await self._authz.info(context), name + b"/")

    async def Campaign(self, request: epb.CampaignRequest, context: Any) -> epb.CampaignResponse:
        try:
            await self._check(context, request.name)
            header, lk = await self._election.campaign(request.name, request.lease, request.value)
        except RequestError as err:
            await _abort(context, err)
        return epb.CampaignResponse(
            header=header,
            leader=epb.LeaderKey(name=lk.name, key=lk.key, rev=lk.rev, lease=lk.lease),
        )

    async def Proclaim(self, request: epb.ProclaimRequest, context: Any) -> epb.ProclaimResponse:
        try:
            await self._check(context, request.leader.name)
            header = await self._election.proclaim(_leader_key(request), request.value)
        except RequestError as err:
            await _abort(context, err)
        return epb.ProclaimResponse(header=header)

    async def Resign(self, request: epb.ResignRequest, context: Any) -> epb.ResignResponse:
        try:
            await self._check(context, request.leader.name)
            header = await self._election.resign(_leader_key(request))
        except RequestError as err:
            await _abort(context, err)
        return epb.ResignResponse(header=header)

    async def Leader(self, request: epb.LeaderRequest, context: Any) -> epb.LeaderResponse:
        try:
            await self._check(context, request.name)
            header, kv = await self._election.leader(request.name)
        except RequestError as err:
            await _abort(context, err)
        return epb.LeaderResponse(header=header, kv=kv)

    async def Observe(
        self, request: epb.LeaderRequest, context: Any
    ) -> AsyncIterator[epb.LeaderResponse]:
        try:
            await self._check(context, request.name)
        except RequestError as err:
            await _abort(context, err)
        observed = self._election.observe(request.name)
        try:
            async for header, kv in observed:
                yield epb.LeaderResponse(header=header, kv=kv)
        except RequestError as err:
            await _abort(context, err)
        finally:
            await observed.aclose()
