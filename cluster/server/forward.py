"""Forwarding leader-only lease requests from a follower to the leader, over gRPC.

Keep-alives and remaining TTLs live only in the leader's lessor, so a follower
asks the leader. etcd forwards them over HTTP to the leader's peer URL
(``leasehttp``); here a ``LeaderForwarder`` (one per member) keeps one grpc.aio
channel to the leader's advertised client URL (``member.members()``), and on it
one ``LeaseKeepAlive`` stream that carries the keep-alives of all this
member's clients. Answers are matched to waiting requests by lease id. The
channel is replaced when the leader changes, the stream reopened when it
breaks; a request caught by either is sent again, until its deadline (the
caller's: etcd uses the request timeout). Forwarded calls carry the
``FORWARDED`` metadata: a member receiving one must answer it itself or fail
it ("etcdserver: not leader"), never forward it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import grpc

from cluster.config import ConfigError, MemberConfig, parse_url
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.tls import grpc_channel_credentials

from . import kvconv
from .kvconv import RequestError

__all__ = ["FORWARDED", "FORWARDED_KEY", "ForwardMember", "LeaderForwarder", "LeaderIsLocal"]

log = logging.getLogger(__name__)
T = TypeVar("T")

FORWARDED_KEY = "x-cluster-forwarded"
FORWARDED: tuple[tuple[str, str], ...] = ((FORWARDED_KEY, "1"),)

RETRY_INTERVAL = 0.05  # etcd throttles its forwarding retries by 50 ms
_LEADER_POLL = 0.1  # how often a waiting request checks whether the leader changed

# What a leader (or a member that just stopped leading) answers that is worth another try.
_RETRY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,  # "etcdserver: not leader"
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
    }
)


class ForwardMember(Protocol):
    """What the forwarder needs of the member."""

    @property
    def id(self) -> int: ...

    @property
    def leader(self) -> int: ...

    @property
    def request_timeout(self) -> float: ...

    @property
    def cfg(self) -> MemberConfig: ...

    def members(self) -> list[pb.Member]: ...


class LeaderIsLocal(Exception):
    """This member leads now: the caller answers the request itself."""


class _Retry(Exception):
    """The link or stream broke, or the leader changed: send the request again."""


@dataclass(eq=False)
class _KeepAliveStream:
    call: Any  # grpc.aio.StreamStreamCall
    waiters: dict[int, deque[asyncio.Future[int]]] = field(default_factory=dict)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task[None] | None = None
    broken: bool = False

    def fail(self) -> None:
        """Mark broken; every request waiting on it is sent again."""
        self.broken = True
        for queue in self.waiters.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(_Retry())
        self.waiters.clear()


@dataclass(eq=False)
class _Link:
    leader: int
    target: str
    channel: grpc.aio.Channel
    stub: pb_grpc.LeaseAsyncStub
    stream: _KeepAliveStream | None = None


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def grpc_target(client_url: str) -> str | None:
    """``host:port`` for a client URL (``http://127.0.0.1:2379``); None if it does not parse."""
    try:
        url = parse_url(client_url, "advertise-client-urls")
    except ConfigError:
        return None
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}"


class LeaderForwarder:
    """One member's link to the current leader; see the module docstring."""

    def __init__(self, member: ForwardMember, *, retry_interval: float = RETRY_INTERVAL) -> None:
        self._member = member
        self._retry_interval = retry_interval
        self._link: _Link | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- requests ----------------------------------------------------------------------------
    async def renew(self, lease_id: int, deadline: float) -> int:
        """The leader's keep-alive answer for ``lease_id``: its TTL, 0 if not found.

        Raises ``LeaderIsLocal`` when this member leads, ``RequestError`` at the
        loop-time ``deadline`` ("no leader" if none was seen, else "request timed
        out") or for an answer that is not worth retrying.
        """
        return await self._retrying(lambda link: self._renew_on(link, lease_id, deadline), deadline)

    async def time_to_live(
        self, request: pb.LeaseTimeToLiveRequest, deadline: float
    ) -> pb.LeaseTimeToLiveResponse:
        """The leader's LeaseTimeToLive answer (TTL -1: not found); raises as ``renew``."""

        async def call(link: _Link) -> pb.LeaseTimeToLiveResponse:
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
            resp: pb.LeaseTimeToLiveResponse = await self._watch_leader(
                link,
                link.stub.LeaseTimeToLive(request, timeout=remaining, metadata=FORWARDED),
                deadline,
            )
            return resp

        return await self._retrying(call, deadline)

    async def close(self) -> None:
        """Close the link (a later request opens a new one)."""
        link, self._link = self._link, None
        if link is not None:
            self._drop(link)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------
    async def _retrying(self, attempt: Callable[[_Link], Awaitable[T]], deadline: float) -> T:
        """Run ``attempt`` on the link to the current leader until it answers or ``deadline``."""
        loop = asyncio.get_running_loop()
        seen_leader = False
        while True:
            if loop.time() >= deadline:
                raise RequestError(*(kvconv.ERR_TIMEOUT if seen_leader else kvconv.ERR_NO_LEADER))
            link = self._current()
            if link is not None:
                seen_leader = True
                try:
                    return await attempt(link)
                except _Retry:
                    pass
                except grpc.aio.AioRpcError as err:
                    if err.code() not in _RETRY_CODES:
                        raise RequestError(err.code(), err.details() or "") from err
                    log.debug("forwarding to %x: %s: retrying", link.leader, err.details())
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        self._drop_if_current(link)
            await asyncio.sleep(max(0.0, min(self._retry_interval, deadline - loop.time())))

    def _current(self) -> _Link | None:
        """The link to the current leader (made anew if the leader changed); None if no
        leader, or its client URL is not known yet."""
        member = self._member
        lead = member.leader
        if lead == member.id:
            link, self._link = self._link, None
            if link is not None:
                self._drop(link)
            raise LeaderIsLocal()
        link = self._link
        if link is not None and link.leader == lead:
            return link
        if link is not None:
            self._link = None
            self._drop(link)
        if lead == 0:
            return None
        target = None
        secure = False
        for m in member.members():
            if lead == m.ID:
                url = next((u for u in m.clientURLs if grpc_target(u)), None)
                if url is not None:
                    target, secure = grpc_target(url), url.startswith("https:")
                break
        if target is None:
            return None
        tls = member.cfg.client_tls
        if secure and tls is not None:
            channel = grpc.aio.secure_channel(target, grpc_channel_credentials(tls))
        else:
            channel = grpc.aio.insecure_channel(target)
        stub = cast("pb_grpc.LeaseAsyncStub", pb_grpc.LeaseStub(channel))
        self._link = _Link(lead, target, channel, stub)
        log.debug("forwarding lease requests to leader %x at %s", lead, target)
        return self._link

    def _drop_if_current(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        """Close a link in the background; its waiting requests are sent again."""
        if link.stream is not None:
            link.stream.fail()
            if link.stream.reader is not None:
                link.stream.reader.cancel()
            link.stream = None
        task = asyncio.get_running_loop().create_task(link.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _watch_leader(self, link: _Link, aw: Awaitable[T], deadline: float) -> T:
        """Await ``aw``, giving up (``_Retry``) as soon as the leader changes."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(aw)
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestError(*kvconv.ERR_TIMEOUT)
                done, _ = await asyncio.wait({task}, timeout=min(_LEADER_POLL, remaining))
                if done:
                    return task.result()
                if self._member.leader != link.leader:
                    self._drop_if_current(link)
                    raise _Retry()
        finally:
            if not task.done():
                task.cancel()
            task.add_done_callback(_consume)

    async def _stream(self, link: _Link) -> _KeepAliveStream:
        stream = link.stream
        if stream is None or stream.broken:
            call = link.stub.LeaseKeepAlive(metadata=FORWARDED)
            stream = link.stream = _KeepAliveStream(call)
            stream.reader = asyncio.get_running_loop().create_task(self._read(link, stream))
        return stream

    async def _read(self, link: _Link, stream: _KeepAliveStream) -> None:
        """Hand each answer of the leader's stream to a request waiting for that lease."""
        try:
            while True:
                resp = await stream.call.read()
                if resp is grpc.aio.EOF:
                    break
                queue = stream.waiters.get(resp.ID)
                while queue:
                    fut = queue.popleft()
                    if not fut.done():
                        fut.set_result(resp.TTL)
                        break
                if queue is not None and not queue:
                    del stream.waiters[resp.ID]
        except grpc.aio.AioRpcError as err:
            log.debug("keep-alive stream to %x ended: %s", link.leader, err.details())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("keep-alive stream to %x failed", link.leader)
        finally:
            stream.fail()
            if link.stream is stream:
                link.stream = None
            stream.call.cancel()

    async def _renew_on(self, link: _Link, lease_id: int, deadline: float) -> int:
        stream = await self._stream(link)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stream.waiters.setdefault(lease_id, deque()).append(fut)
        try:
            async with stream.write_lock:
                if stream.broken:
                    raise _Retry()
                try:
                    await stream.call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                except (
                    grpc.aio.AioRpcError,
                    grpc.aio.UsageError,
                    asyncio.InvalidStateError,
                ) as exc:
                    stream.fail()
                    raise _Retry() from exc
            return await self._watch_leader(link, asyncio.shield(fut), deadline)
        finally:
            if not fut.done():
                fut.cancel()
