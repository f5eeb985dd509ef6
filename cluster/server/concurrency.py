"""Distributed locks and elections over a member: etcd's clientv3/concurrency, run server-side.

What etcd's v3lock and v3election services do through an in-process client,
done here directly on the member (``member.write`` through Raft, linearizable
``member.read``, and watchers of ``member.hub``). The caller's lease is the
session: it is never kept alive here, the client does that.

A lock (or an election) named ``name`` is a queue of keys under the prefix
``name + "/"``, one per lease: ``name/<lease id in hex>``, created by a txn
that puts it (attached to the lease) unless it exists already. The key with
the lowest create revision holds the lock (leads); every other waits for the
deletion of the last key created before its own, then looks again (etcd's
``waitDeletes``), so each release wakes exactly one waiter and the order is
FIFO by create revision. A key goes away by Unlock / Resign, by the revoke or
expiry of its lease, or when its waiter is cancelled (etcd's Mutex.Lock and
Election.Campaign clean up after a cancelled context).

Fencing: the key's revisions identify one holding of the lock. Within this
store, guard each write made under the lock with a txn comparing
``create_revision(key) == rev``, where ``rev`` is the key's create revision
(``LeaderKey.rev``; for a lock, read the key once): when the lock is lost
(lease expired, key deleted), the comparison fails however late the write
arrives, even if the same lease queues again. For other resources, use
``LockResponse.header.revision`` (etcdctl's ``ETCD_LOCK_REV``) as the token:
it is taken while the key is held and after the previous holder's key was
deleted, so it strictly grows from one holder to the next.

Departures from etcd, for safety: a waiter whose own key is deleted while it
waits (its lease expired or was revoked) fails at once with ``mutex: session
is expired`` (etcd's Mutex checks only after its turn came; its Election not
at all); a watcher cancelled by compaction makes the wait look again rather
than fail.

Errors are ``RequestError``s: the store's and Raft's as the KV service sends
them, and etcd's concurrency errors, which etcd sends as plain Go errors
(gRPC code UNKNOWN) with their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc

from cluster.keyspace import prefix_range_end
from cluster.mvcc import KeyValue, MVCCError
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2
from cluster.watch import EventType, WatchHub, WatchResponse

from . import kvconv
from .kvconv import ErrorSpec, RequestError
from .requests import InternalRequest

__all__ = [
    "ERR_ELECTION_NOT_LEADER",
    "ERR_ELECTION_NO_LEADER",
    "ERR_MISSING_LEADER_KEY",
    "ERR_SESSION_EXPIRED",
    "SESSION_TTL",
    "ConcurrencyMember",
    "Election",
    "LeaderKey",
    "Locked",
    "lock",
    "unlock",
]

# etcd's concurrency errors: plain Go errors, which gRPC sends with code UNKNOWN.
ERR_SESSION_EXPIRED: Final[ErrorSpec] = (grpc.StatusCode.UNKNOWN, "mutex: session is expired")
ERR_ELECTION_NOT_LEADER: Final[ErrorSpec] = (grpc.StatusCode.UNKNOWN, "election: not leader")
ERR_ELECTION_NO_LEADER: Final[ErrorSpec] = (grpc.StatusCode.UNKNOWN, "election: no leader")
ERR_MISSING_LEADER_KEY: Final[ErrorSpec] = (
    grpc.StatusCode.UNKNOWN,
    '"leader" field must be provided',
)

SESSION_TTL: Final = 60  # etcd's defaultSessionTTL: the lease granted for a request without one

_CREATE = pb.RangeRequest.CREATE
_MAX_LEASE_ID = 2**63 - 1

# Clean-ups started by cancelled requests: referenced until done.
_background: set[asyncio.Task[Any]] = set()


class ConcurrencyMember(Protocol):
    """What the recipes need of the member."""

    @property
    def max_request_bytes(self) -> int: ...

    @property
    def hub(self) -> WatchHub: ...

    async def write(self, request: InternalRequest) -> object:
        """Propose through Raft; the response (header filled) once applied here."""
        ...

    async def read(self, request: pb.RangeRequest) -> pb.RangeResponse:
        """A linearizable range (header filled)."""
        ...

    def fill_header(self, header: pb.ResponseHeader) -> None: ...


def lease_key(prefix: bytes, lease: int) -> bytes:
    """A session's key in a queue: the prefix and the lease id in hex (Go's ``%x``)."""
    return prefix + (b"%x" % lease)


# -- members' calls ----------------------------------------------------------------------------


async def _write(member: ConcurrencyMember, request: kvconv.WriteRequest) -> Any:
    kvconv.check_size(request, member.max_request_bytes)
    try:
        return await member.write(request)
    except MVCCError as err:
        raise RequestError.from_error(err) from err


async def _txn(member: ConcurrencyMember, request: pb.TxnRequest) -> pb.TxnResponse:
    resp = await _write(member, request)
    assert isinstance(resp, pb.TxnResponse)
    return resp


async def _read(member: ConcurrencyMember, request: pb.RangeRequest) -> pb.RangeResponse:
    try:
        return await member.read(request)
    except MVCCError as err:
        raise RequestError.from_error(err) from err


def _first_created(prefix: bytes) -> pb.RangeRequest:
    """The oldest key under ``prefix`` (clientv3's WithFirstCreate)."""
    return pb.RangeRequest(
        key=prefix,
        range_end=prefix_range_end(prefix),
        sort_target=_CREATE,
        sort_order=pb.RangeRequest.ASCEND,
        limit=1,
    )


def _last_created_before(prefix: bytes, max_create_revision: int) -> pb.RangeRequest:
    """The newest key under ``prefix`` created at or before ``max_create_revision``."""
    return pb.RangeRequest(
        key=prefix,
        range_end=prefix_range_end(prefix),
        sort_target=_CREATE,
        sort_order=pb.RangeRequest.DESCEND,
        limit=1,
        max_create_revision=max_create_revision,
    )


def _is_created(key: bytes, revision: int) -> pb.Compare:
    return pb.Compare(
        key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=revision
    )


async def _session_lease(member: ConcurrencyMember, lease: int) -> int:
    """``lease``, or for 0 a new lease of ``SESSION_TTL`` seconds (etcd's NewSession grants one).

    Such a lease is never kept alive: it expires ``SESSION_TTL`` seconds later.
    """
    if lease:
        return lease
    while True:
        lease_id = random.randint(1, _MAX_LEASE_ID)
        try:
            await member.write(pb.LeaseGrantRequest(ID=lease_id, TTL=SESSION_TTL))
        except RequestError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:  # the id is taken: another
                continue
            raise
        return lease_id


def _in_background(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` to its end even though the request that started it was cancelled."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    with contextlib.suppress(RequestError):
        await coro  # failed: the lease still ends it, the key goes at its expiry


# -- waiting for deletions ---------------------------------------------------------------------


class _Watch:
    """Watchers of the member's hub (one watch stream), awaited from asyncio."""

    def __init__(self, hub: WatchHub) -> None:
        self._wake = asyncio.Event()
        self._stream = hub.new_stream(wake=self._wake.set)

    def watch(self, key: bytes, range_end: bytes = b"", start_revision: int = 0) -> int:
        return self._stream.watch(key, range_end, start_revision)

    def cancel(self, watch_id: int) -> None:
        self._stream.cancel(watch_id)

    async def next(self) -> list[WatchResponse]:
        """The responses queued, waiting for some if there are none."""
        while True:
            got = self._stream.take()
            if got:
                return got
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        self._stream.close()


async def _wait_deletes(
    member: ConcurrencyMember, prefix: bytes, max_create_revision: int, own: bytes, since: int
) -> None:
    """Wait until no key under ``prefix`` was created at or before ``max_create_revision``.

    etcd's waitDeletes: take the newest such key, wait for its deletion, repeat.
    ``own``, which existed at revision ``since``, is the waiter's own key: its
    deletion meanwhile (the session's lease is gone) raises "session is expired".
    """
    watch = _Watch(member.hub)
    try:
        mine = watch.watch(own, start_revision=since + 1)
        while True:
            resp = await _read(member, _last_created_before(prefix, max_create_revision))
            if not resp.kvs:
                return
            other = watch.watch(resp.kvs[0].key, start_revision=resp.header.revision + 1)
            deleted = False
            while not deleted:
                for wr in await watch.next():
                    if wr.watch_id == mine and _has_delete(wr):
                        raise RequestError(*ERR_SESSION_EXPIRED)
                    if wr.watch_id == other and (_has_delete(wr) or wr.canceled):
                        deleted = True  # or compacted: look again
            watch.cancel(other)
    finally:
        watch.close()


def _has_delete(wr: WatchResponse) -> bool:
    return any(ev.type == EventType.DELETE for ev in wr.events)


# -- locks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locked:
    """A lock held: its key, the key's create revision, the header (see Fencing above)."""

    key: bytes
    revision: int
    header: pb.ResponseHeader


async def lock(member: ConcurrencyMember, name: bytes, lease: int) -> Locked:
    """Wait for the lock ``name`` for the session ``lease`` (etcd's v3lock Lock, Mutex.Lock).

    Lease 0: a new lease of ``SESSION_TTL`` seconds, as etcd. An unknown lease
    fails with "etcdserver: requested lease not found". If the wait fails or
    is cancelled, the key is deleted; if the lease ends meanwhile, "mutex:
    session is expired".
    """
    lease = await _session_lease(member, lease)
    prefix = name + b"/"
    key = lease_key(prefix, lease)
    resp = await _txn(
        member,
        pb.TxnRequest(
            compare=[_is_created(key, 0)],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=key, lease=lease)),
                pb.RequestOp(request_range=_first_created(prefix)),
            ],
            failure=[
                pb.RequestOp(request_range=pb.RangeRequest(key=key)),  # held already: reuse it
                pb.RequestOp(request_range=_first_created(prefix)),
            ],
        ),
    )
    my_rev = resp.header.revision
    if not resp.succeeded:
        my_rev = resp.responses[0].response_range.kvs[0].create_revision
    owner = resp.responses[1].response_range.kvs
    if not owner or owner[0].create_revision == my_rev:
        return Locked(key, my_rev, resp.header)
    try:
        await _wait_deletes(member, prefix, my_rev - 1, key, resp.header.revision)
        got = await _read(member, pb.RangeRequest(key=key))
    except asyncio.CancelledError:
        _in_background(_quietly(_delete(member, key)))
        raise
    except RequestError as err:
        if err != RequestError(*ERR_SESSION_EXPIRED):
            _in_background(_quietly(_delete(member, key)))
        raise
    if not got.kvs:
        raise RequestError(*ERR_SESSION_EXPIRED)
    return Locked(key, my_rev, got.header)


async def _delete(member: ConcurrencyMember, key: bytes) -> pb.DeleteRangeResponse:
    resp = await _write(member, pb.DeleteRangeRequest(key=key))
    assert isinstance(resp, pb.DeleteRangeResponse)
    return resp


async def unlock(member: ConcurrencyMember, key: bytes) -> pb.ResponseHeader:
    """Release a lock: delete its key (etcd's v3lock Unlock). Its header."""
    try:
        kvconv.validate(pb.DeleteRangeRequest(key=key))
    except MVCCError as err:
        raise RequestError.from_error(err) from err
    return (await _delete(member, key)).header


# -- elections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderKey:
    """v3electionpb.LeaderKey: a campaign won (its key's create revision is ``rev``)."""

    name: bytes
    key: bytes
    rev: int
    lease: int


class Election:
    """etcd's v3election service over a member (clientv3/concurrency's Election)."""

    def __init__(self, member: ConcurrencyMember) -> None:
        self._member = member

    async def campaign(
        self, name: bytes, lease: int, value: bytes
    ) -> tuple[pb.ResponseHeader, LeaderKey]:
        """Wait to lead ``name`` for the session ``lease``, proclaiming ``value``.

        The header is the campaign txn's, as etcd. Cancelled while waiting: the
        candidacy is resigned. The lease ended meanwhile: "mutex: session is expired".
        """
        member = self._member
        lease = await _session_lease(member, lease)
        prefix = name + b"/"
        key = lease_key(prefix, lease)
        resp = await _txn(
            member,
            pb.TxnRequest(
                compare=[_is_created(key, 0)],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))
                ],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
            ),
        )
        leader = LeaderKey(name, key, resp.header.revision, lease)
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            leader = LeaderKey(name, key, kv.create_revision, lease)
            if kv.value != value:
                try:
                    await self.proclaim(leader, value)
                except RequestError:
                    await _quietly(self.resign(leader))
                    raise
        try:
            await _wait_deletes(member, prefix, leader.rev - 1, key, resp.header.revision)
        except asyncio.CancelledError:
            _in_background(_quietly(self.resign(leader)))
            raise
        return resp.header, leader

    async def proclaim(self, leader: LeaderKey, value: bytes) -> pb.ResponseHeader:
        """Set the leader's value if ``leader`` still holds its key, else "election: not leader"."""
        resp = await _txn(
            self._member,
            pb.TxnRequest(
                compare=[_is_created(leader.key, leader.rev)],
                success=[
                    pb.RequestOp(
                        request_put=pb.PutRequest(key=leader.key, value=value, lease=leader.lease)
                    )
                ],
            ),
        )
        if not resp.succeeded:
            raise RequestError(*ERR_ELECTION_NOT_LEADER)
        return resp.header

    async def resign(self, leader: LeaderKey) -> pb.ResponseHeader:
        """Give up: delete the leader's key if it is still that campaign's (else nothing)."""
        resp = await _txn(
            self._member,
            pb.TxnRequest(
                compare=[_is_created(leader.key, leader.rev)],
                success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=leader.key))],
            ),
        )
        return resp.header

    async def leader(self, name: bytes) -> tuple[pb.ResponseHeader, kv_pb2.KeyValue]:
        """The leader's key (the oldest under ``name/``); else "election: no leader"."""
        resp = await _read(self._member, _first_created(name + b"/"))
        if not resp.kvs:
            raise RequestError(*ERR_ELECTION_NO_LEADER)
        return resp.header, resp.kvs[0]

    async def observe(
        self, name: bytes
    ) -> AsyncGenerator[tuple[pb.ResponseHeader, kv_pb2.KeyValue], None]:
        """The leader's key now (once there is one), then each of its new values and leaders.

        etcd's Election.Observe: wait for a leader; report it; report each put to
        its key until it is deleted; look again. Values proclaimed while the
        leader changes hands may be skipped, never the latest.
        """
        member = self._member
        prefix = name + b"/"
        watch = _Watch(member.hub)
        try:
            while True:
                resp = await _read(member, _first_created(prefix))
                if resp.kvs:
                    header, kv = resp.header, resp.kvs[0]
                else:
                    got = await self._first_put(watch, prefix, resp.header.revision)
                    if got is None:
                        continue  # compacted meanwhile: look again
                    header, kv = got
                yield header, kv
                at = watch.watch(kv.key, start_revision=header.revision + 1)
                gone = False
                while not gone:
                    for wr in await watch.next():
                        if wr.watch_id != at:
                            continue
                        if wr.canceled:
                            gone = True
                            break
                        for ev in wr.events:
                            if ev.type == EventType.DELETE:
                                gone = True
                                break
                            yield self._header(wr.revision), _kv_pb(ev.kv)
                        if gone:
                            break
                watch.cancel(at)
        finally:
            watch.close()

    async def _first_put(
        self, watch: _Watch, prefix: bytes, revision: int
    ) -> tuple[pb.ResponseHeader, kv_pb2.KeyValue] | None:
        """The first key put under ``prefix`` after ``revision``; None if compacted."""
        at = watch.watch(prefix, prefix_range_end(prefix), start_revision=revision + 1)
        try:
            while True:
                for wr in await watch.next():
                    if wr.watch_id != at:
                        continue
                    if wr.canceled:
                        return None
                    for ev in wr.events:
                        if ev.type == EventType.PUT:
                            # a response may span revisions: the header is the put's own
                            return self._header(ev.kv.mod_revision), _kv_pb(ev.kv)
        finally:
            watch.cancel(at)

    def _header(self, revision: int) -> pb.ResponseHeader:
        header = pb.ResponseHeader(revision=revision)
        self._member.fill_header(header)
        return header


def _kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    out = kv_pb2.KeyValue()
    kvconv.set_kv(out, kv)
    return out
