"""The asyncio client (grpc.aio): the same API as :class:`cluster.client.Client`, awaited.

>>> async with AsyncClient("127.0.0.1:2379") as c:
...     await c.put("greeting", "hello")
...     async with c.watch("greeting") as w:
...         async for batch in w: ...

Objects with a life (``lease``, ``lock``, ``campaign``, ``watch``, ``observe``) are returned
unstarted: ``await`` them to start them, or use them in ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any, TypeVar

import grpc
import grpc.aio

from cluster.client._core import (
    CHANNEL_OPTIONS,
    REQUIRE_LEADER,
    Backoff,
    EndpointRing,
    Endpoints,
    Stubs,
    TLSConfig,
    WatchFilter,
    WatchSpec,
    WatchState,
    is_retryable,
    parse_endpoints,
    should_reconnect,
)
from cluster.client.errors import (
    AuthenticationError,
    ConnectionFailedError,
    ElectionNoLeaderError,
    EtcdError,
    LeaseNotFoundError,
    from_rpc_error,
)
from cluster.client.txn import (
    Compare,
    KeyLike,
    LeaseLike,
    Op,
    SortOrder,
    SortTarget,
    delete_request,
    lease_id,
    put_request,
    range_request,
    to_bytes,
    txn_is_read_only,
    txn_request,
)
from cluster.client.types import (
    Alarm,
    DeleteResponse,
    GetResponse,
    KeyValue,
    LeaderKey,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseTimeToLiveResponse,
    Member,
    PutResponse,
    ResponseHeader,
    Status,
    TxnResponse,
    WatchResponse,
)
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.v3electionpb import v3election_pb2 as epb
from cluster.proto.v3lockpb import v3lock_pb2 as lpb

__all__ = [
    "AsyncClient",
    "AsyncHeldLock",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncObservation",
    "AsyncWatch",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
Invoke = Callable[[Stubs, Metadata, float | None], Awaitable[T]]


class AsyncClient:
    """An asyncio etcd v3 client over one or more endpoints (see ``Client`` for failover).

    Channels are opened lazily in the running event loop; use one client per loop.
    """

    def __init__(
        self,
        endpoints: Endpoints = "127.0.0.1:2379",
        *,
        timeout: float | None = 5.0,
        retry_timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        channel_options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        targets, tls = parse_endpoints(endpoints)
        self._ring = EndpointRing(targets)
        self._tls = TLSConfig(ca_file, cert_file, key_file) if tls or ca_file else None
        self._options = [*CHANNEL_OPTIONS, *channel_options]
        self._stubs: dict[str, Stubs] = {}
        self._user = user
        self._password = password
        self._token: str | None = None
        self._auth_lock: asyncio.Lock | None = None
        self.timeout = timeout
        self.retry_timeout = retry_timeout
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return list(self._ring.targets)

    @property
    def current_endpoint(self) -> str:
        return self._ring.targets[self._ring.current]

    def _endpoint(self, target: str) -> Stubs:
        if self._closed:
            raise RuntimeError("the client is closed")
        stubs = self._stubs.get(target)
        if stubs is None:
            if self._tls is not None:
                creds = self._tls.credentials()
                channel = grpc.aio.secure_channel(target, creds, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(target, options=self._options)
            stubs = self._stubs[target] = Stubs(target, channel)
        return stubs

    async def _metadata(self, ep: Stubs) -> Metadata:
        if self._user is None:
            return ()
        if self._token is None:
            if self._auth_lock is None:
                self._auth_lock = asyncio.Lock()
            async with self._auth_lock:
                if self._token is None:
                    req = pb.AuthenticateRequest(name=self._user, password=self._password or "")
                    resp = await ep.auth.Authenticate(req, timeout=self.timeout)
                    self._token = resp.token
        assert self._token is not None
        return (("token", self._token),)

    async def _call(
        self,
        invoke: Invoke[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        use_default_timeout: bool = True,
        budget: float | None = None,
        pinned: str | None = None,
    ) -> T:
        if use_default_timeout and timeout is None:
            timeout = self.timeout
        ring = self._ring
        backoff = Backoff(len(ring.targets), self.retry_timeout if budget is None else budget)
        reauthenticated = False
        while True:
            index = ring.current
            target = pinned or ring.targets[index]
            ep = self._endpoint(target)
            try:
                return await invoke(ep, await self._metadata(ep), timeout)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, target)
                err.__cause__ = exc
            if (
                isinstance(err, AuthenticationError)
                and self._user is not None
                and "invalid auth token" in err.message
                and not reauthenticated
            ):
                self._token = None
                reauthenticated = True
                continue
            if pinned is not None or not is_retryable(err, idempotent):
                raise err
            ring.failed(index)
            delay = backoff.next_delay()
            if delay is None:
                raise err
            if delay:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._closed = True
        stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            await s.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- KV -----------------------------------------------------------------------------

    async def get(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder = "none",
        sort_target: SortTarget = "key",
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> GetResponse:
        """See ``Client.get``."""
        req = range_request(
            key, prefix=prefix, range_end=range_end, revision=revision, limit=limit,
            sort_order=sort_order, sort_target=sort_target, keys_only=keys_only,
            count_only=count_only, serializable=serializable,
            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision, max_create_revision=max_create_revision,
        )  # fmt: skip
        resp = await self._call(
            lambda s, md, t: s.kv.Range(req, timeout=t, metadata=md), idempotent=True
        )
        return GetResponse.from_pb(resp)

    async def put(
        self,
        key: KeyLike,
        value: KeyLike,
        *,
        lease: LeaseLike | None = None,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """See ``Client.put``."""
        req = put_request(
            key, value, lease=lease, prev_kv=prev_kv,
            ignore_value=ignore_value, ignore_lease=ignore_lease,
        )  # fmt: skip
        resp = await self._call(
            lambda s, md, t: s.kv.Put(req, timeout=t, metadata=md), idempotent=False
        )
        return PutResponse.from_pb(resp)

    async def delete(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        prev_kv: bool = False,
    ) -> DeleteResponse:
        """See ``Client.delete``."""
        req = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        resp = await self._call(
            lambda s, md, t: s.kv.DeleteRange(req, timeout=t, metadata=md), idempotent=False
        )
        return DeleteResponse.from_pb(resp)

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResponse:
        """See ``Client.txn``."""
        req = txn_request(compare, success, failure)
        resp = await self._call(
            lambda s, md, t: s.kv.Txn(req, timeout=t, metadata=md),
            idempotent=txn_is_read_only(req),
        )
        return TxnResponse.from_pb(resp)

    async def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        req = pb.CompactionRequest(revision=revision, physical=physical)
        resp = await self._call(
            lambda s, md, t: s.kv.Compact(req, timeout=t, metadata=md), idempotent=False
        )
        return ResponseHeader.from_pb(resp.header)

    # --- watch --------------------------------------------------------------------------

    def watch(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> AsyncWatch:
        """See ``Client.watch``. ``await`` the result (or ``async with`` it) to register the
        watch before making changes that must be seen; iterating also starts it."""
        spec = WatchSpec.build(
            key, prefix=prefix, range_end=range_end, start_revision=start_revision,
            prev_kv=prev_kv, filters=filters, progress_notify=progress_notify,
        )  # fmt: skip
        return AsyncWatch(self, spec)

    # --- lease --------------------------------------------------------------------------

    async def grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResponse:
        req = pb.LeaseGrantRequest(TTL=ttl, ID=id)
        resp = await self._call(
            lambda s, md, t: s.lease.LeaseGrant(req, timeout=t, metadata=md), idempotent=False
        )
        if resp.error:
            raise EtcdError(resp.error, endpoint=self.current_endpoint)
        return LeaseGrantResponse(ResponseHeader.from_pb(resp.header), resp.ID, resp.TTL)

    async def revoke(self, lease: LeaseLike) -> ResponseHeader:
        req = pb.LeaseRevokeRequest(ID=lease_id(lease))
        resp = await self._call(
            lambda s, md, t: s.lease.LeaseRevoke(req, timeout=t, metadata=md), idempotent=True
        )
        return ResponseHeader.from_pb(resp.header)

    async def time_to_live(
        self, lease: LeaseLike, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        req = pb.LeaseTimeToLiveRequest(ID=lease_id(lease), keys=keys)
        r = await self._call(
            lambda s, md, t: s.lease.LeaseTimeToLive(req, timeout=t, metadata=md),
            idempotent=True,
        )
        return LeaseTimeToLiveResponse(
            ResponseHeader.from_pb(r.header), r.ID, r.TTL, r.grantedTTL, list(r.keys)
        )

    async def leases(self) -> list[int]:
        r = await self._call(
            lambda s, md, t: s.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=t, metadata=md),
            idempotent=True,
        )
        return [status.ID for status in r.leases]

    async def keep_alive_once(
        self, lease: LeaseLike, *, budget: float | None = None
    ) -> LeaseKeepAliveResponse:
        """Refresh a lease once; ``LeaseNotFoundError`` when it has expired or was revoked."""
        req = pb.LeaseKeepAliveRequest(ID=lease_id(lease))

        async def invoke(s: Stubs, md: Metadata, t: float | None) -> pb.LeaseKeepAliveResponse:
            call = s.lease.LeaseKeepAlive(timeout=t, metadata=md)
            try:
                await call.write(req)
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise ConnectionFailedError("keep-alive stream closed", None, s.target)
            return resp  # type: ignore[no-any-return]

        r = await self._call(invoke, idempotent=True, budget=budget)
        if r.TTL <= 0:
            raise LeaseNotFoundError("etcdserver: requested lease not found")
        return LeaseKeepAliveResponse(ResponseHeader.from_pb(r.header), r.ID, r.TTL)

    def lease(
        self,
        ttl: int,
        *,
        id: int = 0,
        on_lost: Callable[[AsyncLease], object] | None = None,
    ) -> AsyncLease:
        """A lease kept alive by a task: ``lease = await client.lease(10)`` or
        ``async with client.lease(10) as lease:`` (revoked on exit). See ``Client.lease``."""
        return AsyncLease(self, ttl, id=id, on_lost=on_lost)

    async def keep_alive(
        self, lease: LeaseLike, *, on_lost: Callable[[AsyncLease], object] | None = None
    ) -> AsyncLease:
        """Keep an existing lease alive."""
        ttl = await self.time_to_live(lease)
        if ttl.ttl < 0:
            raise LeaseNotFoundError("etcdserver: requested lease not found")
        kept = AsyncLease(self, ttl.granted_ttl, id=ttl.id, on_lost=on_lost, existing=True)
        return await kept

    # --- lock ---------------------------------------------------------------------------

    def lock(
        self,
        name: KeyLike,
        *,
        lease: LeaseLike | None = None,
        ttl: int = 60,
        timeout: float | None = None,
    ) -> AsyncHeldLock:
        """``held = await client.lock("name")`` or ``async with client.lock("n") as key:``.
        See ``Client.lock``."""
        return AsyncHeldLock(self, to_bytes(name), lease, ttl, timeout)

    async def unlock(self, key: bytes) -> ResponseHeader:
        req = lpb.UnlockRequest(key=key)
        resp = await self._call(
            lambda s, md, t: s.lock.Unlock(req, timeout=t, metadata=md), idempotent=True
        )
        return ResponseHeader.from_pb(resp.header)

    # --- election -----------------------------------------------------------------------

    def campaign(
        self,
        name: KeyLike,
        value: KeyLike,
        *,
        lease: LeaseLike | None = None,
        ttl: int = 60,
        timeout: float | None = None,
    ) -> AsyncLeadership:
        """``leadership = await client.campaign("name", "me")`` or ``async with`` it.
        See ``Client.campaign``."""
        return AsyncLeadership(self, to_bytes(name), to_bytes(value), lease, ttl, timeout)

    async def proclaim(self, leader: LeaderKey | AsyncLeadership, value: KeyLike) -> ResponseHeader:
        key = leader.leader_key if isinstance(leader, AsyncLeadership) else leader
        req = epb.ProclaimRequest(leader=_leader_pb(key), value=to_bytes(value))
        resp = await self._call(
            lambda s, md, t: s.election.Proclaim(req, timeout=t, metadata=md), idempotent=False
        )
        return ResponseHeader.from_pb(resp.header)

    async def leader(self, name: KeyLike) -> KeyValue | None:
        req = epb.LeaderRequest(name=to_bytes(name))
        try:
            resp = await self._call(
                lambda s, md, t: s.election.Leader(req, timeout=t, metadata=md), idempotent=True
            )
        except ElectionNoLeaderError:
            return None
        return KeyValue.from_pb(resp.kv)

    async def resign(self, leader: LeaderKey | AsyncLeadership) -> ResponseHeader:
        key = leader.leader_key if isinstance(leader, AsyncLeadership) else leader
        req = epb.ResignRequest(leader=_leader_pb(key))
        resp = await self._call(
            lambda s, md, t: s.election.Resign(req, timeout=t, metadata=md), idempotent=True
        )
        return ResponseHeader.from_pb(resp.header)

    def observe(self, name: KeyLike) -> AsyncObservation:
        """Async iterator of the leaders of election ``name`` as they change."""
        return AsyncObservation(self, to_bytes(name))

    # --- cluster and maintenance --------------------------------------------------------

    async def member_list(self) -> list[Member]:
        r = await self._call(
            lambda s, md, t: s.cluster.MemberList(pb.MemberListRequest(), timeout=t, metadata=md),
            idempotent=True,
        )
        return [Member.from_pb(m) for m in r.members]

    async def status(self, endpoint: str | None = None) -> Status:
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        r = await self._call(
            lambda s, md, t: s.maintenance.Status(pb.StatusRequest(), timeout=t, metadata=md),
            idempotent=True, pinned=target,
        )  # fmt: skip
        return Status.from_pb(target, r)

    async def alarms(self) -> list[Alarm]:
        req = pb.AlarmRequest(action=pb.AlarmRequest.GET, memberID=0, alarm=pb.NONE)
        r = await self._call(
            lambda s, md, t: s.maintenance.Alarm(req, timeout=t, metadata=md), idempotent=True
        )
        return [Alarm(a.memberID, pb.AlarmType.Name(a.alarm)) for a in r.alarms]

    async def disarm(self, alarm: Alarm | None = None) -> list[Alarm]:
        todo = [alarm] if alarm is not None else await self.alarms()
        for a in todo:
            req = pb.AlarmRequest(
                action=pb.AlarmRequest.DEACTIVATE, memberID=a.member_id,
                alarm=pb.AlarmType.Value(a.alarm),
            )  # fmt: skip
            await self._call(_alarm_call(req), idempotent=True)
        return todo

    async def member_add(
        self, peer_urls: Iterable[str], *, is_learner: bool = False
    ) -> tuple[Member, list[Member]]:
        """Cluster.MemberAdd: the new member (not started yet) and the new member list."""
        req = pb.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner)
        r = await self._call(
            lambda s, md, t: s.cluster.MemberAdd(req, timeout=t, metadata=md), idempotent=False
        )
        return Member.from_pb(r.member), [Member.from_pb(m) for m in r.members]

    async def member_remove(self, member_id: int) -> list[Member]:
        """Cluster.MemberRemove; the remaining members."""
        req = pb.MemberRemoveRequest(ID=member_id)
        r = await self._call(
            lambda s, md, t: s.cluster.MemberRemove(req, timeout=t, metadata=md),
            idempotent=False,
        )
        return [Member.from_pb(m) for m in r.members]

    async def member_promote(self, member_id: int) -> list[Member]:
        """Cluster.MemberPromote (a learner becomes a voting member); the members."""
        req = pb.MemberPromoteRequest(ID=member_id)
        r = await self._call(
            lambda s, md, t: s.cluster.MemberPromote(req, timeout=t, metadata=md),
            idempotent=False,
        )
        return [Member.from_pb(m) for m in r.members]

    async def defragment(
        self, endpoint: str | None = None, *, timeout: float | None = 60.0
    ) -> None:
        """Maintenance.Defragment of ``endpoint`` (default: the current one; no failover)."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        await self._call(
            lambda s, md, t: s.maintenance.Defragment(
                pb.DefragmentRequest(), timeout=t, metadata=md
            ),
            idempotent=True, pinned=target, timeout=timeout, use_default_timeout=False,
        )  # fmt: skip

    async def move_leader(self, target_id: int, endpoint: str | None = None) -> ResponseHeader:
        """Maintenance.MoveLeader to member ``target_id``; ``endpoint`` must be the leader's."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        req = pb.MoveLeaderRequest(targetID=target_id)
        r = await self._call(
            lambda s, md, t: s.maintenance.MoveLeader(req, timeout=t, metadata=md),
            idempotent=False, pinned=target,
        )  # fmt: skip
        return ResponseHeader.from_pb(r.header)

    async def snapshot(self, endpoint: str | None = None) -> AsyncGenerator[bytes, None]:
        """Maintenance.Snapshot of ``endpoint`` (default: the current one), chunk by chunk:
        the bytes ``etcdctl snapshot save`` writes (etcd's db file and its SHA-256)."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        ep = self._endpoint(target)
        try:
            md = await self._metadata(ep)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target) from exc
        stream = ep.maintenance.Snapshot(pb.SnapshotRequest(), metadata=md)
        try:
            async for resp in stream:
                if resp.blob:
                    yield resp.blob
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target) from exc
        finally:
            stream.cancel()


def _alarm_call(req: pb.AlarmRequest) -> Invoke[Any]:
    return lambda s, md, t: s.maintenance.Alarm(req, timeout=t, metadata=md)


def _leader_pb(k: LeaderKey) -> epb.LeaderKey:
    return epb.LeaderKey(name=k.name, key=k.key, rev=k.rev, lease=k.lease)


class AsyncWatch:
    """The events of one watch as an async iterator of :class:`WatchResponse` batches.

    ``await`` it (or enter it) to register the watch; ``cancel()`` ends the iteration.
    """

    def __init__(self, client: AsyncClient, spec: WatchSpec) -> None:
        self._client = client
        self._state = WatchState(spec)
        self._call: Any = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._closed = False
        self.endpoint = client.current_endpoint

    @property
    def next_revision(self) -> int:
        return self._state.next_revision

    def __await__(self) -> Generator[Any, None, AsyncWatch]:
        return self.start().__await__()

    async def start(self) -> AsyncWatch:
        """Register the watch (once); returns self."""
        async with self._start_lock:
            if not self._started:
                await self._open(None)
                self._started = True
        return self

    async def _open(self, failed: EtcdError | None) -> None:
        client, ring = self._client, self._client._ring
        backoff = Backoff(len(ring.targets), client.retry_timeout)
        err = failed
        while True:
            if err is not None:
                if not should_reconnect(err):
                    raise err
                ring.failed(ring.targets.index(self.endpoint))
                delay = backoff.next_delay()
                if delay is None:
                    raise err
                await asyncio.sleep(delay)
            if self._closed:
                return
            self.endpoint = target = client.current_endpoint
            ep = client._endpoint(target)
            call = None
            try:
                md = (*await client._metadata(ep), REQUIRE_LEADER)
                call = ep.watch.Watch(metadata=md)
                self._call = call
                await call.write(self._state.create_request())
                await asyncio.wait_for(self._created(call), client.timeout)
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, target)
            except TimeoutError:
                err = ConnectionFailedError("watch creation timed out", None, target)
            except EtcdError:
                self.cancel()
                raise
            if call is not None:
                call.cancel()

    async def _created(self, call: Any) -> None:
        while self._state.watch_id < 0:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionFailedError("watch stream closed", None, self.endpoint)
            self._state.handle(resp, self.endpoint)

    def __aiter__(self) -> AsyncIterator[WatchResponse]:
        return self

    async def __anext__(self) -> WatchResponse:
        if not self._started:
            await self.start()
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as exc:
                err: EtcdError = from_rpc_error(exc, self.endpoint)
            else:
                if resp is grpc.aio.EOF:
                    err = ConnectionFailedError("watch stream ended", None, self.endpoint)
                else:
                    try:
                        batch = self._state.handle(resp, self.endpoint)
                    except EtcdError:
                        self.cancel()
                        raise
                    if batch is not None:
                        return batch
                    continue
            if self._closed:
                raise StopAsyncIteration
            log.info("watch stream on %s broke (%s); resuming elsewhere", self.endpoint, err)
            old = self._call
            try:
                await self._open(err)
            except EtcdError:
                self.cancel()
                raise
            finally:
                if old is not None:
                    old.cancel()

    async def request_progress(self) -> None:
        """Ask for a progress notification (an empty batch with the current revision)."""
        if self._call is not None and not self._closed:
            await self._call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def cancel(self) -> None:
        """Stop watching; a pending ``__anext__`` ends with StopAsyncIteration."""
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    close = cancel

    async def __aenter__(self) -> AsyncWatch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncObservation:
    """Leaders of an election as they change (async iterator of :class:`KeyValue`)."""

    def __init__(self, client: AsyncClient, name: bytes) -> None:
        self._client = client
        self._name = name
        self._last: tuple[bytes, int] | None = None
        self._closed = False
        self._call: Any = None
        self._backoff: Backoff | None = None
        self.endpoint = client.current_endpoint

    async def _open(self, failed: EtcdError | None) -> None:
        client, ring = self._client, self._client._ring
        while True:
            if failed is not None:
                if not should_reconnect(failed):
                    raise failed
                ring.failed(ring.targets.index(self.endpoint))
                if self._backoff is None:
                    self._backoff = Backoff(len(ring.targets), client.retry_timeout)
                delay = self._backoff.next_delay()
                if delay is None:
                    raise failed
                await asyncio.sleep(delay)
            self.endpoint = target = client.current_endpoint
            ep = client._endpoint(target)
            try:
                md = (*await client._metadata(ep), REQUIRE_LEADER)
            except grpc.RpcError as exc:
                failed = from_rpc_error(exc, target)
                continue
            self._call = ep.election.Observe(epb.LeaderRequest(name=self._name), metadata=md)
            return

    def __aiter__(self) -> AsyncIterator[KeyValue]:
        return self

    async def __anext__(self) -> KeyValue:
        if self._call is None and not self._closed:
            await self._open(None)
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as exc:
                err: EtcdError = from_rpc_error(exc, self.endpoint)
            else:
                if resp is grpc.aio.EOF:
                    err = ConnectionFailedError("observe stream ended", None, self.endpoint)
                else:
                    self._backoff = None
                    kv = KeyValue.from_pb(resp.kv)
                    if (kv.key, kv.mod_revision) != self._last:
                        self._last = (kv.key, kv.mod_revision)
                        return kv
                    continue
            if self._closed:
                raise StopAsyncIteration
            self._call.cancel()
            try:
                await self._open(err)
            except EtcdError:
                self.cancel()
                raise

    def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    close = cancel

    async def __aenter__(self) -> AsyncObservation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncLease:
    """A lease kept alive by an asyncio task (see ``Client.lease`` / ``Lease``).

    ``lost`` (an ``asyncio.Event``) is set and ``on_lost(self)`` called (awaited if it returns
    an awaitable) when the lease is lost. ``async with`` revokes it on exit.
    """

    def __init__(
        self,
        client: AsyncClient,
        ttl: int,
        *,
        id: int = 0,
        on_lost: Callable[[AsyncLease], object] | None = None,
        existing: bool = False,
    ) -> None:
        self._client = client
        self.id = id
        self.ttl = ttl
        self.on_lost = on_lost
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._existing = existing
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._expires = 0.0

    def __repr__(self) -> str:
        return f"<AsyncLease {self.id:#x} ttl={self.ttl} alive={self.alive}>"

    @property
    def alive(self) -> bool:
        return self._task is not None and not self.lost.is_set() and not self._stopped

    @property
    def remaining(self) -> float:
        return max(0.0, self._expires - asyncio.get_running_loop().time())

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return self.start().__await__()

    async def start(self) -> AsyncLease:
        """Grant the lease (unless it exists) and start keeping it alive; returns self."""
        if self._task is not None:
            return self
        loop = asyncio.get_running_loop()
        if not self._existing:
            g = await self._client.grant(self.ttl, id=self.id)
            self.id, self.ttl = g.id, g.ttl
        self._expires = loop.time() + self.ttl
        self._task = asyncio.create_task(self._run(), name=f"etcd-lease-{self.id:x}")
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait = max(self.ttl / 3, 0.05)
        while True:
            await asyncio.sleep(wait)
            sent = loop.time()
            try:
                r = await self._client.keep_alive_once(
                    self.id, budget=max(0.1, min(self._expires - sent, self.ttl / 3))
                )
            except LeaseNotFoundError:
                await self._lose("the lease expired or was revoked")
                return
            except RuntimeError:  # the client was closed
                return
            except EtcdError as e:
                if loop.time() >= self._expires:
                    await self._lose(f"no keep-alive got through before the TTL ran out ({e})")
                    return
                log.warning("keep-alive of lease %x failed: %s", self.id, e)
                wait = min(0.5, max(0.05, (self._expires - loop.time()) / 4))
                continue
            self._expires = sent + r.ttl
            wait = max(r.ttl / 3, 0.05)

    async def _lose(self, reason: str) -> None:
        if self._stopped:
            return
        self.lost_reason = reason
        self.lost.set()
        log.warning("lease %x lost: %s", self.id, reason)
        if self.on_lost is not None:
            try:
                result = self.on_lost(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_lost callback of lease %x failed", self.id)

    async def close(self) -> None:
        """Stop refreshing (the lease then expires by itself)."""
        self._stopped = True
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def revoke(self) -> None:
        """Stop refreshing and revoke the lease; quiet if already gone."""
        await self.close()
        with contextlib.suppress(LeaseNotFoundError):
            await self._client.revoke(self.id)

    async def __aenter__(self) -> AsyncLease:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.revoke()


class AsyncHeldLock:
    """A distributed lock: ``await`` it to acquire (returns self), or ``async with`` it (binds
    the lock key); ``release()`` frees it and revokes its own lease."""

    def __init__(
        self,
        client: AsyncClient,
        name: bytes,
        lease: LeaseLike | None,
        ttl: int,
        timeout: float | None,
    ) -> None:
        self._client = client
        self.name = name
        self._given_lease = lease
        self._ttl = ttl
        self._timeout = timeout
        self.key: bytes = b""
        self.lease: AsyncLease | None = None
        self.lease_id = 0
        self.released = False

    @property
    def lost(self) -> asyncio.Event | None:
        return self.lease.lost if self.lease is not None else None

    def __await__(self) -> Generator[Any, None, AsyncHeldLock]:
        return self.acquire().__await__()

    async def acquire(self) -> AsyncHeldLock:
        if self.key:
            return self
        if self._given_lease is None:
            self.lease = await self._client.lease(self._ttl)
            self.lease_id = self.lease.id
        else:
            self.lease_id = lease_id(self._given_lease)
        req = lpb.LockRequest(name=self.name, lease=self.lease_id)
        try:
            resp = await self._client._call(
                lambda s, md, t: s.lock.Lock(req, timeout=t, metadata=md),
                idempotent=True, timeout=self._timeout, use_default_timeout=False,
            )  # fmt: skip
        except BaseException:
            if self.lease is not None:
                await asyncio.shield(self.lease.revoke())
            raise
        self.key = resp.key
        return self

    async def release(self) -> None:
        if self.released or not self.key:
            return
        self.released = True
        try:
            await self._client.unlock(self.key)
        finally:
            if self.lease is not None:
                await self.lease.revoke()

    async def __aenter__(self) -> bytes:
        await self.acquire()
        return self.key

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncLeadership:
    """Leadership of an election: ``await`` it to campaign (returns self once elected), or
    ``async with`` it; ``proclaim(value)``, ``resign()``."""

    def __init__(
        self,
        client: AsyncClient,
        name: bytes,
        value: bytes,
        lease: LeaseLike | None,
        ttl: int,
        timeout: float | None,
    ) -> None:
        self._client = client
        self.name = name
        self.value = value
        self._given_lease = lease
        self._ttl = ttl
        self._timeout = timeout
        self._key: LeaderKey | None = None
        self.lease: AsyncLease | None = None
        self.resigned = False

    @property
    def leader_key(self) -> LeaderKey:
        if self._key is None:
            raise RuntimeError("not elected yet (await the campaign first)")
        return self._key

    @property
    def lost(self) -> asyncio.Event | None:
        return self.lease.lost if self.lease is not None else None

    def __await__(self) -> Generator[Any, None, AsyncLeadership]:
        return self.campaign().__await__()

    async def campaign(self) -> AsyncLeadership:
        if self._key is not None:
            return self
        if self._given_lease is None:
            self.lease = await self._client.lease(self._ttl)
            lid = self.lease.id
        else:
            lid = lease_id(self._given_lease)
        req = epb.CampaignRequest(name=self.name, lease=lid, value=self.value)
        try:
            resp = await self._client._call(
                lambda s, md, t: s.election.Campaign(req, timeout=t, metadata=md),
                idempotent=True, timeout=self._timeout, use_default_timeout=False,
            )  # fmt: skip
        except BaseException:
            if self.lease is not None:
                await asyncio.shield(self.lease.revoke())
            raise
        self._key = LeaderKey.from_pb(resp.leader)
        return self

    async def proclaim(self, value: KeyLike) -> None:
        await self._client.proclaim(self.leader_key, value)

    async def resign(self) -> None:
        if self.resigned or self._key is None:
            return
        self.resigned = True
        try:
            await self._client.resign(self._key)
        finally:
            if self.lease is not None:
                await self.lease.revoke()

    async def __aenter__(self) -> AsyncLeadership:
        return await self.campaign()

    async def __aexit__(self, *exc: object) -> None:
        await self.resign()
