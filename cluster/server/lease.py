"""The Lease gRPC service (grpc.aio), as etcd's v3rpc/lease.go and its EtcdServer methods.

- ``LeaseGrant``: a TTL above ``MAX_LEASE_TTL`` is refused before proposing
  ("etcdserver: too large lease TTL"); ID 0 gets a positive 63-bit id from
  etcd's request id generator (``IdGenerator``); the grant goes through Raft
  (``member.write``), whose applier raises a TTL below the minimum and refuses
  an id in use ("etcdserver: lease already exists").
- ``LeaseRevoke``: through Raft; the applier deletes the lease's keys at one
  revision. Unknown: "etcdserver: requested lease not found".
- ``LeaseKeepAlive``: each request is renewed in the leader's lessor; its
  answer carries the header taken before the renew (as etcd) and TTL 0 for a
  lease not found (or expired, its revoke on its way). The leader first waits
  for its applied index when it does not know the lease (etcd's
  ``waitAppliedIndex``), so a lease just granted is found. A follower forwards
  to the leader (``LeaderForwarder``). Requests of one stream are answered as
  they complete; any other error ends the stream, as etcd.
- ``LeaseTimeToLive``: remaining TTL on the leader after its applied index
  caught up (forwarded from a follower, the remaining TTL being the leader's
  own); an unknown lease is answered with TTL -1, as etcd.
- ``LeaseLeases``: this member's leases after a linearizable barrier.

Headers are this member's (cluster_id, member_id, revision, raft_term).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from cluster.lease import MAX_LEASE_TTL, NO_LEASE, LeaseNotFoundError, NotPrimaryError
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from . import kvconv
from .forward import FORWARDED_KEY, LeaderForwarder, LeaderIsLocal
from .ids import IdGenerator
from .kvconv import RequestError
from .member import Member

__all__ = ["ERR_LEASE_EXIST", "ERR_LEASE_TTL_TOO_LARGE", "IdGenerator", "LeaseServicer"]

ERR_LEASE_EXIST: kvconv.ErrorSpec = (
    grpc.StatusCode.FAILED_PRECONDITION,
    "etcdserver: lease already exists",
)
ERR_LEASE_TTL_TOO_LARGE: kvconv.ErrorSpec = (
    grpc.StatusCode.OUT_OF_RANGE,
    "etcdserver: too large lease TTL",
)

MAX_KEEPALIVES_IN_FLIGHT = 128  # per stream; reading the stream waits beyond it
_ID_MASK = (1 << 63) - 1


def _status(err: RequestError) -> grpc.StatusCode:
    """The error's status code; the applier gives lessor errors' codes by name."""
    code: object = err.code
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode[str(code)]


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(_status(err), err.message)
    raise AssertionError("context.abort returned")  # it raises


def _forwarded(context: Any) -> bool:
    """Whether another member forwarded this call (it must not be forwarded again)."""
    return any(key == FORWARDED_KEY for key, _ in context.invocation_metadata() or ())


class LeaseServicer(pb_grpc.LeaseServicer):
    """etcd's Lease service over a ``Member``; see the module docstring."""

    def __init__(self, member: Member) -> None:
        self._member = member
        self._ids: IdGenerator | None = None
        self.forwarder = LeaderForwarder(member)

    async def close(self) -> None:
        """Close the link to the leader, if any."""
        await self.forwarder.close()

    # -- unary --------------------------------------------------------------------------------
    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: Any
    ) -> pb.LeaseGrantResponse:
        try:
            return await self.grant(request)
        except RequestError as err:
            await _abort(context, err)

    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: Any
    ) -> pb.LeaseRevokeResponse:
        member = self._member
        try:
            lease = member.lessor.lookup(request.ID)
            if lease is not None:  # revoking deletes the keys: the caller must be able to
                member.authz.keys_writable(await member.authz.info(context), lease.keys)
            resp = await member.write(pb.LeaseRevokeRequest(ID=request.ID))
        except RequestError as err:
            await _abort(context, err)
        assert isinstance(resp, pb.LeaseRevokeResponse), type(resp)
        return resp

    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Any
    ) -> pb.LeaseTimeToLiveResponse:
        try:
            resp = await self.time_to_live(request, forwarded=_forwarded(context))
            # the attached keys' names are data: reveal them only to who may read them all
            authz = self._member.authz
            authz.keys_readable(await authz.info(context), resp.keys)
            return resp
        except RequestError as err:
            await _abort(context, err)

    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: Any
    ) -> pb.LeaseLeasesResponse:
        member = self._member
        try:
            await member.linearizable_barrier()
        except RequestError as err:
            await _abort(context, err)
        leases = [pb.LeaseStatus(ID=lease_id) for lease_id in member.lessor.leases()]
        return pb.LeaseLeasesResponse(header=member.header(), leases=leases)

    # -- keep-alive stream ---------------------------------------------------------------------
    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest], context: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        forwarded = _forwarded(context)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[pb.LeaseKeepAliveResponse | RequestError | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_KEEPALIVES_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(lease_id: int) -> None:
            try:
                header = self._member.header()  # before the renew, as etcd
                ttl = await self.renew(lease_id, forwarded=forwarded)
                out.put_nowait(pb.LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl))
            except RequestError as err:
                out.put_nowait(err)
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await slots.acquire()
                    task = loop.create_task(answer(req.ID))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:  # the client is done sending: answer what it asked, then end
                    await asyncio.wait(set(tasks))
            except Exception:  # the client went away: end the stream
                pass
            finally:
                out.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if isinstance(item, RequestError):
                    await _abort(context, item)
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # -- the requests, raising RequestError (usable without gRPC) -------------------------------
    async def grant(self, request: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL:
            raise RequestError(*ERR_LEASE_TTL_TOO_LARGE)
        lease_id = request.ID
        attempts = 3 if lease_id == NO_LEASE else 1  # a picked id in use: pick another
        for attempt in range(attempts):
            if request.ID == NO_LEASE:
                lease_id = self._next_id()
            try:
                resp = await self._member.write(pb.LeaseGrantRequest(ID=lease_id, TTL=request.TTL))
            except RequestError as err:
                if err.message == ERR_LEASE_EXIST[1] and attempt + 1 < attempts:
                    continue
                raise
            assert isinstance(resp, pb.LeaseGrantResponse), type(resp)
            return resp
        raise AssertionError("unreachable")

    def _next_id(self) -> int:
        """A positive 63-bit id, as etcd's LeaseGrant picks one (from its request ids)."""
        if self._ids is None:
            self._ids = IdGenerator(self._member.id, time.time_ns() // 1_000_000)
        while True:
            lease_id = self._ids.next() & _ID_MASK
            if lease_id != NO_LEASE:
                return lease_id

    async def renew(self, lease_id: int, *, forwarded: bool = False) -> int:
        """etcd's LeaseRenew: the lease's TTL, 0 if not found; the leader's if this is not it."""
        member = self._member
        loop = asyncio.get_running_loop()
        deadline = loop.time() + member.request_timeout
        while True:
            if member.lessor.is_primary:
                try:
                    return await self._renew_local(lease_id)
                except NotPrimaryError:
                    pass  # stopped leading meanwhile: ask the new leader
            if forwarded:
                raise RequestError(*kvconv.ERR_NOT_LEADER)
            try:
                return await self.forwarder.renew(lease_id, deadline)
            except LeaderIsLocal:
                if loop.time() >= deadline:
                    raise RequestError(*kvconv.ERR_TIMEOUT) from None
                if not member.lessor.is_primary:  # leading, not promoted yet: give it a moment
                    await asyncio.sleep(0.01)

    async def _renew_local(self, lease_id: int) -> int:
        member = self._member
        if member.lessor.lookup(lease_id) is None:
            await member.linearizable_barrier()  # etcd's waitAppliedIndex: a new lease applied
        try:
            return member.lessor.renew(lease_id, asyncio.get_running_loop().time())
        except LeaseNotFoundError:  # also LeaseExpiredError: etcd answers it after the revoke
            return 0

    async def time_to_live(
        self, request: pb.LeaseTimeToLiveRequest, *, forwarded: bool = False
    ) -> pb.LeaseTimeToLiveResponse:
        """etcd's LeaseTimeToLive: TTL -1 for a lease not found; the leader answers it."""
        member = self._member
        loop = asyncio.get_running_loop()
        deadline = loop.time() + member.request_timeout
        while True:
            if member.lessor.is_primary:
                await member.linearizable_barrier()  # etcd's waitAppliedIndex
                resp = self._time_to_live_local(request)
                break
            if forwarded:
                raise RequestError(*kvconv.ERR_NOT_LEADER)
            try:
                resp = await self.forwarder.time_to_live(request, deadline)
                break
            except LeaderIsLocal:
                if loop.time() >= deadline:
                    raise RequestError(*kvconv.ERR_TIMEOUT) from None
                if not member.lessor.is_primary:
                    await asyncio.sleep(0.01)
        resp.header.Clear()  # this member's header, also on a leader's answer
        member.fill_header(resp.header)
        return resp

    def _time_to_live_local(self, request: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        lessor = self._member.lessor
        lease = lessor.lookup(request.ID)
        if lease is None:
            return pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        granted, remaining, keys = lessor.time_to_live(
            request.ID, asyncio.get_running_loop().time()
        )
        if lease.demoted:  # the leader changed meanwhile: its remaining TTL is not known here
            raise RequestError(*kvconv.ERR_LEADER_CHANGED)
        resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=remaining, grantedTTL=granted)
        if request.keys:
            resp.keys.extend(keys)
        return resp
