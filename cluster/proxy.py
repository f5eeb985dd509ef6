"""``python -m cluster grpc-proxy start``: a stateless gRPC proxy in front of a cluster.

As etcd's ``grpc-proxy``: clients speak etcd's v3 API to the proxy, which forwards
every service (KV, Watch, Lease, Cluster, Maintenance, Auth, Lock, Election) to one
member of ``--endpoints`` at a time, moving to the next when that member cannot be
reached. Requests and responses pass through as bytes (metadata, deadlines, auth
tokens and error codes too); three things are the proxy's own:

- Failover: calls stick to one endpoint until it fails with UNAVAILABLE. Calls that
  change nothing (ranges, member list, status, ...) are then repeated on the next
  endpoint; a write only when it cannot have been sent (the connection was refused),
  as etcd's clientv3 does; otherwise the client sees the error and decides.
  ``LeaseKeepAlive`` streams are reopened on the next endpoint; the client's stream
  goes on.
- Watch coalescing: watches from any number of client streams that ask for the same
  thing (key, range_end, start revision 0, filters, prev_kv, progress_notify, and the
  same auth token) share ONE upstream watch; its responses fan out to every client
  watcher under the client's own watch id. Watches with a start revision get an
  upstream watch each. All of a token's upstream watches share one upstream Watch
  stream (require-leader, so a member cut off from its leader is left too); when it
  breaks, it is reopened on the next endpoint and every watch resumes from the
  revision after the last one delivered: clients see neither a gap nor a repeat.
- A serializable range cache: responses to ranges (without a revision), keyed by the
  request and auth token, up to ``--cache-entries``; served to serializable ranges.
  A watch over the whole keyspace through the proxy invalidates entries whose range
  an event touches, so a cached answer is never older than what that watch has
  delivered (etcd's proxy invalidates only on writes made through it; this one also
  does that). While that watch is down (or refused: auth enabled), nothing is cached.

``Proxy.stats()`` counts client watchers, upstream watches and cache hits; the proxy
logs them every minute.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import sys
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from cluster.client._core import CHANNEL_OPTIONS, TLSConfig, never_sent
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.v3electionpb import v3election_pb2
from cluster.proto.v3lockpb import v3lock_pb2

log = logging.getLogger("cluster.proxy")

Metadata = tuple[tuple[str, str], ...]

WATCH_METHOD: Final = "/etcdserverpb.Watch/Watch"
REQUIRE_LEADER: Final = ("hasleader", "true")
DEFAULT_CACHE_ENTRIES: Final = 2048  # etcd's proxy cache size
MAX_CACHED_BYTES: Final = 1 << 20  # larger responses are not cached
RETRY_BUDGET: Final = 5.0  # seconds of failover for a call without a deadline
STATS_INTERVAL: Final = 60.0

# Calls that change nothing: repeated on another endpoint after any UNAVAILABLE.
IDEMPOTENT: Final = frozenset(
    {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Auth/AuthStatus",
        "/etcdserverpb.Auth/UserGet",
        "/etcdserverpb.Auth/UserList",
        "/etcdserverpb.Auth/RoleGet",
        "/etcdserverpb.Auth/RoleList",
        "/v3electionpb.Election/Leader",
    }
)
# Streams that may be reopened on another endpoint without the client noticing.
RESUMABLE_STREAMS: Final = frozenset({"/etcdserverpb.Lease/LeaseKeepAlive"})

# Metadata that belongs to one hop (HTTP/2 and gRPC's own), never forwarded.
_HOP_METADATA: Final = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding"})


def services() -> list[ServiceDescriptor]:
    """Every service the proxy forwards (etcd's v3 API and the lock / election APIs)."""
    return [
        *pb.DESCRIPTOR.services_by_name.values(),
        *v3lock_pb2.DESCRIPTOR.services_by_name.values(),
        *v3election_pb2.DESCRIPTOR.services_by_name.values(),
    ]


def forwarded_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> Metadata:
    """The client's metadata worth passing on (auth token, require-leader, ...)."""
    out = []
    for key, value in context.invocation_metadata() or ():
        if key.startswith((":", "grpc-")) or key in _HOP_METADATA or key.endswith("-bin"):
            continue
        out.append((key, str(value)))
    return tuple(out)


def token_of(metadata: Metadata) -> str | None:
    for key, value in metadata:
        if key in ("token", "authorization"):
            return value
    return None


def _retryable(exc: grpc.aio.AioRpcError, idempotent: bool) -> bool:
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    if idempotent or "etcdserver: no leader" in details:
        return True
    return never_sent(details)


def _background(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task whose failure (the other side of a stream went away) is only logged."""
    task = asyncio.get_running_loop().create_task(coro)

    def done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and (exc := t.exception()) is not None:
            log.debug("background task ended: %r", exc)

    task.add_done_callback(done)
    return task


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: grpc.aio.AioRpcError
) -> NoReturn:
    await context.abort(exc.code(), exc.details() or "")
    raise AssertionError("context.abort returned")  # it raises


# -- the upstream cluster ---------------------------------------------------------------------


class Upstream:
    """The cluster's endpoints, a channel to each, and the one calls go to now (sticky
    until it fails)."""

    def __init__(self, endpoints: Sequence[str], tls: TLSConfig | None = None) -> None:
        if not endpoints:
            raise ValueError("no endpoints given")
        self.targets = [
            e.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
            for e in endpoints
        ]
        self._tls = tls
        self._channels: dict[int, grpc.aio.Channel] = {}
        self.current = 0

    def channel(self, index: int) -> grpc.aio.Channel:
        ch = self._channels.get(index)
        if ch is None:
            target = self.targets[index]
            if self._tls is not None:
                ch = grpc.aio.secure_channel(
                    target, self._tls.credentials(), options=CHANNEL_OPTIONS
                )
            else:
                ch = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            self._channels[index] = ch
        return ch

    def failed(self, index: int) -> None:
        """Move calls away from ``index`` if they still go there."""
        if self.current == index:
            self.current = (index + 1) % len(self.targets)
            log.warning(
                "upstream %s failed; now using %s", self.targets[index], self.targets[self.current]
            )

    async def unary(
        self,
        method: str,
        request: bytes,
        metadata: Metadata,
        timeout: float | None,
    ) -> bytes:
        """Call ``method`` on the current endpoint, failing over as the module describes."""
        idempotent = method in IDEMPOTENT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else RETRY_BUDGET)
        failures = 0
        delay = 0.05
        while True:
            index = self.current
            left = None if timeout is None else max(0.001, deadline - loop.time())
            try:
                call = self.channel(index).unary_unary(method)
                response: bytes = await call(request, metadata=metadata, timeout=left)
                return response
            except grpc.aio.AioRpcError as exc:
                if not _retryable(exc, idempotent) or loop.time() >= deadline:
                    raise
                self.failed(index)
                failures += 1
                if failures % len(self.targets) == 0:  # a whole round failed: back off
                    await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                    delay = min(2 * delay, 1.0)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()


# -- the serializable range cache -------------------------------------------------------------


@dataclass
class _Entry:
    key: bytes
    range_end: bytes
    response: bytes


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's range semantics: ``end`` empty: ``start`` alone; ``b"\\0"``: from ``start`` on."""
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def _overlaps(a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes) -> bool:
    if not a_end:
        return _in_range(a_start, b_start, b_end)
    if not b_end:
        return _in_range(b_start, a_start, a_end)
    a_hi_open = a_end == b"\0"
    b_hi_open = b_end == b"\0"
    return (a_hi_open or b_start < a_end) and (b_hi_open or a_start < b_end)


class RangeCache:
    """Range responses by (token, request), least recently used dropped first.

    ``watermark`` is the highest revision whose changes have invalidated the cache (the
    invalidation watch's events, the proxy's own writes); a response older than it may
    miss one of them and is not added. ``live`` is false while that watch is down.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[str | None, bytes], _Entry] = (
            collections.OrderedDict()
        )
        self._points: dict[bytes, set[tuple[str | None, bytes]]] = {}
        self._ranges: set[tuple[str | None, bytes]] = set()
        self.watermark = 0
        self.live = False
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cache_key(token: str | None, req: pb.RangeRequest) -> tuple[str | None, bytes]:
        canonical = pb.RangeRequest()
        canonical.CopyFrom(req)
        canonical.serializable = True
        return token, canonical.SerializeToString(deterministic=True)

    def get(self, key: tuple[str | None, bytes]) -> bytes | None:
        entry = self._entries.get(key) if self.live else None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.response

    def add(
        self, key: tuple[str | None, bytes], req: pb.RangeRequest, revision: int, response: bytes
    ) -> None:
        if (
            not self.live
            or self.max_entries <= 0
            or req.revision != 0
            or revision < self.watermark
            or len(response) > MAX_CACHED_BYTES
        ):
            return
        self._drop(key)
        self._entries[key] = _Entry(req.key, req.range_end, response)
        if req.range_end:
            self._ranges.add(key)
        else:
            self._points.setdefault(req.key, set()).add(key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str | None, bytes]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry.range_end:
            self._ranges.discard(key)
        else:
            keys = self._points.get(entry.key)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._points[entry.key]

    def invalidate(self, key: bytes, range_end: bytes = b"") -> None:
        """Drop every entry whose range overlaps ``[key, range_end)`` (etcd's range form)."""
        if not range_end:
            doomed = list(self._points.get(key, ()))
        else:
            doomed = [
                k
                for point, keys in self._points.items()
                if _in_range(point, key, range_end)
                for k in keys
            ]
        for k in self._ranges:
            entry = self._entries[k]
            if _overlaps(entry.key, entry.range_end, key, range_end):
                doomed.append(k)
        for k in doomed:
            self._drop(k)

    def advance(self, revision: int) -> None:
        self.watermark = max(self.watermark, revision)

    def clear(self) -> None:
        self._entries.clear()
        self._points.clear()
        self._ranges.clear()


def _txn_ranges(req: pb.TxnRequest) -> list[tuple[bytes, bytes]]:
    """Every key range a txn compares, writes or reads, nested txns included."""
    out = [(c.key, c.range_end) for c in req.compare]
    for op in (*req.success, *req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put":
            out.append((op.request_put.key, b""))
        elif kind == "request_delete_range":
            out.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif kind == "request_txn":
            out.extend(_txn_ranges(op.request_txn))
    return out


# -- watches ------------------------------------------------------------------------------------


def _with_watch_id(raw: bytes, watch_id: int) -> bytes:
    """``raw`` (a serialized WatchResponse) under another watch id: protobuf keeps the last
    value of a repeated scalar field, so appending field 2 re-labels it without a copy."""
    n = watch_id & ((1 << 64) - 1)
    out = bytearray(b"\x10")
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return raw + bytes(out)


def _coalescing_key(c: pb.WatchCreateRequest) -> tuple[Any, ...] | None:
    """Watches that may share one upstream watch have equal keys; None: never shared."""
    if c.start_revision != 0:
        return None
    return (c.key, c.range_end, tuple(sorted(c.filters)), c.prev_kv, c.progress_notify)


class _Watcher:
    """One receiver of a group's responses."""

    def created(self, header: pb.ResponseHeader) -> None: ...

    def deliver(self, resp: pb.WatchResponse, raw: bytes) -> None: ...

    def canceled(self, resp: pb.WatchResponse) -> None: ...

    def suspended(self) -> None:
        """The upstream stream broke; the watch will resume on another endpoint."""

    def resumed(self) -> None:
        """The watch was created again on another endpoint."""


class _ClientWatcher(_Watcher):
    def __init__(self, stream: _ClientStream, watch_id: int) -> None:
        self.stream = stream
        self.watch_id = watch_id
        self.group: _Group | None = None

    def created(self, header: pb.ResponseHeader) -> None:
        resp = pb.WatchResponse(watch_id=self.watch_id, created=True)
        resp.header.CopyFrom(header)
        self.stream.push(resp.SerializeToString())

    def deliver(self, resp: pb.WatchResponse, raw: bytes) -> None:
        self.stream.push(_with_watch_id(raw, self.watch_id))

    def canceled(self, resp: pb.WatchResponse) -> None:
        out = pb.WatchResponse()
        out.CopyFrom(resp)
        out.watch_id = self.watch_id if not resp.created else -1
        self.stream.watchers.pop(self.watch_id, None)
        self.stream.push(out.SerializeToString())


class _CacheWatcher(_Watcher):
    """The range cache's invalidation watch over the whole keyspace."""

    def __init__(self, cache: RangeCache) -> None:
        self.cache = cache

    def created(self, header: pb.ResponseHeader) -> None:
        self.cache.live = True

    def deliver(self, resp: pb.WatchResponse, raw: bytes) -> None:
        cache = self.cache
        for ev in resp.events:
            cache.invalidate(ev.kv.key)
            cache.advance(ev.kv.mod_revision)
        if not resp.events:
            cache.advance(resp.header.revision)

    def canceled(self, resp: pb.WatchResponse) -> None:
        self.cache.live = False
        self.cache.clear()
        log.warning(
            "range cache disabled: its watch was refused (%s)", resp.cancel_reason or "canceled"
        )

    def suspended(self) -> None:
        self.cache.live = False
        self.cache.clear()

    def resumed(self) -> None:
        self.cache.live = True


class _Group:
    """Watchers sharing one upstream watch; ``next_rev`` is the first revision not yet
    delivered (0: not known yet), where the watch resumes after a failover."""

    def __init__(self, create: pb.WatchCreateRequest, key: tuple[Any, ...] | None) -> None:
        self.create = create
        self.key = key
        self.watchers: dict[_Watcher, None] = {}
        self.owner: _UpstreamWatchStream | None = None  # the upstream stream carrying it
        self.upstream_id = -1
        self.created = False
        self.header = pb.ResponseHeader()
        self.next_rev = create.start_revision

    def request(self, upstream_id: int) -> pb.WatchRequest:
        c = pb.WatchCreateRequest()
        c.CopyFrom(self.create)
        c.start_revision = self.next_rev
        c.watch_id = upstream_id
        c.fragment = False  # whole responses only: a resume never splits one
        return pb.WatchRequest(create_request=c)

    def delivered_header(self) -> pb.ResponseHeader:
        header = pb.ResponseHeader()
        header.CopyFrom(self.header)
        header.revision = max(self.next_rev - 1, 0)
        return header

    def on_created(self, resp: pb.WatchResponse) -> None:
        self.header.CopyFrom(resp.header)
        if self.next_rev == 0:
            self.next_rev = resp.header.revision + 1
        if not self.created:
            self.created = True
            for w in list(self.watchers):
                w.created(resp.header)
        else:
            for w in list(self.watchers):
                w.resumed()

    def on_response(self, resp: pb.WatchResponse, raw: bytes) -> None:
        events = resp.events
        if events:
            if events[0].kv.mod_revision < self.next_rev:  # repeats after a resume
                fresh = [e for e in events if e.kv.mod_revision >= self.next_rev]
                if not fresh:
                    return
                del resp.events[:]
                resp.events.extend(fresh)
                raw = resp.SerializeToString()
            self.next_rev = resp.events[-1].kv.mod_revision + 1
        else:  # a progress notification: everything up to its revision was sent
            self.next_rev = max(self.next_rev, resp.header.revision + 1)
        self.header.CopyFrom(resp.header)
        for w in list(self.watchers):
            w.deliver(resp, raw)

    def on_canceled(self, resp: pb.WatchResponse) -> None:
        for w in list(self.watchers):
            w.canceled(resp)
        self.watchers.clear()


class _UpstreamWatchStream:
    """One upstream Watch stream (per auth token) carrying every group's watch; reopened
    on the next endpoint when it breaks, each watch resuming at its ``next_rev``."""

    def __init__(self, broker: WatchBroker, token: str | None) -> None:
        self.broker = broker
        self.token = token
        self.groups: dict[int, _Group] = {}  # by upstream watch id
        self.shared: dict[tuple[Any, ...], _Group] = {}
        self._ids = 0
        self._out: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        self._progress_waiters: list[_ClientStream] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        # The create sent and not answered yet: one at a time, since a refused create is
        # answered with watch id -1 (and refusals may overtake other answers).
        self._inflight = -1
        self._answered: asyncio.Future[None] | None = None

    # -- from clients ----------------------------------------------------------------------------
    def add(self, create: pb.WatchCreateRequest, watcher: _Watcher) -> _Group:
        key = _coalescing_key(create)
        group = self.shared.get(key) if key is not None else None
        if group is None:
            group = _Group(create, key)
            group.owner = self
            if key is not None:
                self.shared[key] = group
            self._start_watch(group)
            group.watchers[watcher] = None
        else:
            group.watchers[watcher] = None
            if group.created:
                watcher.created(group.delivered_header())
        self._ensure_running()
        return group

    def remove(self, group: _Group, watcher: _Watcher) -> None:
        group.watchers.pop(watcher, None)
        if group.watchers:
            return
        self._forget(group)
        if self.connected and group.upstream_id >= 0:
            cancel = pb.WatchCancelRequest(watch_id=group.upstream_id)
            self._out.put_nowait(pb.WatchRequest(cancel_request=cancel))
        if not self.groups and self._task is not None:
            self._task.cancel()
            self._task = None
            self.broker._stream_closed(self)

    def request_progress(self, stream: _ClientStream) -> None:
        if not self.groups:
            return  # as etcd: a stream without watchers gets no progress answer
        self._progress_waiters.append(stream)
        self._out.put_nowait(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def _start_watch(self, group: _Group) -> None:
        group.upstream_id = self._ids
        self._ids += 1
        self.groups[group.upstream_id] = group
        self._out.put_nowait(group.request(group.upstream_id))

    def _forget(self, group: _Group) -> None:
        self.groups.pop(group.upstream_id, None)
        if group.key is not None and self.shared.get(group.key) is group:
            del self.shared[group.key]

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the stream ------------------------------------------------------------------------------
    async def _run(self) -> None:
        upstream = self.broker.upstream
        metadata: Metadata = (REQUIRE_LEADER,)
        if self.token is not None:
            metadata += (("token", self.token),)
        delay = 0.05
        failures = 0
        while self.groups:
            index = upstream.current
            call = upstream.channel(index).stream_stream(WATCH_METHOD)(metadata=metadata)
            # Every group (re)starts on this stream: fresh ids, from where it stopped.
            self._out = asyncio.Queue()
            groups, self.groups = list(self.groups.values()), {}
            self._ids = 0
            for group in groups:
                self._start_watch(group)
            if self._progress_waiters:  # asked on the broken stream: ask again
                self._out.put_nowait(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
            writer = _background(self._write(call))
            self.connected = True
            try:
                async for raw in call:
                    if failures:
                        log.info("watch stream reopened on %s", upstream.targets[index])
                        failures, delay = 0, 0.05
                    self._dispatch(raw)
                reason = "the member ended the stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
                    self._fail_all(exc)
                    return
                reason = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a bug here must not leave the watches hanging
                log.exception("watch stream: unexpected failure")
                reason = repr(exc)
            finally:
                self.connected = False
                writer.cancel()
                call.cancel()
            log.warning(
                "watch stream to %s broke (%s); resuming %d watches elsewhere",
                upstream.targets[index],
                reason,
                len(self.groups),
            )
            for group in self.groups.values():
                for w in list(group.watchers):
                    w.suspended()
            upstream.failed(index)
            failures += 1
            if failures % len(upstream.targets) == 0:
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def _write(self, call: Any) -> None:
        out = self._out
        loop = asyncio.get_running_loop()
        while True:
            req = await out.get()
            if req.HasField("create_request"):
                self._inflight = req.create_request.watch_id
                self._answered = answered = loop.create_future()
                await call.write(req.SerializeToString())
                await answered
            else:
                await call.write(req.SerializeToString())

    def _dispatch(self, raw: bytes) -> None:
        resp = pb.WatchResponse.FromString(raw)
        if resp.watch_id == -1 and not resp.created:
            self._progress(resp, raw)
            return
        group: _Group | None
        if resp.created:  # the answer to the create in flight
            group = self.groups.get(self._inflight)
            if self._answered is not None and not self._answered.done():
                self._answered.set_result(None)
        else:
            group = self.groups.get(resp.watch_id)
        if group is None:
            return  # a watch canceled meanwhile (its cancel request follows)
        if resp.canceled:
            self._forget(group)
            group.on_canceled(resp)
        elif resp.created:
            group.on_created(resp)
        else:
            group.on_response(resp, raw)

    def _progress(self, resp: pb.WatchResponse, raw: bytes) -> None:
        """An answer to a progress request: every watch of the stream has been sent all
        events up to its revision. It goes to the client streams that asked."""
        for g in self.groups.values():
            g.next_rev = max(g.next_rev, resp.header.revision + 1)
            for w in g.watchers:
                if isinstance(w, _CacheWatcher):
                    w.deliver(resp, raw)
        waiters, self._progress_waiters = self._progress_waiters, []
        for stream in dict.fromkeys(waiters):
            stream.push(raw)

    def _fail_all(self, exc: grpc.aio.AioRpcError) -> None:
        """The member refused the stream itself (auth, a bad token): end every watch."""
        log.warning("watch stream refused: %s: %s", exc.code().name, exc.details())
        resp = pb.WatchResponse(canceled=True, cancel_reason=exc.details() or exc.code().name)
        groups, self.groups, self.shared = list(self.groups.values()), {}, {}
        for group in groups:
            group.on_canceled(resp)
        self._task = None
        self.broker._stream_closed(self)


class _ClientStream:
    """One client's Watch call: its watchers (by its own watch ids) and its output queue."""

    def __init__(self, broker: WatchBroker, token: str | None) -> None:
        self.broker = broker
        self.token = token
        self.watchers: dict[int, _ClientWatcher] = {}
        self._next_id = 0
        self.out: asyncio.Queue[bytes] = asyncio.Queue()

    def push(self, raw: bytes) -> None:
        self.out.put_nowait(raw)

    def handle(self, req: pb.WatchRequest) -> None:
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            self.create(req.create_request)
        elif kind == "cancel_request":
            self.cancel(req.cancel_request.watch_id)
        elif kind == "progress_request":
            upstream = self.broker.streams.get(self.token)
            if upstream is not None:  # else no watchers: no answer, as etcd
                upstream.request_progress(self)

    def create(self, c: pb.WatchCreateRequest) -> None:
        watch_id = c.watch_id
        if watch_id == 0:  # etcd's AutoWatchID
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watchers:
            resp = pb.WatchResponse(
                watch_id=-1,
                created=True,
                canceled=True,
                cancel_reason="mvcc: duplicate watch ID provided on the WatchStream",
            )
            self.push(resp.SerializeToString())
            return
        watcher = _ClientWatcher(self, watch_id)
        self.watchers[watch_id] = watcher
        watcher.group = self.broker.upstream_stream(self.token).add(c, watcher)

    def cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return
        self._detach(watcher)
        resp = pb.WatchResponse(watch_id=watch_id, canceled=True)
        if watcher.group is not None:
            resp.header.CopyFrom(watcher.group.delivered_header())
        self.push(resp.SerializeToString())

    def close(self) -> None:
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            self._detach(watcher)

    def _detach(self, watcher: _ClientWatcher) -> None:
        group = watcher.group
        if group is not None and group.owner is not None:
            group.owner.remove(group, watcher)


class WatchBroker:
    """Every watch going through the proxy: client streams, groups, upstream streams."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.streams: dict[str | None, _UpstreamWatchStream] = {}
        self.client_streams: set[_ClientStream] = set()

    def upstream_stream(self, token: str | None) -> _UpstreamWatchStream:
        stream = self.streams.get(token)
        if stream is None:
            stream = self.streams[token] = _UpstreamWatchStream(self, token)
        return stream

    def _stream_closed(self, stream: _UpstreamWatchStream) -> None:
        if self.streams.get(stream.token) is stream:
            del self.streams[stream.token]

    @property
    def upstream_watches(self) -> int:
        return sum(len(s.groups) for s in self.streams.values())

    @property
    def client_watchers(self) -> int:
        return sum(len(s.watchers) for s in self.client_streams)

    async def serve(
        self, requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """One client Watch call."""
        stream = _ClientStream(self, token_of(forwarded_metadata(context)))
        self.client_streams.add(stream)

        async def read() -> None:
            async for raw in requests:
                try:
                    stream.handle(pb.WatchRequest.FromString(raw))
                except Exception:
                    log.exception("watch: a request failed")

        reader = _background(read())
        try:
            while True:
                yield await stream.out.get()
                while not stream.out.empty():
                    yield stream.out.get_nowait()
        finally:
            reader.cancel()
            stream.close()
            self.client_streams.discard(stream)

    async def close(self) -> None:
        streams, self.streams = list(self.streams.values()), {}
        for s in streams:
            await s.close()


# -- the proxy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyConfig:
    """etcd grpc-proxy's flags (those implemented)."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    listen_addr: str = "127.0.0.1:23790"
    advertise_client_url: str = ""
    cacert: str = ""  # upstream TLS: verify members with this CA
    cert: str = ""  # upstream TLS: the proxy's client certificate
    key: str = ""
    cert_file: str = ""  # serving TLS: the proxy's certificate for its clients
    key_file: str = ""
    trusted_ca_file: str = ""  # serving TLS: require client certificates signed by it
    cache_entries: int = DEFAULT_CACHE_ENTRIES

    @property
    def upstream_tls(self) -> TLSConfig | None:
        secure = self.cacert or self.cert or any(e.startswith("https://") for e in self.endpoints)
        if not secure:
            return None
        return TLSConfig(self.cacert or None, self.cert or None, self.key or None)


@dataclass
class Proxy:
    """The proxy's state: upstream, watch broker, range cache; ``handlers`` for a server."""

    cfg: ProxyConfig
    upstream: Upstream = field(init=False)
    watches: WatchBroker = field(init=False)
    cache: RangeCache = field(init=False)

    def __post_init__(self) -> None:
        self.upstream = Upstream(self.cfg.endpoints, self.cfg.upstream_tls)
        self.watches = WatchBroker(self.upstream)
        self.cache = RangeCache(self.cfg.cache_entries)
        self._cache_watcher: _CacheWatcher | None = None

    def start(self) -> None:
        """Open the range cache's invalidation watch (call in the running loop)."""
        if self.cfg.cache_entries > 0 and self._cache_watcher is None:
            self._cache_watcher = _CacheWatcher(self.cache)
            everything = pb.WatchCreateRequest(key=b"\0", range_end=b"\0")
            self.watches.upstream_stream(None).add(everything, self._cache_watcher)

    def stats(self) -> dict[str, int]:
        cache_watch = 1 if self._cache_watcher is not None else 0
        return {
            "client_watchers": self.watches.client_watchers,
            "upstream_watches": self.watches.upstream_watches,
            "upstream_watch_streams": len(self.watches.streams),
            "cache_watches": cache_watch,
            "cache_entries": len(self.cache),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
        }

    async def close(self) -> None:
        await self.watches.close()
        await self.upstream.close()

    # -- handlers ---------------------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for service in services():
            for m in service.methods:
                path = f"/{service.full_name}/{m.name}"
                methods[path] = self._method_handler(path, m.client_streaming, m.server_streaming)
        return _Handler(methods)

    def _method_handler(
        self, path: str, client_streaming: bool, server_streaming: bool
    ) -> grpc.RpcMethodHandler:
        if path == WATCH_METHOD:
            return grpc.stream_stream_rpc_method_handler(self.watches.serve)
        if client_streaming and server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._bidi(path))
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._server_stream(path))
        if client_streaming:  # none in etcd's API; forwarded anyway
            return grpc.stream_unary_rpc_method_handler(self._client_stream(path))
        if path == "/etcdserverpb.KV/Range":
            return grpc.unary_unary_rpc_method_handler(self._range)
        if path in _WRITE_RANGES:
            return grpc.unary_unary_rpc_method_handler(self._write(path))
        return grpc.unary_unary_rpc_method_handler(self._unary(path))

    def _unary(
        self, path: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                return await self.upstream.unary(
                    path, request, forwarded_metadata(context), context.time_remaining()
                )
            except grpc.aio.AioRpcError as exc:
                await _abort(context, exc)

        return forward

    async def _range(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        req = pb.RangeRequest.FromString(request)
        metadata = forwarded_metadata(context)
        key = RangeCache.cache_key(token_of(metadata), req)
        if req.serializable:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        try:
            raw = await self.upstream.unary(
                "/etcdserverpb.KV/Range", request, metadata, context.time_remaining()
            )
        except grpc.aio.AioRpcError as exc:
            await _abort(context, exc)
        header = pb.RangeResponse.FromString(raw).header
        self.cache.add(key, req, header.revision, raw)
        return raw

    def _write(
        self, path: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        """Put, DeleteRange, Txn: invalidate what they touch before and after."""
        parse = _WRITE_RANGES[path]

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            ranges = parse(request)
            for key, end in ranges:
                self.cache.invalidate(key, end)
            try:
                raw = await self.upstream.unary(
                    path, request, forwarded_metadata(context), context.time_remaining()
                )
            except grpc.aio.AioRpcError as exc:
                await _abort(context, exc)
            for key, end in ranges:
                self.cache.invalidate(key, end)
            # Put, DeleteRange and Txn responses all start with the header (field 1).
            self.cache.advance(pb.PutResponse.FromString(raw[: _header_len(raw)]).header.revision)
            return raw

        return forward

    def _server_stream(
        self, path: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[bytes]]:
        """Unary request, streamed answer (Snapshot, Observe): fails over before the first
        message only."""

        async def forward(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            upstream = self.upstream
            metadata = forwarded_metadata(context)
            for _attempt in range(len(upstream.targets)):
                index = upstream.current
                call = upstream.channel(index).unary_stream(path)(
                    request, metadata=metadata, timeout=context.time_remaining()
                )
                started = False
                try:
                    async for raw in call:
                        started = True
                        yield raw
                    return
                except grpc.aio.AioRpcError as exc:
                    if started or not _retryable(exc, path in IDEMPOTENT):
                        await _abort(context, exc)
                    upstream.failed(index)
                    last = exc
                finally:
                    call.cancel()
            await _abort(context, last)

        return forward

    def _client_stream(
        self, path: str
    ) -> Callable[[AsyncIterable[bytes], grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def forward(
            requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            call = self.upstream.channel(self.upstream.current).stream_unary(path)(
                metadata=forwarded_metadata(context), timeout=context.time_remaining()
            )
            try:
                async for raw in requests:
                    await call.write(raw)
                await call.done_writing()
                response: bytes = await call
                return response
            except grpc.aio.AioRpcError as exc:
                await _abort(context, exc)

        return forward

    def _bidi(
        self, path: str
    ) -> Callable[[AsyncIterable[bytes], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[bytes]]:
        """A bidirectional stream (LeaseKeepAlive): reopened elsewhere when resumable."""
        resumable = path in RESUMABLE_STREAMS

        async def forward(
            requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            upstream = self.upstream
            metadata = forwarded_metadata(context)
            pending: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def read() -> None:
                async for raw in requests:
                    pending.put_nowait(raw)
                pending.put_nowait(None)

            reader = _background(read())
            delay = 0.05
            try:
                while True:
                    index = upstream.current
                    call = upstream.channel(index).stream_stream(path)(metadata=metadata)

                    async def write(call: Any = call) -> None:
                        while (raw := await pending.get()) is not None:
                            await call.write(raw)
                        await call.done_writing()

                    writer = _background(write())
                    try:
                        async for raw in call:
                            delay = 0.05
                            yield raw
                        return
                    except grpc.aio.AioRpcError as exc:
                        if not resumable or exc.code() != grpc.StatusCode.UNAVAILABLE:
                            await _abort(context, exc)
                        upstream.failed(index)
                        target = upstream.targets[upstream.current]
                        log.info("%s: reopening the stream on %s", path, target)
                        await asyncio.sleep(delay)
                        delay = min(2 * delay, 1.0)
                    finally:
                        writer.cancel()
                        call.cancel()
            finally:
                reader.cancel()

        return forward


def _put_ranges(raw: bytes) -> list[tuple[bytes, bytes]]:
    return [(pb.PutRequest.FromString(raw).key, b"")]


def _delete_ranges(raw: bytes) -> list[tuple[bytes, bytes]]:
    req = pb.DeleteRangeRequest.FromString(raw)
    return [(req.key, req.range_end)]


def _txn_request_ranges(raw: bytes) -> list[tuple[bytes, bytes]]:
    return _txn_ranges(pb.TxnRequest.FromString(raw))


# The key ranges a write request touches, by method.
_WRITE_RANGES: Final[dict[str, Callable[[bytes], list[tuple[bytes, bytes]]]]] = {
    "/etcdserverpb.KV/Put": _put_ranges,
    "/etcdserverpb.KV/DeleteRange": _delete_ranges,
    "/etcdserverpb.KV/Txn": _txn_request_ranges,
}


def _header_len(raw: bytes) -> int:
    """The length of field 1 (the header) at the start of a serialized response, with its
    tag and length prefix; 0 if it does not start there."""
    if not raw or raw[0] != 0x0A:
        return 0
    n = shift = 0
    at = 1
    while at < len(raw):
        byte = raw[at]
        n |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return min(at + n, len(raw))
        shift += 7
    return 0


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods = methods

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._methods.get(handler_call_details.method)


# -- serving -------------------------------------------------------------------------------------


async def start_server(cfg: ProxyConfig) -> tuple[Proxy, grpc.aio.Server, int]:
    """A started proxy server; the bound port (``--listen-addr`` may say port 0)."""
    proxy = Proxy(cfg)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.max_send_message_length", 2**31 - 1),
        ]
    )
    server.add_generic_rpc_handlers((proxy.handler(),))
    if cfg.cert_file:
        with open(cfg.cert_file, "rb") as f:
            cert = f.read()
        with open(cfg.key_file, "rb") as f:
            key = f.read()
        ca = None
        if cfg.trusted_ca_file:
            with open(cfg.trusted_ca_file, "rb") as f:
                ca = f.read()
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        port = server.add_secure_port(cfg.listen_addr, creds)
    else:
        port = server.add_insecure_port(cfg.listen_addr)
    await server.start()
    proxy.start()
    return proxy, server, port


async def serve(cfg: ProxyConfig) -> int:
    """Run until SIGTERM or SIGINT."""
    proxy, server, port = await start_server(cfg)
    host = cfg.listen_addr.rsplit(":", 1)[0]
    log.info(
        "grpc-proxy: listening for clients on %s:%d (advertised as %s), forwarding to %s",
        host,
        port,
        cfg.advertise_client_url or f"{'https' if cfg.cert_file else 'http'}://{host}:{port}",
        ",".join(proxy.upstream.targets),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            log.info("grpc-proxy: %s", proxy.stats())

    reporter = loop.create_task(report())
    await stop.wait()
    reporter.cancel()
    log.info("grpc-proxy: stopping")
    await server.stop(grace=1.0)
    await proxy.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster grpc-proxy",
        description="A stateless gRPC proxy in front of a cluster (etcd grpc-proxy).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start the proxy")
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="comma-separated members")
    p.add_argument("--listen-addr", default="127.0.0.1:23790", help="address to serve on")
    p.add_argument("--advertise-client-url", default="", help="the proxy's URL for clients")
    p.add_argument("--cacert", default="", help="verify members with this CA bundle")
    p.add_argument("--cert", default="", help="client certificate to present to members")
    p.add_argument("--key", default="", help="key of --cert")
    p.add_argument("--cert-file", default="", help="serve TLS with this certificate")
    p.add_argument("--key-file", default="", help="key of --cert-file")
    p.add_argument("--trusted-ca-file", default="", help="require client certs signed by it")
    p.add_argument(
        "--cache-entries",
        type=int,
        default=DEFAULT_CACHE_ENTRIES,
        help="serializable range responses to cache (0: no cache)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = _parser().parse_args(list(argv))
    if bool(args.cert_file) != bool(args.key_file):
        print("Error: --cert-file and --key-file go together", file=sys.stderr)
        return 2
    cfg = ProxyConfig(
        endpoints=tuple(e.strip() for e in args.endpoints.split(",") if e.strip()),
        listen_addr=args.listen_addr,
        advertise_client_url=args.advertise_client_url,
        cacert=args.cacert,
        cert=args.cert,
        key=args.key,
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        cache_entries=args.cache_entries,
    )
    started = time.monotonic()
    try:
        return asyncio.run(serve(cfg))
    except (OSError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        log.debug("grpc-proxy ran for %.1f s", time.monotonic() - started)
