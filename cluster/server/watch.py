"""Watch service (grpc.aio): etcd's v3rpc/watch.go over the member's watch hub.

One ``Watch`` call is one bidirectional stream and one ``cluster.watch.WatchStream``
of the member's hub. A reader task turns the client's requests into stream calls:
``create_request`` (key, range_end, start_revision, filters, prev_kv, progress_notify,
watch_id, fragment) -> ``WatchStream.watch``; ``cancel_request`` -> ``cancel``;
``progress_request`` -> ``request_progress``; anything else is ignored, as etcd does.
The call's own coroutine is the sender: it waits for the stream's wake callback and
writes what ``take()`` returns, a few responses at a time so that the hub's bound on a
stream's undrained output stays meaningful (a client that does not read stalls these
writes through gRPC flow control; the hub then moves its watchers to the unsynced group
and reads their events back from the store once the client reads again: writers never
wait for watchers).

Every response's header carries the revision the hub gave it (etcd's
``newResponseHeader(rev)``) and the member's cluster id, member id and term. A refused
create (an empty key range, a watch id in use) is answered ``created`` and ``canceled``
with etcd's reason; a start revision compacted away is answered ``created``, then
``canceled`` with ``compact_revision``. An unexpected error while handling one request
is logged and answered as a refused create (for a create), never ending the stream, so
the stream's other watchers go on. Once the client half-closes the stream keeps sending
(as etcd's); when the call ends (the client cancels or disconnects, the server stops)
the hub stream is closed and its watchers removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Final, NoReturn, Protocol

import grpc

from cluster.auth import AuthInfo
from cluster.config import MemberConfig
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.proto.mvccpb import kv_pb2
from cluster.watch import INVALID_WATCH_ID, Event, WatchHub, WatchResponse, WatchStream

from .authz import Authorizer
from .kvconv import ERR_NO_LEADER, RequestError, set_kv

__all__ = ["WatchMember", "WatchServicer", "to_pb"]

log = logging.getLogger(__name__)

# Responses taken from the hub stream per write burst: small, so that what the hub
# counts as undrained is close to what the client has not received yet.
TAKE_BATCH: Final = 64

# etcd's maxNoLeaderCnt: a stream that requires a leader ends after this many election
# timeouts in a row without one.
MAX_NO_LEADER_COUNT: Final = 3
# The metadata etcd's clients send with clientv3.WithRequireLeader (etcdctl watch does).
REQUIRE_LEADER: Final = ("hasleader", "true")

_NOPUT: Final = pb.WatchCreateRequest.NOPUT
_NODELETE: Final = pb.WatchCreateRequest.NODELETE


class WatchMember(Protocol):
    """What the Watch service needs of the member."""

    @property
    def hub(self) -> WatchHub: ...

    @property
    def leader(self) -> int:
        """The leader this member knows of; 0 for none."""
        ...

    @property
    def cfg(self) -> MemberConfig: ...

    @property
    def authz(self) -> Authorizer: ...

    def fill_header(self, header: pb.ResponseHeader) -> None: ...


def _add_event(resp: pb.WatchResponse, ev: Event) -> None:
    out = resp.events.add(type=kv_pb2.Event.EventType.ValueType(ev.type))
    set_kv(out.kv, ev.kv)
    if ev.prev_kv is not None:
        set_kv(out.prev_kv, ev.prev_kv)


def to_pb(
    resp: WatchResponse, fill_header: Callable[[pb.ResponseHeader], None]
) -> pb.WatchResponse:
    """A hub response as etcd's WatchResponse; ``fill_header`` adds the member's fields."""
    out = pb.WatchResponse(
        watch_id=resp.watch_id,
        created=resp.created,
        canceled=resp.canceled,
        compact_revision=resp.compact_revision,
        cancel_reason=resp.cancel_reason,
        fragment=resp.fragment,
    )
    out.header.revision = resp.revision
    fill_header(out.header)
    for ev in resp.events:
        _add_event(out, ev)
    return out


class _Gone(Exception):
    """A response could not be written: the call is over."""


class _Call:
    """One Watch call: its hub stream, reader task and sender loop."""

    def __init__(
        self, member: WatchMember, context: grpc.aio.ServicerContext, info: AuthInfo | None
    ) -> None:
        self.member = member
        self.context = context
        self.info = info  # who opened the stream (auth enabled), checked on every create
        self.wake = asyncio.Event()
        self.stream: WatchStream = member.hub.new_stream(self.wake.set)
        # Answers made here rather than by the hub (a create that failed unexpectedly).
        self.extra: deque[pb.WatchResponse] = deque()
        self.lost_leader = False

    # -- requests ------------------------------------------------------------------------
    async def read(self, requests: AsyncIterable[pb.WatchRequest]) -> None:
        async for req in requests:
            kind = req.WhichOneof("request_union")
            try:
                if kind == "create_request":
                    self.create(req.create_request)
                elif kind == "cancel_request":
                    self.stream.cancel(req.cancel_request.watch_id)
                elif kind == "progress_request":
                    self.stream.request_progress()
                # else: an unknown request is ignored, as etcd does
            except Exception as exc:
                log.exception("watch: %s failed", kind)
                if kind == "create_request":
                    self.refuse(str(exc) or type(exc).__name__)

    def create(self, c: pb.WatchCreateRequest) -> None:
        try:  # the whole watched range must be readable
            self.member.authz.range(self.info, c.key or b"\0", c.range_end)
        except RequestError as err:
            self.refuse(err.message)
            return
        filters = set(c.filters)
        self.stream.watch(
            c.key,
            c.range_end,
            c.start_revision,
            watch_id=c.watch_id,
            prev_kv=c.prev_kv,
            no_put=_NOPUT in filters,
            no_delete=_NODELETE in filters,
            progress_notify=c.progress_notify,
            fragment=c.fragment,
        )

    def refuse(self, reason: str) -> None:
        resp = pb.WatchResponse(
            watch_id=INVALID_WATCH_ID, created=True, canceled=True, cancel_reason=reason
        )
        resp.header.revision = self.member.hub.revision
        self.member.fill_header(resp.header)
        self.extra.append(resp)
        self.wake.set()

    def reader_done(self, reader: asyncio.Task[None]) -> None:
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            log.debug("watch: the request stream failed: %r", exc)
        self.wake.set()

    async def monitor_leader(self, interval: float) -> None:
        """End the call once the member has had no leader for ``MAX_NO_LEADER_COUNT``
        intervals in a row (etcd's monitorLeader, for streams that require a leader)."""
        missed = 0
        while missed < MAX_NO_LEADER_COUNT:
            await asyncio.sleep(interval)
            missed = missed + 1 if not self.member.leader else 0
        self.lost_leader = True
        self.wake.set()

    # -- responses -----------------------------------------------------------------------
    async def write(self, resp: pb.WatchResponse) -> None:
        try:
            await self.context.write(resp)
        except Exception as exc:  # not a cancellation: the client is gone mid-write
            raise _Gone from exc

    async def send(self, reader: asyncio.Task[None]) -> None:
        """Write responses until the call is cancelled, the reader failed or the leader
        was lost."""
        stream, wake, write = self.stream, self.wake, self.write
        fill = self.member.fill_header
        while True:
            await wake.wait()
            wake.clear()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                return  # the request stream broke (logged by reader_done)
            if self.lost_leader:
                return
            while self.extra:
                await write(self.extra.popleft())
            while batch := stream.take(TAKE_BATCH):
                for resp in batch:
                    await write(to_pb(resp, fill))


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    """etcd's Watch service over a member's ``WatchHub``.

    A call whose metadata requires a leader (``hasleader: true``, as etcdctl and
    ``clientv3.WithRequireLeader`` send) is refused with "etcdserver: no leader" while
    the member knows of none, and ended with it once the member has been without one for
    ``MAX_NO_LEADER_COUNT`` election timeouts (etcd's stream interceptor): etcd's clients
    then fail the watch rather than silently watching a member cut off from the cluster.
    """

    def __init__(self, member: WatchMember, *, election_timeout: float | None = None) -> None:
        self._member = member
        self._election_timeout = (
            member.cfg.election_timeout_ms / 1000 if election_timeout is None else election_timeout
        )

    async def Watch(  # type: ignore[override]
        self,
        request_iterator: AsyncIterable[pb.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        member = self._member
        require_leader = REQUIRE_LEADER in (tuple(m) for m in context.invocation_metadata() or ())
        if require_leader and not member.leader:
            await _abort_no_leader(context)
        try:
            info = await member.authz.info(context)
        except RequestError as err:
            await context.abort(err.code, err.message)
        call = _Call(member, context, info)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(call.read(request_iterator))]
        tasks[0].add_done_callback(call.reader_done)
        if require_leader:
            tasks.append(loop.create_task(call.monitor_leader(self._election_timeout)))
        try:
            await call.send(tasks[0])
        except _Gone as gone:
            log.debug("watch: the client is gone: %r", gone.__cause__)
        finally:
            call.stream.close()
            for task in tasks:
                task.cancel()
        if call.lost_leader:
            await _abort_no_leader(context)


async def _abort_no_leader(context: grpc.aio.ServicerContext) -> NoReturn:
    await context.abort(*ERR_NO_LEADER)
    raise AssertionError("context.abort returned")  # it raises
