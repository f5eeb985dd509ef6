"""Recorded client traffic and watchers, over etcd's raw gRPC stubs (grpc.aio).

Each ``Client`` is one asyncio task with its own channel pinned to one member, one request at a
time: puts (some with prev_kv, some with a lease), linearizable and serializable gets, ranges
over every key, deletes, compare-and-set txns on mod_revision, lease grants and revokes, over
a few keys so that requests conflict. Every request is recorded (``history.Op``) with its
invocation and return times and one of three outcomes (see ``classify``). A ``Locker`` takes a
v3lock lock and writes under it; a ``Filler`` fills a disk with big values (``disk_full``).

Each ``Watcher`` watches every key from revision 1 on one member and, when its stream breaks
(the member died), opens a new one on the same member from its last revision + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.v3lockpb import v3lock_pb2 as lockpb
from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock_grpc

from .history import (
    DELETE,
    FAIL,
    FENCED,
    FENCED_KEY,
    GET,
    GRANT,
    KV,
    LOCK,
    LOCK_NAME,
    OK,
    PUT,
    RANGE,
    REVOKE,
    SGET,
    TXN,
    UNKNOWN,
    UNLOCK,
    Op,
    Status,
)
from .revisions import Event

PREFIX = "/rb/"  # every key of the traffic (watched, and read back as the final history)
RANGE_END = "/rb0"  # PREFIX with its last byte + 1
KEYS = [f"{PREFIX}k{i}" for i in range(10)]  # the KV traffic's (the lock's are beside them)
KEYS_START, KEYS_END = f"{PREFIX}k", f"{PREFIX}l"  # a range over KEYS alone
LEASE_TTL = 120  # long enough never to expire during a run: expiry is not modelled
LOCK_TTL = 10  # the lockers' leases (never kept alive)
FORGET = 0.1  # the share of holdings a locker leaves to expire instead of unlocking ...
FORGET_TTL = 2  # ... whose lease is short (a waiter's longer lease outlives it: ``locks``)
LOCK_WAIT = 6.0  # seconds a locker waits for the lock

# Reconnect quickly to a restarted member (gRPC's default back-off grows to 2 minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),  # disk_full's big values
]

# (kind, weight); a lease put needs a lease, granted first (a ``grant`` op) when missing.
MIX: list[tuple[str, int]] = [
    (PUT, 22), (GET, 18), (SGET, 8), (RANGE, 5), (DELETE, 8), (TXN, 22), ("lput", 10),
    (REVOKE, 3),
]  # fmt: skip


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


SHORT = 64  # values longer than this (the disk filler's) are recorded by their head and size


def short_value(raw: bytes) -> str:
    """A value as the history records it: itself, or for a long one (the filler's, whose
    head names its write) ``<head>...<size>B``."""
    if len(raw) <= SHORT:
        return raw.decode()
    return f"{raw[:32].decode(errors='replace')}...{len(raw)}B"


def to_kv(kv: Any) -> KV:
    value = short_value(kv.value)
    return KV(value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)


def classify(err: grpc.aio.AioRpcError) -> tuple[Status | None, str]:
    """The outcome of a failed request: FAIL if it certainly had no effect, UNKNOWN if it may
    have had one, None for etcd's "requested lease not found" (a definite result)."""
    code = err.code()
    details = err.details() or ""
    text = f"{code.name}: {details}"
    if "requested lease not found" in details:
        return None, text
    if "mutex: session is expired" in details:
        return FAIL, text  # the lock was not taken: its key went with its lease
    if code == grpc.StatusCode.UNAVAILABLE and (
        details == "etcdserver: no leader"
        or "failed to connect to all addresses" in details
        or "Connection refused" in details
    ):
        return FAIL, text  # refused before proposing, or never sent
    return UNKNOWN, text


class Recorder:
    """Hands out ``Op`` records; times are seconds since ``t0`` (``time.monotonic``)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ops: list[Op] = []
        self._ids = itertools.count(1)
        # Errors other than UNAVAILABLE, DEADLINE_EXCEEDED and "lease not found": none is
        # expected here, so each is reported (the request counts as unknown meanwhile).
        self.unexpected: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def begin(self, client: int, member: str, kind: str, **args: Any) -> Op:
        op = Op(next(self._ids), client, member, kind, self.now(), **args)
        self.ops.append(op)
        return op


# CANCELLED: what a member stopping gracefully (SIGTERM) answers the requests in flight.
_EXPECTED_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


class Client:
    """One recorded client pinned to one member, one request at a time."""

    def __init__(
        self,
        cid: int,
        member: str,
        endpoint: str,
        recorder: Recorder,
        rng: random.Random,
        *,
        deadline: float = 2.0,
    ) -> None:
        self.cid = cid
        self.member = member
        self.rec = recorder
        self.rng = rng
        self.deadline = deadline
        self.seq = itertools.count(1)
        self.lease = 0  # the lease this client puts keys with (0: none granted yet)
        self.failed = False  # the last request did not succeed
        self.known: dict[str, int] = {}  # key -> mod_revision last seen (0: absent)
        self.chan = channel(endpoint)
        self.kv = pb_grpc.KVStub(self.chan)
        self.leases = pb_grpc.LeaseStub(self.chan)

    async def close(self) -> None:
        await self.chan.close()

    async def run(self, until: float) -> None:
        """Send requests until ``until`` (recorder time)."""
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        send = {
            PUT: self.put, "lput": self.lease_put, GET: self.get, SGET: self.get,
            RANGE: self.range, DELETE: self.delete, TXN: self.txn, REVOKE: self.revoke,
        }  # fmt: skip
        while self.rec.now() < until:
            kind = self.rng.choices(kinds, weights)[0]
            self.failed = False
            await send[kind](kind)
            if self.failed:
                await asyncio.sleep(self.rng.uniform(0.05, 0.15))  # a dead member: not a spin

    def _begin(self, kind: str, **args: Any) -> Op:
        return self.rec.begin(self.cid, self.member, kind, **args)

    def _value(self) -> str:
        return f"c{self.cid}-{next(self.seq)}"

    async def _call(self, op: Op, call: Awaitable[Any], done: Callable[[Any], None]) -> None:
        """Await the request and record its outcome (``done`` reads a successful response)."""
        try:
            resp = await call
        except grpc.aio.AioRpcError as err:
            op.ret = self.rec.now()
            self.failed = True
            status, op.error = classify(err)
            if status is None:
                op.status, op.not_found = OK, True
            else:
                op.status = status
                if err.code() not in _EXPECTED_CODES and status != FAIL:
                    self.rec.unexpected.append(op.describe())
            return
        op.ret = self.rec.now()
        op.status = OK
        op.revision = resp.header.revision
        done(resp)

    def _saw(self, key: str, kv: KV | None) -> None:
        self.known[key] = kv.mod if kv else 0

    async def put(self, kind: str = PUT, lease: int = 0) -> None:
        key, value, prev = self.rng.choice(KEYS), self._value(), self.rng.random() < 0.3
        op = self._begin(PUT, key=key, value=value, lease=lease, prev_kv=prev)
        req = pb.PutRequest(key=key.encode(), value=value.encode(), lease=lease, prev_kv=prev)

        def done(resp: Any) -> None:
            self.known[key] = resp.header.revision
            if prev:
                op.has_prev = True
                op.prev = to_kv(resp.prev_kv) if resp.HasField("prev_kv") else None

        await self._call(op, self.kv.Put(req, timeout=self.deadline), done)

    async def lease_put(self, kind: str) -> None:
        """A put with this client's lease, granted first if it has none."""
        if not self.lease:
            await self.grant()
        if self.lease:
            await self.put(PUT, self.lease)

    async def get(self, kind: str) -> None:
        key = self.rng.choice(KEYS)
        op = self._begin(kind, key=key)
        req = pb.RangeRequest(key=key.encode(), serializable=kind == SGET)

        def done(resp: Any) -> None:
            kv = to_kv(resp.kvs[0]) if resp.kvs else None
            op.kvs = {key: kv}
            self._saw(key, kv)

        await self._call(op, self.kv.Range(req, timeout=self.deadline), done)

    async def range(self, kind: str) -> None:
        op = self._begin(RANGE)
        req = pb.RangeRequest(key=KEYS_START.encode(), range_end=KEYS_END.encode())

        def done(resp: Any) -> None:
            found = {kv.key.decode(): to_kv(kv) for kv in resp.kvs}
            op.kvs = {key: found.pop(key, None) for key in KEYS}
            op.kvs.update(found)  # a key nobody writes: the checks will say so
            for key in KEYS:
                self._saw(key, op.kvs[key])

        await self._call(op, self.kv.Range(req, timeout=self.deadline), done)

    async def delete(self, kind: str) -> None:
        key, prev = self.rng.choice(KEYS), self.rng.random() < 0.5
        op = self._begin(DELETE, key=key, prev_kv=prev)
        req = pb.DeleteRangeRequest(key=key.encode(), prev_kv=prev)

        def done(resp: Any) -> None:
            op.deleted = resp.deleted
            self.known[key] = 0
            if prev:
                op.has_prev = True
                op.prev = to_kv(resp.prev_kvs[0]) if resp.prev_kvs else None

        await self._call(op, self.kv.DeleteRange(req, timeout=self.deadline), done)

    async def txn(self, kind: str) -> None:
        """Compare-and-set: put if the key's mod_revision is the last one this client saw
        (0: absent), else read it."""
        key, value = self.rng.choice(KEYS), self._value()
        expect = self.known.get(key, 0)
        op = self._begin(TXN, key=key, value=value, cmp_mod=expect)
        k = key.encode()
        req = pb.TxnRequest(
            compare=[
                pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=k,
                           mod_revision=expect)
            ],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=value.encode()))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
        )  # fmt: skip

        def done(resp: Any) -> None:
            op.succeeded = resp.succeeded
            if resp.succeeded:
                self.known[key] = resp.header.revision
            else:
                kvs = resp.responses[0].response_range.kvs
                op.kvs = {key: to_kv(kvs[0]) if kvs else None}
                self._saw(key, op.kvs[key])

        await self._call(op, self.kv.Txn(req, timeout=self.deadline), done)

    async def revoke(self, kind: str) -> None:
        if not self.lease:
            return
        lease, self.lease = self.lease, 0
        op = self._begin(REVOKE, lease=lease)
        req = pb.LeaseRevokeRequest(ID=lease)
        await self._call(op, self.leases.LeaseRevoke(req, timeout=self.deadline), _nothing)

    async def grant(self) -> None:
        op = self._begin(GRANT)

        def done(resp: Any) -> None:
            op.lease = self.lease = resp.ID

        req = pb.LeaseGrantRequest(TTL=LEASE_TTL)
        await self._call(op, self.leases.LeaseGrant(req, timeout=self.deadline), done)


class Locker(Client):
    """Takes the lock ``LOCK_NAME`` (v3lock) with a lease never kept alive; holding it, makes
    one write fenced on its ownership key; then unlocks it, or now and then (``FORGET``, with a
    lease of ``FORGET_TTL`` s) leaves it to its lease's expiry. ``locks`` checks them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.locks = lock_grpc.LockStub(self.chan)

    async def run(self, until: float) -> None:
        while self.rec.now() < until:
            self.failed = False
            await self.hold_once()
            if self.failed:
                await asyncio.sleep(self.rng.uniform(0.05, 0.15))

    async def hold_once(self) -> None:
        lease = 0
        forget = self.rng.random() < FORGET
        grant = self._begin(GRANT)

        def granted(resp: Any) -> None:
            nonlocal lease
            grant.lease = lease = resp.ID
            grant.ttl = resp.TTL

        req = pb.LeaseGrantRequest(TTL=FORGET_TTL if forget else LOCK_TTL)
        await self._call(grant, self.leases.LeaseGrant(req, timeout=self.deadline), granted)
        if not lease:
            return
        key = ""
        lock = self._begin(LOCK, lease=lease)

        def locked(resp: Any) -> None:
            nonlocal key
            lock.key = key = resp.key.decode()

        req_lock = lockpb.LockRequest(name=LOCK_NAME.encode(), lease=lease)
        await self._call(lock, self.locks.Lock(req_lock, timeout=LOCK_WAIT), locked)
        if not key:
            self.lease = lease
            await self.revoke(REVOKE)  # a key it may have queued goes with the lease
            return
        value = self._value()
        fenced = self._begin(FENCED, key=FENCED_KEY, value=value, holder=key)
        txn = pb.TxnRequest(
            compare=[pb.Compare(result=pb.Compare.GREATER, target=pb.Compare.CREATE,
                                key=key.encode(), create_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=FENCED_KEY.encode(),
                                                            value=value.encode()))],
        )  # fmt: skip

        def done(resp: Any) -> None:
            fenced.succeeded = resp.succeeded

        await self._call(fenced, self.kv.Txn(txn, timeout=self.deadline), done)
        await asyncio.sleep(self.rng.uniform(0, 0.05))
        if forget:
            return
        unlock = self._begin(UNLOCK, key=key)
        req_unlock = lockpb.UnlockRequest(key=key.encode())
        await self._call(unlock, self.locks.Unlock(req_unlock, timeout=self.deadline), _nothing)


class Filler(Client):
    """Big puts (``size`` bytes, recorded by ``short_value``) to one key, to fill a disk."""

    async def fill(self, stop: asyncio.Event, size: int, limit: int) -> int:
        """Put until ``stop`` is set or ``limit`` puts were sent; how many were sent."""
        sent = 0
        while not stop.is_set() and sent < limit:
            key, raw = KEYS[0], f"c{self.cid}-{next(self.seq)}+".encode().ljust(size, b"x")
            op = self._begin(PUT, key=key, value=short_value(raw))
            req = pb.PutRequest(key=key.encode(), value=raw)
            await self._call(op, self.kv.Put(req, timeout=self.deadline), _nothing)
            sent += 1
            await asyncio.sleep(0.05)
        return sent


def _nothing(resp: Any) -> None:
    return None


def to_events(resp: Any) -> list[Event]:
    out = []
    for ev in resp.events:
        key = ev.kv.key.decode()
        prev = to_kv(ev.prev_kv) if ev.HasField("prev_kv") else None
        if ev.type == 0:  # PUT
            out.append(Event(ev.kv.mod_revision, "PUT", key, to_kv(ev.kv), prev))
        else:
            out.append(Event(ev.kv.mod_revision, "DELETE", key, None, prev))
    return out


def watch_request(start: int) -> pb.WatchRequest:
    return pb.WatchRequest(
        create_request=pb.WatchCreateRequest(
            key=PREFIX.encode(), range_end=RANGE_END.encode(), start_revision=start, prev_kv=True
        )
    )


class Watcher:
    """Every key from revision ``start`` on one member, resuming after a broken stream."""

    def __init__(self, name: str, endpoint: str, recorder: Recorder, start: int = 1) -> None:
        self.name = name
        self.endpoint = endpoint
        self.rec = recorder
        self.start_rev = start
        self.events: list[Event] = []
        self.next_rev = start
        self.header_rev = 0  # the newest response header revision seen
        self.restarts = 0
        self.problems: list[str] = []
        self.log: list[str] = []  # stream starts and ends, for the report
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def caught_up(self, revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.next_rev > revision:
                return True
            await asyncio.sleep(0.05)
        return self.next_rev > revision

    async def _run(self) -> None:
        while True:
            chan = channel(self.endpoint)
            try:
                call = pb_grpc.WatchStub(chan).Watch()
                await call.write(watch_request(self.next_rev))
                self.log.append(f"{self.rec.now():.3f} watch from revision {self.next_rev}")
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF or not self._take(resp):
                        break
            except grpc.aio.AioRpcError as err:
                self.log.append(f"{self.rec.now():.3f} stream ended: {err.code().name}")
            finally:
                await chan.close()
            self.restarts += 1
            await asyncio.sleep(0.2)

    def _take(self, resp: Any) -> bool:
        """Record a response's events; False once the server canceled the watch."""
        if resp.canceled:
            self.problems.append(
                f"watch {self.name} canceled: {resp.cancel_reason!r} "
                f"(compact revision {resp.compact_revision})"
            )
            return False
        self.header_rev = max(self.header_rev, resp.header.revision)
        for ev in to_events(resp):
            self.events.append(ev)
            self.next_rev = max(self.next_rev, ev.revision + 1)
        return True


async def fetch_history(endpoint: str, revision: int, timeout: float = 15.0) -> list[Event]:
    """Every event from revision 1 through ``revision`` on one member (a watch from 1)."""
    events: list[Event] = []
    if revision <= 1:
        return events
    async with channel(endpoint) as chan:
        call = pb_grpc.WatchStub(chan).Watch()
        try:
            async with asyncio.timeout(timeout):
                await call.write(watch_request(1))
                while not events or events[-1].revision < revision:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    events += to_events(resp)
        finally:
            call.cancel()
    return [e for e in events if e.revision <= revision]


async def status(endpoint: str, timeout: float = 1.0) -> Any | None:
    """``Maintenance.Status`` of one member; None if it does not answer."""
    try:
        async with channel(endpoint) as chan:
            return await pb_grpc.MaintenanceStub(chan).Status(pb.StatusRequest(), timeout=timeout)
    except grpc.aio.AioRpcError:
        return None


async def range_all(
    endpoint: str, revision: int = 0, timeout: float = 3.0, *, serializable: bool = False
) -> Any:
    """A Range over ``KEYS`` (at ``revision`` if given), linearizable unless asked."""
    async with channel(endpoint) as chan:
        req = pb.RangeRequest(
            key=KEYS_START.encode(), range_end=KEYS_END.encode(), revision=revision,
            serializable=serializable,
        )  # fmt: skip
        return await pb_grpc.KVStub(chan).Range(req, timeout=timeout)
