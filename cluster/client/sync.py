"""The blocking client (grpc's sync stubs); threads only for lease keep-alives.

>>> with Client("127.0.0.1:2379,127.0.0.1:22379") as c:
...     c.put("greeting", "hello")
...     c.get("greeting").value
b'hello'
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc

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

__all__ = ["Client", "HeldLock", "Leadership", "Lease", "Observation", "Watch"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
Invoke = Callable[[Stubs, Metadata, float | None], T]


class Client:
    """A blocking etcd v3 client over one or more endpoints, safe to share between threads.

    Calls go to one endpoint at a time; when it fails with UNAVAILABLE the call moves to the
    next one, automatically only when that is safe (see ``is_retryable`` in ``_core``: reads
    always, writes only if they cannot have been applied), for up to ``retry_timeout``
    seconds. ``timeout`` bounds each attempt of a non-blocking call.
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
        self._lock = threading.Lock()
        self._user = user
        self._password = password
        self._token: str | None = None
        self.timeout = timeout
        self.retry_timeout = retry_timeout
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return list(self._ring.targets)

    @property
    def current_endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._ring.targets[self._ring.current]

    def _endpoint(self, target: str) -> Stubs:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            stubs = self._stubs.get(target)
            if stubs is None:
                if self._tls is not None:
                    creds = self._tls.credentials()
                    channel = grpc.secure_channel(target, creds, options=self._options)
                else:
                    channel = grpc.insecure_channel(target, options=self._options)
                stubs = self._stubs[target] = Stubs(target, channel)
            return stubs

    def _metadata(self, ep: Stubs) -> Metadata:
        if self._user is None:
            return ()
        token = self._token
        if token is None:
            req = pb.AuthenticateRequest(name=self._user, password=self._password or "")
            token = self._token = ep.auth.Authenticate(req, timeout=self.timeout).token
        return (("token", token),)

    def _call(
        self,
        invoke: Invoke[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        use_default_timeout: bool = True,
        budget: float | None = None,
        pinned: str | None = None,
    ) -> T:
        """Run ``invoke(stubs, metadata, timeout)`` with failover (none when ``pinned``)."""
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
                return invoke(ep, self._metadata(ep), timeout)
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
                time.sleep(delay)

    def close(self) -> None:
        """Close every channel (kept-alive leases stop being refreshed)."""
        with self._lock:
            self._closed = True
            stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            s.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- KV -----------------------------------------------------------------------------

    def get(
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
        """Read one key, a prefix (``prefix=True``) or ``[key, range_end)``, at ``revision``
        (0: latest). ``serializable`` reads the member's local state (possibly stale)."""
        req = range_request(
            key, prefix=prefix, range_end=range_end, revision=revision, limit=limit,
            sort_order=sort_order, sort_target=sort_target, keys_only=keys_only,
            count_only=count_only, serializable=serializable,
            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision, max_create_revision=max_create_revision,
        )  # fmt: skip
        resp = self._call(lambda s, md, t: s.kv.Range(req, timeout=t, metadata=md), idempotent=True)
        return GetResponse.from_pb(resp)

    def put(
        self,
        key: KeyLike,
        value: KeyLike,
        *,
        lease: LeaseLike | None = None,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """Write ``key``; ``lease`` attaches it to a lease (an id or a ``Lease``)."""
        req = put_request(
            key, value, lease=lease, prev_kv=prev_kv,
            ignore_value=ignore_value, ignore_lease=ignore_lease,
        )  # fmt: skip
        resp = self._call(lambda s, md, t: s.kv.Put(req, timeout=t, metadata=md), idempotent=False)
        return PutResponse.from_pb(resp)

    def delete(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        prev_kv: bool = False,
    ) -> DeleteResponse:
        """Delete one key, a prefix, or ``[key, range_end)``."""
        req = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        resp = self._call(
            lambda s, md, t: s.kv.DeleteRange(req, timeout=t, metadata=md), idempotent=False
        )
        return DeleteResponse.from_pb(resp)

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResponse:
        """If every ``compare`` holds run ``success``, else ``failure``, atomically."""
        req = txn_request(compare, success, failure)
        resp = self._call(
            lambda s, md, t: s.kv.Txn(req, timeout=t, metadata=md),
            idempotent=txn_is_read_only(req),
        )
        return TxnResponse.from_pb(resp)

    def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        """Forget the history before ``revision``."""
        req = pb.CompactionRequest(revision=revision, physical=physical)
        resp = self._call(
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
    ) -> Watch:
        """Watch a key, prefix or range from ``start_revision`` (0: from now on).

        Returns once the watch is registered, so every later change is seen. Iterate the
        result for :class:`WatchResponse` batches; ``cancel()`` (from any thread) ends it.
        A lost member or stream is resumed on another endpoint from the revision after the
        last delivered one; a compacted start revision raises ``CompactedError``.
        """
        spec = WatchSpec.build(
            key, prefix=prefix, range_end=range_end, start_revision=start_revision,
            prev_kv=prev_kv, filters=filters, progress_notify=progress_notify,
        )  # fmt: skip
        return Watch(self, spec)

    # --- lease --------------------------------------------------------------------------

    def grant(self, ttl: int, *, id: int = 0) -> LeaseGrantResponse:
        """A new lease of ``ttl`` seconds (``id`` 0: the server picks one)."""
        req = pb.LeaseGrantRequest(TTL=ttl, ID=id)
        resp = self._call(
            lambda s, md, t: s.lease.LeaseGrant(req, timeout=t, metadata=md), idempotent=False
        )
        if resp.error:
            raise EtcdError(resp.error, endpoint=self.current_endpoint)
        return LeaseGrantResponse(ResponseHeader.from_pb(resp.header), resp.ID, resp.TTL)

    def revoke(self, lease: LeaseLike) -> ResponseHeader:
        """Revoke a lease, deleting its keys."""
        req = pb.LeaseRevokeRequest(ID=lease_id(lease))
        resp = self._call(
            lambda s, md, t: s.lease.LeaseRevoke(req, timeout=t, metadata=md), idempotent=True
        )
        return ResponseHeader.from_pb(resp.header)

    def time_to_live(self, lease: LeaseLike, *, keys: bool = False) -> LeaseTimeToLiveResponse:
        """Seconds left (-1 when gone), the granted TTL and, with ``keys``, attached keys."""
        req = pb.LeaseTimeToLiveRequest(ID=lease_id(lease), keys=keys)
        r = self._call(
            lambda s, md, t: s.lease.LeaseTimeToLive(req, timeout=t, metadata=md),
            idempotent=True,
        )
        return LeaseTimeToLiveResponse(
            ResponseHeader.from_pb(r.header), r.ID, r.TTL, r.grantedTTL, list(r.keys)
        )

    def leases(self) -> list[int]:
        """The ids of all live leases."""
        r = self._call(
            lambda s, md, t: s.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=t, metadata=md),
            idempotent=True,
        )
        return [status.ID for status in r.leases]

    def keep_alive_once(
        self, lease: LeaseLike, *, budget: float | None = None
    ) -> LeaseKeepAliveResponse:
        """Refresh a lease once; ``LeaseNotFoundError`` when it has expired or was revoked."""
        req = pb.LeaseKeepAliveRequest(ID=lease_id(lease))

        def invoke(s: Stubs, md: Metadata, t: float | None) -> pb.LeaseKeepAliveResponse:
            call = s.lease.LeaseKeepAlive(iter((req,)), timeout=t, metadata=md)
            try:
                for resp in call:
                    return resp  # type: ignore[no-any-return]
            finally:
                call.cancel()
            raise ConnectionFailedError(
                "keep-alive stream closed without an answer", None, s.target
            )

        r = self._call(invoke, idempotent=True, budget=budget)
        if r.TTL <= 0:
            raise LeaseNotFoundError("etcdserver: requested lease not found", None, None)
        return LeaseKeepAliveResponse(ResponseHeader.from_pb(r.header), r.ID, r.TTL)

    def lease(
        self, ttl: int, *, id: int = 0, on_lost: Callable[[Lease], object] | None = None
    ) -> Lease:
        """Grant a lease and keep it alive (refreshed every ttl/3 in a background thread).

        ``on_lost(lease)`` runs (and ``lease.lost`` is set) if it expires or is revoked behind
        our back. Used as a context manager, the lease is revoked on exit.
        """
        g = self.grant(ttl, id=id)
        return Lease(self, g.id, g.ttl, on_lost)

    def keep_alive(
        self, lease: LeaseLike, *, on_lost: Callable[[Lease], object] | None = None
    ) -> Lease:
        """Keep an existing lease alive (as :meth:`lease` does for a new one)."""
        ttl = self.time_to_live(lease)
        if ttl.ttl < 0:
            raise LeaseNotFoundError("etcdserver: requested lease not found")
        return Lease(self, ttl.id, ttl.granted_ttl, on_lost)

    # --- lock ---------------------------------------------------------------------------

    def lock(
        self,
        name: KeyLike,
        *,
        lease: LeaseLike | None = None,
        ttl: int = 60,
        timeout: float | None = None,
    ) -> HeldLock:
        """Acquire the distributed lock ``name`` (etcd's v3lock service), blocking until held
        or ``timeout`` passes (``DeadlineExceededError``).

        Without ``lease`` a lease of ``ttl`` seconds is granted and kept alive for the lock
        and revoked on release. ``with client.lock("name", ttl=10) as key:`` releases at the
        end of the block. The lock is lost if its lease expires (``HeldLock.lost``).
        """
        owned = self.lease(ttl) if lease is None else None
        lid = owned.id if owned is not None else lease_id(lease)
        req = lpb.LockRequest(name=to_bytes(name), lease=lid)
        try:
            # Safe to repeat: the server's lock key is name/lease, reused if it exists already.
            resp = self._call(
                lambda s, md, t: s.lock.Lock(req, timeout=t, metadata=md),
                idempotent=True, timeout=timeout, use_default_timeout=False,
            )  # fmt: skip
        except BaseException:
            if owned is not None:
                owned.revoke()
            raise
        return HeldLock(self, to_bytes(name), resp.key, lid, owned)

    def unlock(self, key: bytes) -> ResponseHeader:
        """Release a lock by the key ``lock()`` returned."""
        req = lpb.UnlockRequest(key=key)
        resp = self._call(
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
    ) -> Leadership:
        """Campaign in election ``name`` and block until elected (or ``timeout``).

        Without ``lease`` a kept-alive lease of ``ttl`` seconds is made for the candidacy and
        revoked on resign. ``with client.campaign("name", "me") as leadership:`` resigns on
        exit.
        """
        owned = self.lease(ttl) if lease is None else None
        lid = owned.id if owned is not None else lease_id(lease)
        req = epb.CampaignRequest(name=to_bytes(name), lease=lid, value=to_bytes(value))
        try:
            resp = self._call(
                lambda s, md, t: s.election.Campaign(req, timeout=t, metadata=md),
                idempotent=True, timeout=timeout, use_default_timeout=False,
            )  # fmt: skip
        except BaseException:
            if owned is not None:
                owned.revoke()
            raise
        return Leadership(self, LeaderKey.from_pb(resp.leader), owned)

    def proclaim(self, leader: LeaderKey | Leadership, value: KeyLike) -> ResponseHeader:
        """As leader, publish a new value (``NotElectionLeaderError`` if no longer leader)."""
        key = leader.leader_key if isinstance(leader, Leadership) else leader
        req = epb.ProclaimRequest(leader=_leader_pb(key), value=to_bytes(value))
        resp = self._call(
            lambda s, md, t: s.election.Proclaim(req, timeout=t, metadata=md), idempotent=False
        )
        return ResponseHeader.from_pb(resp.header)

    def leader(self, name: KeyLike) -> KeyValue | None:
        """The current leader's key and value, or None without a leader."""
        req = epb.LeaderRequest(name=to_bytes(name))
        try:
            resp = self._call(
                lambda s, md, t: s.election.Leader(req, timeout=t, metadata=md), idempotent=True
            )
        except ElectionNoLeaderError:
            return None
        return KeyValue.from_pb(resp.kv)

    def resign(self, leader: LeaderKey | Leadership) -> ResponseHeader:
        """Give up leadership (a no-op if the key no longer leads)."""
        key = leader.leader_key if isinstance(leader, Leadership) else leader
        req = epb.ResignRequest(leader=_leader_pb(key))
        resp = self._call(
            lambda s, md, t: s.election.Resign(req, timeout=t, metadata=md), idempotent=True
        )
        return ResponseHeader.from_pb(resp.header)

    def observe(self, name: KeyLike) -> Observation:
        """Iterate the leaders of election ``name`` as they change (a :class:`KeyValue` each)."""
        return Observation(self, to_bytes(name))

    # --- cluster and maintenance --------------------------------------------------------

    def member_list(self) -> list[Member]:
        r = self._call(
            lambda s, md, t: s.cluster.MemberList(pb.MemberListRequest(), timeout=t, metadata=md),
            idempotent=True,
        )
        return [Member.from_pb(m) for m in r.members]

    def status(self, endpoint: str | None = None) -> Status:
        """Maintenance.Status of ``endpoint`` (default: the current one; no failover)."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        r = self._call(
            lambda s, md, t: s.maintenance.Status(pb.StatusRequest(), timeout=t, metadata=md),
            idempotent=True, pinned=target,
        )  # fmt: skip
        return Status.from_pb(target, r)

    def alarms(self) -> list[Alarm]:
        """The active alarms of every member."""
        req = pb.AlarmRequest(action=pb.AlarmRequest.GET, memberID=0, alarm=pb.NONE)
        r = self._call(
            lambda s, md, t: s.maintenance.Alarm(req, timeout=t, metadata=md), idempotent=True
        )
        return [Alarm(a.memberID, pb.AlarmType.Name(a.alarm)) for a in r.alarms]

    def disarm(self, alarm: Alarm | None = None) -> list[Alarm]:
        """Deactivate ``alarm``, or every active alarm; returns those disarmed."""
        todo = [alarm] if alarm is not None else self.alarms()
        for a in todo:
            req = pb.AlarmRequest(
                action=pb.AlarmRequest.DEACTIVATE, memberID=a.member_id,
                alarm=pb.AlarmType.Value(a.alarm),
            )  # fmt: skip
            self._call(_alarm_call(req), idempotent=True)
        return todo

    def member_add(
        self, peer_urls: Iterable[str], *, is_learner: bool = False
    ) -> tuple[Member, list[Member]]:
        """Cluster.MemberAdd: the new member (not started yet) and the new member list."""
        req = pb.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner)
        r = self._call(
            lambda s, md, t: s.cluster.MemberAdd(req, timeout=t, metadata=md), idempotent=False
        )
        return Member.from_pb(r.member), [Member.from_pb(m) for m in r.members]

    def member_remove(self, member_id: int) -> list[Member]:
        """Cluster.MemberRemove; the remaining members."""
        req = pb.MemberRemoveRequest(ID=member_id)
        r = self._call(
            lambda s, md, t: s.cluster.MemberRemove(req, timeout=t, metadata=md),
            idempotent=False,
        )
        return [Member.from_pb(m) for m in r.members]

    def member_promote(self, member_id: int) -> list[Member]:
        """Cluster.MemberPromote (a learner becomes a voting member); the members."""
        req = pb.MemberPromoteRequest(ID=member_id)
        r = self._call(
            lambda s, md, t: s.cluster.MemberPromote(req, timeout=t, metadata=md),
            idempotent=False,
        )
        return [Member.from_pb(m) for m in r.members]

    def defragment(self, endpoint: str | None = None, *, timeout: float | None = 60.0) -> None:
        """Maintenance.Defragment of ``endpoint`` (default: the current one; no failover)."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        self._call(
            lambda s, md, t: s.maintenance.Defragment(
                pb.DefragmentRequest(), timeout=t, metadata=md
            ),
            idempotent=True, pinned=target, timeout=timeout, use_default_timeout=False,
        )  # fmt: skip

    def move_leader(self, target_id: int, endpoint: str | None = None) -> ResponseHeader:
        """Maintenance.MoveLeader to member ``target_id``; ``endpoint`` must be the leader's."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        req = pb.MoveLeaderRequest(targetID=target_id)
        r = self._call(
            lambda s, md, t: s.maintenance.MoveLeader(req, timeout=t, metadata=md),
            idempotent=False, pinned=target,
        )  # fmt: skip
        return ResponseHeader.from_pb(r.header)

    def snapshot(self, endpoint: str | None = None) -> Iterator[bytes]:
        """Maintenance.Snapshot of ``endpoint`` (default: the current one), chunk by chunk:
        the bytes ``etcdctl snapshot save`` writes (etcd's db file and its SHA-256)."""
        target = parse_endpoints(endpoint)[0][0] if endpoint else self.current_endpoint
        ep = self._endpoint(target)
        try:
            stream = ep.maintenance.Snapshot(pb.SnapshotRequest(), metadata=self._metadata(ep))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target) from exc
        try:
            for resp in stream:
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


def _drain(q: queue.SimpleQueue[pb.WatchRequest | None]) -> Iterator[pb.WatchRequest]:
    while (item := q.get()) is not None:
        yield item


class Watch:
    """The events of one watch, as an iterator of :class:`WatchResponse` batches.

    Resumes on another endpoint after a stream break; ``cancel()`` ends the iteration.
    ``endpoint`` is where the watch is now served.
    """

    def __init__(self, client: Client, spec: WatchSpec) -> None:
        self._client = client
        self._state = WatchState(spec)
        self._mutex = threading.Lock()
        self._closed = False
        self._call: Any = None
        self._requests: queue.SimpleQueue[pb.WatchRequest | None] | None = None
        self._timed_out = False
        self.endpoint: str = client.current_endpoint
        self._open(None)

    @property
    def next_revision(self) -> int:
        """The first revision not delivered yet (where a resumed stream starts)."""
        return self._state.next_revision

    def _open(self, failed: EtcdError | None) -> None:
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
                time.sleep(delay)
            if self._closed:
                return
            self.endpoint = target = client.current_endpoint
            try:
                self._start(client._endpoint(target))
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, target)
                if self._timed_out:
                    err = ConnectionFailedError("watch creation timed out", None, target)
            except StopIteration:
                err = ConnectionFailedError("watch stream closed before creation", None, target)

    def _start(self, ep: Stubs) -> None:
        requests: queue.SimpleQueue[pb.WatchRequest | None] = queue.SimpleQueue()
        requests.put(self._state.create_request())
        md = (*self._client._metadata(ep), REQUIRE_LEADER)
        call = ep.watch.Watch(_drain(requests), metadata=md)
        with self._mutex:
            old = self._requests
            self._call, self._requests = call, requests
            closed = self._closed
        if old is not None:
            old.put(None)
        if closed:
            self._stop(call, requests)
            return
        self._timed_out = False
        timer = None
        if self._client.timeout:
            timer = threading.Timer(self._client.timeout, self._creation_timeout, (call,))
            timer.daemon = True
            timer.start()
        try:
            while self._state.watch_id < 0:
                self._handle(next(call))
        finally:
            if timer is not None:
                timer.cancel()

    def _creation_timeout(self, call: Any) -> None:
        self._timed_out = True
        call.cancel()

    def _handle(self, resp: pb.WatchResponse) -> WatchResponse | None:
        try:
            return self._state.handle(resp, self.endpoint)
        except EtcdError:
            self.cancel()
            raise

    @staticmethod
    def _stop(call: Any, requests: queue.SimpleQueue[pb.WatchRequest | None] | None) -> None:
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchResponse:
        while True:
            if self._closed:
                raise StopIteration
            try:
                resp = next(self._call)
            except StopIteration:
                err: EtcdError = ConnectionFailedError("watch stream ended", None, self.endpoint)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.endpoint)
            else:
                batch = self._handle(resp)
                if batch is not None:
                    return batch
                continue
            if self._closed or self._client._closed:
                self.cancel()
                raise StopIteration
            log.info("watch stream on %s broke (%s); resuming elsewhere", self.endpoint, err)
            try:
                self._open(err)
            except EtcdError:
                self.cancel()
                raise

    def request_progress(self) -> None:
        """Ask for a progress notification (an empty batch carrying the current revision)."""
        with self._mutex:
            if self._requests is not None and not self._closed:
                self._requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def cancel(self) -> None:
        """Stop watching; a blocked iteration ends (safe from any thread)."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            call, requests = self._call, self._requests
        self._stop(call, requests)

    close = cancel

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Observation:
    """Leaders of an election as they change (iterator of :class:`KeyValue`); ``cancel()``."""

    def __init__(self, client: Client, name: bytes) -> None:
        self._client = client
        self._name = name
        self._last: tuple[bytes, int] | None = None
        self._mutex = threading.Lock()
        self._closed = False
        self._call: Any = None
        self._backoff: Backoff | None = None
        self.endpoint = client.current_endpoint
        self._open(None)

    def _open(self, failed: EtcdError | None) -> None:
        client, ring = self._client, self._client._ring
        if failed is not None:
            if not should_reconnect(failed):
                raise failed
            ring.failed(ring.targets.index(self.endpoint))
            if self._backoff is None:
                self._backoff = Backoff(len(ring.targets), client.retry_timeout)
            delay = self._backoff.next_delay()
            if delay is None:
                raise failed
            time.sleep(delay)
        self.endpoint = target = client.current_endpoint
        ep = client._endpoint(target)
        try:
            md = (*client._metadata(ep), REQUIRE_LEADER)
        except grpc.RpcError as exc:
            self._open(from_rpc_error(exc, target))
            return
        call = ep.election.Observe(epb.LeaderRequest(name=self._name), metadata=md)
        with self._mutex:
            self._call = call
            if self._closed:
                call.cancel()

    def __iter__(self) -> Observation:
        return self

    def __next__(self) -> KeyValue:
        while True:
            if self._closed:
                raise StopIteration
            try:
                resp = next(self._call)
            except StopIteration:
                err: EtcdError = ConnectionFailedError("observe stream ended", None, self.endpoint)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.endpoint)
            else:
                self._backoff = None
                kv = KeyValue.from_pb(resp.kv)
                if (kv.key, kv.mod_revision) != self._last:
                    self._last = (kv.key, kv.mod_revision)
                    return kv
                continue
            if self._closed:
                raise StopIteration
            try:
                self._open(err)
            except EtcdError:
                self.cancel()
                raise

    def cancel(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            call = self._call
        if call is not None:
            call.cancel()

    close = cancel

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.cancel()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Lease:
    """A lease kept alive by a background thread (every ttl/3) until ``revoke()``/``close()``.

    ``lost`` is set (and ``on_lost(self)`` called once, from the keep-alive thread) when the
    lease expires or is revoked by someone else, or no refresh got through before its TTL ran
    out. As a context manager it revokes the lease on exit.
    """

    def __init__(
        self,
        client: Client,
        id: int,
        ttl: int,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> None:
        self._client = client
        self.id = id
        self.ttl = ttl
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._expires = time.monotonic() + ttl
        self._thread = threading.Thread(target=self._run, name=f"etcd-lease-{id:x}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "stopped" if self._stop.is_set() else "alive"
        return f"<Lease {self.id:#x} ttl={self.ttl} {state}>"

    @property
    def alive(self) -> bool:
        """Kept alive and not lost."""
        return not self.lost.is_set() and not self._stop.is_set()

    @property
    def remaining(self) -> float:
        """Seconds until the lease expires unless refreshed (as far as this client knows)."""
        return max(0.0, self._expires - time.monotonic())

    def _run(self) -> None:
        wait = max(self.ttl / 3, 0.05)
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                r = self._client.keep_alive_once(
                    self.id, budget=max(0.1, min(self._expires - sent, self.ttl / 3))
                )
            except LeaseNotFoundError:
                self._lose("the lease expired or was revoked")
                return
            except RuntimeError:  # the client was closed
                return
            except EtcdError as e:
                if self._stop.is_set():
                    return
                if time.monotonic() >= self._expires:
                    self._lose(f"no keep-alive got through before the TTL ran out ({e})")
                    return
                log.warning("keep-alive of lease %x failed: %s", self.id, e)
                wait = min(0.5, max(0.05, (self._expires - time.monotonic()) / 4))
                continue
            self._expires = sent + r.ttl
            wait = max(r.ttl / 3, 0.05)

    def _lose(self, reason: str) -> None:
        if self._stop.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        log.warning("lease %x lost: %s", self.id, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:
                log.exception("on_lost callback of lease %x failed", self.id)

    def close(self) -> None:
        """Stop refreshing (the lease then expires by itself)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def revoke(self) -> None:
        """Stop refreshing and revoke the lease (deleting its keys); quiet if already gone."""
        self.close()
        with contextlib.suppress(LeaseNotFoundError):
            self._client.revoke(self.id)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.revoke()


class HeldLock:
    """A held lock: ``key`` proves ownership; ``release()`` (or leaving the ``with``) frees it."""

    def __init__(
        self, client: Client, name: bytes, key: bytes, lease_id: int, lease: Lease | None
    ) -> None:
        self._client = client
        self.name = name
        self.key = key
        self.lease_id = lease_id
        self.lease = lease
        self.released = False

    @property
    def lost(self) -> threading.Event | None:
        """Set when the lock's own lease was lost (None for a lease given by the caller)."""
        return self.lease.lost if self.lease is not None else None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._client.unlock(self.key)
        finally:
            if self.lease is not None:
                self.lease.revoke()

    def __enter__(self) -> bytes:
        return self.key

    def __exit__(self, *exc: object) -> None:
        self.release()


class Leadership:
    """Leadership won by ``campaign``: ``proclaim(value)``, ``resign()``; ``with`` resigns."""

    def __init__(self, client: Client, key: LeaderKey, lease: Lease | None) -> None:
        self._client = client
        self.leader_key = key
        self.lease = lease
        self.resigned = False

    @property
    def name(self) -> bytes:
        return self.leader_key.name

    @property
    def lost(self) -> threading.Event | None:
        """Set when the candidacy's own lease was lost (None for a caller's lease)."""
        return self.lease.lost if self.lease is not None else None

    def proclaim(self, value: KeyLike) -> None:
        self._client.proclaim(self.leader_key, value)

    def resign(self) -> None:
        if self.resigned:
            return
        self.resigned = True
        try:
            self._client.resign(self.leader_key)
        finally:
            if self.lease is not None:
                self.lease.revoke()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resign()
