"""The lessor: etcd's lease manager (server/lease/lessor.go, v3.5) as a pure library.

No threads, timers or clock: every method that depends on time takes ``now``,
monotonic seconds from the member's clock. The member drives it:

* Apply path, on every member, for each committed entry, deterministically:
  ``grant``, ``revoke`` (returns the keys the caller deletes in the same store
  revision), ``checkpoint``, and ``rebind`` / ``attach`` / ``detach`` as puts
  and deletes move keys between leases. Lease records are written into the
  backend's write batch (bucket ``lease``, key: the id as 8 bytes big-endian,
  value: a ``leasepb.Lease``), so they commit with the rest of the entry.
* Leader only (etcd's "primary lessor"): ``promote`` when the leader applies
  the empty entry of its term, ``demote`` when it stops leading, ``renew`` for
  keep-alives, and periodically (etcd: every 500 ms) ``expired`` (leases to
  revoke through raft) and ``checkpoints_due`` (remaining TTLs to record
  through raft). A follower's leases never expire: their expiry is "forever".

Expiry is leader-local: a new leader restarts each lease from its checkpointed
remaining TTL (or its full TTL) plus an extension (etcd: the election
timeout), so leases outlive a leader change rather than vanish early.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from google.protobuf.message import DecodeError

from cluster.errors import EtcdError
from cluster.proto.leasepb import lease_pb2
from cluster.storage.backend import Backend

NO_LEASE = 0
MAX_LEASE_TTL = 9_000_000_000  # seconds; etcd's MaxLeaseTTL
FOREVER = math.inf  # the expiry of every lease on a follower (etcd's zero time.Time)
LEASE_BUCKET = "lease"

LEASE_REVOKE_RATE = 1000  # etcd's leaseRevokeRate: leases revoked per second at most
MAX_LEASE_CHECKPOINT_BATCH_SIZE = 1000  # etcd's maxLeaseCheckpointBatchSize
DEFAULT_CHECKPOINT_INTERVAL = 300.0  # etcd's --experimental-lease-checkpoint-interval (5 min)
DEFAULT_EXPIRED_LEASE_RETRY_INTERVAL = 3.0  # etcd's defaultExpiredleaseRetryInterval
EXPIRY_CHECK_INTERVAL = 0.5  # etcd's lessor loop runs every 500 ms

_ID = struct.Struct(">q")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUCKET_END = b"\xff" * (_ID.size + 1)  # above every 8-byte key


def min_lease_ttl(heartbeat_ms: int = 100, election_ms: int = 1000) -> int:
    """etcd's minimum lease TTL in seconds for a member's raft timing.

    etcdserver: ``minTTL = time.Duration((3*ElectionTicks)/2) * heartbeat``,
    rounded up to whole seconds, with ``ElectionTicks = election_ms / heartbeat_ms``
    (integer divisions). The defaults (100 ms, 1000 ms) give 2: 1.5 election
    timeouts, so a lease cannot expire within one leader election.
    """
    if heartbeat_ms <= 0 or election_ms <= 0:
        raise ValueError("heartbeat and election timeout must be positive")
    election_ticks = election_ms // heartbeat_ms
    min_ttl_ms = (3 * election_ticks) // 2 * heartbeat_ms
    return -(-min_ttl_ms // 1000)


DEFAULT_MIN_TTL = min_lease_ttl()


def lease_key(lease_id: int) -> bytes:
    """The ``lease`` bucket key: the id as 8 bytes big-endian (two's complement), as etcd."""
    return _ID.pack(lease_id)


# -- errors ---------------------------------------------------------------------------


class LeaseError(EtcdError):
    """Base class."""

    message: ClassVar[str] = "lease: error"


class LeaseNotFoundError(LeaseError):
    """Unknown lease id (etcd's ErrLeaseNotFound / ErrGRPCLeaseNotFound); also id 0 on grant."""

    message = "etcdserver: requested lease not found"
    grpc_code = "NOT_FOUND"


class LeaseExpiredError(LeaseNotFoundError):
    """``renew`` of a lease past its expiry whose revoke has not been applied yet.

    etcd's Renew blocks until the revoke applies (then: not found) or the
    lessor is demoted (then: not primary, and the keep-alive is retried on the
    new leader). A server that does not wait may answer not found at once.
    """


class LeaseExistsError(LeaseError):
    """Grant of an id in use (etcd's ErrLeaseExists / ErrGRPCLeaseExist)."""

    message = "etcdserver: lease already exists"
    grpc_code = "FAILED_PRECONDITION"


class LeaseTTLTooLargeError(LeaseError):
    """Grant with a TTL above ``MAX_LEASE_TTL`` (etcd's ErrLeaseTTLTooLarge)."""

    message = "etcdserver: too large lease TTL"
    grpc_code = "OUT_OF_RANGE"


class NotPrimaryError(LeaseError):
    """A leader-only call on a follower (etcd's ErrNotPrimary).

    etcd's server forwards keep-alives to the leader on this error; if it has
    to answer the client instead, etcd's answer is "etcdserver: not leader".
    """

    message = "not a primary lessor"
    grpc_code = "FAILED_PRECONDITION"

    @property
    def grpc_message(self) -> str:
        return "etcdserver: not leader"


class CorruptLeaseError(LeaseError):
    """A record of the ``lease`` bucket does not decode."""

    grpc_code = "DATA_LOSS"


# -- leases ---------------------------------------------------------------------------


@dataclass(eq=False)
class Lease:
    """One lease. Read its fields; change it only through the ``Lessor``.

    ``ttl`` is the granted TTL (after the minimum-TTL raise), ``remaining_ttl``
    the last checkpointed remaining TTL (0: none, the full ``ttl`` applies),
    ``expiry`` the leader-local deadline in the member's monotonic seconds
    (``FOREVER`` on a follower), ``keys`` the keys attached to it.
    """

    id: int
    ttl: int
    remaining_ttl: int = 0
    expiry: float = FOREVER
    keys: set[bytes] = field(default_factory=set)

    def checkpointed_ttl(self) -> int:
        """The TTL a new leader restarts this lease from (etcd's getRemainingTTL)."""
        return self.remaining_ttl if self.remaining_ttl > 0 else self.ttl

    def remaining(self, now: float) -> float:
        """Seconds until expiry; ``FOREVER`` on a follower (etcd's Remaining)."""
        return self.expiry - now

    def expired(self, now: float) -> bool:
        return self.remaining(now) <= 0

    @property
    def demoted(self) -> bool:
        """True when the expiry is forever (etcd's Demoted)."""
        return self.expiry == FOREVER


class _ExpiryQueue:
    """etcd's LeaseExpiredNotifier: a min-heap of (time, id) with one live time per id.

    An update pushes a new entry; superseded entries are skipped when they
    surface and dropped wholesale once they outnumber the live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._time: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._time)

    def register(self, lease_id: int, time: float) -> None:
        self._time[lease_id] = time
        heapq.heappush(self._heap, (time, lease_id))
        if len(self._heap) > 2 * len(self._time) + 64:
            self._heap = [(t, i) for i, t in self._time.items()]
            heapq.heapify(self._heap)

    def unregister(self, lease_id: int) -> None:
        self._time.pop(lease_id, None)

    def peek(self) -> tuple[float, int] | None:
        heap = self._heap
        while heap:
            time, lease_id = heap[0]
            if self._time.get(lease_id) == time:
                return time, lease_id
            heapq.heappop(heap)
        return None

    def clear(self) -> None:
        self._heap.clear()
        self._time.clear()


# -- the lessor -----------------------------------------------------------------------


class Lessor:
    """etcd's lessor over a ``Backend``; see the module docstring.

    ``min_ttl``: grants (and recovered leases) below it are raised to it;
    etcd derives it from raft timing, see ``min_lease_ttl``.
    ``checkpointing``: etcd's ``--experimental-enable-lease-checkpoint`` (off by
    default, as etcd); with it the leader records each long lease's remaining
    TTL through raft every ``checkpoint_interval`` seconds.
    ``expired_retry_interval``: how long ``expired`` waits before reporting a
    lease again whose revoke has not been applied (the lessor's default is 3 s;
    etcd's server passes its request timeout, 5 s + 2 election timeouts).
    ``revoke_rate``: etcd's leaseRevokeRate (per second), which bounds
    ``expired`` (half of it per 500 ms call) and sets how ``promote`` spreads
    leases that would expire together.

    Lease records go into ``backend.batch()``: call the apply-path methods on
    the thread that owns the batch, and never commit in the middle of an
    entry. ``Lessor`` recovers every lease from the backend when it opens.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        min_ttl: int = DEFAULT_MIN_TTL,
        checkpointing: bool = False,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        expired_retry_interval: float = DEFAULT_EXPIRED_LEASE_RETRY_INTERVAL,
        revoke_rate: int = LEASE_REVOKE_RATE,
    ) -> None:
        if revoke_rate < 2:
            raise ValueError("revoke_rate must be at least 2")
        if checkpoint_interval <= 0 or expired_retry_interval <= 0:
            raise ValueError("intervals must be positive")
        self._backend = backend
        self.min_ttl = min_ttl
        self.checkpointing = checkpointing
        self.checkpoint_interval = checkpoint_interval
        self.expired_retry_interval = expired_retry_interval
        self.revoke_rate = revoke_rate
        self._primary = False
        self._leases: dict[int, Lease] = {}
        self._items: dict[bytes, int] = {}  # key -> lease id (etcd's itemMap)
        self._expiry = _ExpiryQueue()
        self._checkpoints: list[tuple[float, int]] = []  # (due, id), duplicates allowed
        self._clear_remaining: dict[int, None] = {}  # ids whose remaining TTL renew reset
        self.recover()

    # -- recovery --------------------------------------------------------------
    def recover(self) -> None:
        """Reload every lease from the backend, forgetting attachments (etcd's Recover).

        Done on open; again after the backend was replaced (a snapshot from
        the leader) or its batch discarded (``BackendQuotaError``), followed by
        ``recover_attachments``. Leases come back with expiry forever: a
        leader's expiries are set by ``promote``.
        """
        batch = self._backend.batch()
        leases: dict[int, Lease] = {}
        for key, value in batch.range(LEASE_BUCKET, b"", _BUCKET_END):
            record = lease_pb2.Lease()
            try:
                record.ParseFromString(value)
            except DecodeError as exc:
                raise CorruptLeaseError(f"lease: bad record under key {key.hex()}: {exc}") from exc
            ttl = max(record.TTL, self.min_ttl)
            leases[record.ID] = Lease(record.ID, ttl, record.RemainingTTL)
        self._leases = leases
        self._items = {}
        self._expiry.clear()
        self._checkpoints = []
        self._clear_remaining = {}

    def recover_attachments(self, items: Iterable[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """Attach each live ``(key, lease id)`` of the store (lease 0: none).

        Returns the pairs whose lease does not exist; etcd logs and skips
        them (mvcc restore).
        """
        orphans: list[tuple[bytes, int]] = []
        for key, lease_id in items:
            if lease_id == NO_LEASE:
                continue
            if lease_id in self._leases:
                self.attach(lease_id, key)
            else:
                orphans.append((key, lease_id))
        return orphans

    # -- apply path (every member, deterministic) --------------------------------
    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        """Create a lease (etcd's Grant); its ``ttl`` is what LeaseGrant answers.

        A TTL above ``MAX_LEASE_TTL`` is refused, one below ``min_ttl`` raised
        to it. The leader starts its countdown at ``now``.
        """
        if lease_id == NO_LEASE:
            raise LeaseNotFoundError()
        if not _INT64_MIN <= lease_id <= _INT64_MAX:
            raise ValueError(f"lease id {lease_id} is not an int64")
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        ttl = max(ttl, self.min_ttl)
        if lease_id in self._leases:
            raise LeaseExistsError()
        self._persist(lease_id, ttl, 0)
        lease = self._leases[lease_id] = Lease(lease_id, ttl)
        if self._primary:
            self._refresh(lease, now, 0.0)
        return lease

    def revoke(self, lease_id: int) -> list[bytes]:
        """Delete a lease and return its keys, sorted (etcd's Revoke).

        The caller deletes those keys in one store write (one revision) in
        the same backend batch; sorted so every member deletes them in the
        same order. The keys are detached already.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        self._backend.batch().delete(LEASE_BUCKET, lease_key(lease_id))
        del self._leases[lease_id]
        for key in lease.keys:
            if self._items.get(key) == lease_id:
                del self._items[key]
        self._expiry.unregister(lease_id)
        self._clear_remaining.pop(lease_id, None)
        return sorted(lease.keys)

    def checkpoint(self, lease_id: int, remaining_ttl: int, now: float) -> None:
        """Record a lease's remaining TTL (etcd's Checkpoint); an unknown id is ignored.

        It does not move the current leader's expiry; ``promote`` uses it. It
        is persisted (etcd 3.5 only with ``--experimental-enable-lease-checkpoint-persist``,
        3.6 always) so it also survives restarts. The leader schedules the
        lease's next checkpoint from ``now``.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        self._persist(lease_id, lease.ttl, remaining_ttl)
        lease.remaining_ttl = remaining_ttl
        if self._primary:
            self._schedule_checkpoint(lease, now)

    def attach(self, lease_id: int, key: bytes) -> None:
        """Attach ``key`` to a lease, moving it from any other lease (etcd's Attach)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        old = self._items.get(key, NO_LEASE)
        if old not in (NO_LEASE, lease_id):
            self._leases[old].keys.discard(key)
        lease.keys.add(key)
        self._items[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        """Detach ``key`` from a lease (etcd's Detach); detaching an unattached key is a no-op."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        lease.keys.discard(key)
        if self._items.get(key) == lease_id:
            del self._items[key]

    def rebind(self, key: bytes, lease_id: int) -> None:
        """Make ``lease_id`` (0: none) the lease of ``key``: after a put, or a delete (0).

        What etcd's mvcc does on each write: detach the key from its previous
        lease (quietly if that lease is gone) and attach it to the new one.
        """
        if lease_id != NO_LEASE and lease_id not in self._leases:
            raise LeaseNotFoundError()
        old = self._items.get(key, NO_LEASE)
        if old == lease_id:
            return
        if old != NO_LEASE:
            self._leases[old].keys.discard(key)
            del self._items[key]
        if lease_id != NO_LEASE:
            self.attach(lease_id, key)

    # -- leader only ------------------------------------------------------------
    @property
    def is_primary(self) -> bool:
        return self._primary

    def promote(self, now: float, extend: float) -> None:
        """Become the primary lessor (etcd's Promote): the leader manages expiry.

        Every lease expires ``extend`` (etcd: the election timeout) plus its
        checkpointed remaining TTL after ``now``. With ``revoke_rate`` leases or
        more, leases that would expire in the same second beyond 3/4 of the
        revoke rate are pushed later, so a pile-up (e.g. after a long outage)
        does not take the whole revoke budget.
        """
        self._primary = True
        self._expiry.clear()
        self._checkpoints = []
        for lease in self._leases.values():
            self._refresh(lease, now, extend)
        if len(self._leases) < self.revoke_rate:
            return  # no possibility of lease pile-up
        leases = sorted(self._leases.values(), key=lambda lease: (lease.expiry, lease.id))
        base_window = leases[0].remaining(now)
        next_window = base_window + 1.0
        expires = 0
        target = (3 * self.revoke_rate) // 4  # expiries per second
        for lease in leases:
            remaining = lease.remaining(now)
            if remaining > next_window:
                base_window = remaining
                next_window = base_window + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            # Leases n seconds past the base window are pushed by n seconds less.
            delay = expires / target - (remaining - base_window)
            next_window = base_window + delay
            self._refresh(lease, now, delay + extend)

    def demote(self) -> None:
        """Stop being primary (etcd's Demote): no lease expires until the next ``promote``."""
        self._primary = False
        for lease in self._leases.values():
            lease.expiry = FOREVER
        self._expiry.clear()
        self._checkpoints = []
        self._clear_remaining = {}

    def renew(self, lease_id: int, now: float) -> int:
        """Keep a lease alive (etcd's Renew): expiry becomes ``now + ttl``; returns ``ttl``.

        Raises ``NotPrimaryError`` on a follower, ``LeaseNotFoundError`` for
        an unknown lease and ``LeaseExpiredError`` for one already past its
        expiry (its revoke is on its way). If the lease carries a checkpointed
        remaining TTL, a checkpoint resetting it to 0 is queued for
        ``checkpoints_due``, so a later leader restarts it from the full TTL.
        """
        if not self._primary:
            raise NotPrimaryError()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        if lease.expired(now):
            raise LeaseExpiredError()
        if lease.remaining_ttl > 0:
            self._clear_remaining[lease_id] = None
        lease.expiry = now + lease.ttl
        self._expiry.register(lease_id, lease.expiry)
        return lease.ttl

    def expired(self, now: float, limit: int | None = None) -> list[int]:
        """Ids of leases past their expiry, for the leader to revoke through raft.

        At most ``limit`` (default: half the revoke rate, etcd's budget per
        500 ms run). A lease reported is not reported again for
        ``expired_retry_interval`` seconds unless renewed, which leaves time
        for its revoke to be applied (etcd's expiredLeaseRetryInterval). Empty
        on a follower.
        """
        if limit is None:
            limit = self.revoke_rate // 2
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not self._primary:
            return []
        found: list[int] = []
        while len(found) < limit:
            top = self._expiry.peek()
            if top is None:
                break
            due, lease_id = top
            lease = self._leases.get(lease_id)
            if lease is None:
                self._expiry.unregister(lease_id)
                continue
            if now < due:
                break
            self._expiry.register(lease_id, now + self.expired_retry_interval)
            if lease.expired(now):
                found.append(lease_id)
        return found

    def checkpoints_due(
        self, now: float, limit: int = MAX_LEASE_CHECKPOINT_BATCH_SIZE
    ) -> list[tuple[int, int]]:
        """``(id, remaining_ttl)`` pairs the leader should propose as one LeaseCheckpointRequest.

        First the resets queued by ``renew``; then, with checkpointing on,
        each lease whose checkpoint (every ``checkpoint_interval`` while its
        TTL is longer than that) is due and which has used part of its TTL:
        its remaining seconds, rounded up (etcd's findDueScheduledCheckpoints).
        At most ``limit``; empty on a follower.
        """
        if not self._primary:
            return []
        due: list[tuple[int, int]] = []
        while self._clear_remaining and len(due) < limit:
            lease_id = next(iter(self._clear_remaining))
            del self._clear_remaining[lease_id]
            due.append((lease_id, 0))
        heap = self._checkpoints
        while heap and len(due) < limit:
            when, lease_id = heap[0]
            if when > now:
                break
            heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or now >= lease.expiry:
                continue
            remaining = math.ceil(lease.expiry - now)
            if remaining >= lease.ttl:
                continue
            due.append((lease_id, remaining))
        return due

    # -- reads -------------------------------------------------------------------
    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def exists(self, lease_id: int) -> bool:
        """For ``KVStore(lease_exists=...)``."""
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def leases(self) -> list[int]:
        """Every lease id, soonest expiry first (etcd's Leases), then by id."""
        ordered = sorted(self._leases.values(), key=lambda lease: (lease.expiry, lease.id))
        return [lease.id for lease in ordered]

    def get_lease(self, key: bytes) -> int:
        """The lease ``key`` is attached to, 0 for none (etcd's GetLease)."""
        return self._items.get(key, NO_LEASE)

    def time_to_live(self, lease_id: int, now: float) -> tuple[int, int, list[bytes]]:
        """``(granted TTL, remaining seconds, sorted keys)`` of a lease (LeaseTimeToLive).

        The leader's remaining seconds are its expiry less ``now``, truncated
        toward zero as etcd's ``int64(Remaining().Seconds())`` (so negative
        for an expired lease not yet revoked). A follower, which has no
        expiry, answers the checkpointed remaining TTL (else the TTL); etcd
        asks the leader instead.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        remaining = lease.checkpointed_ttl() if lease.demoted else int(lease.remaining(now))
        return lease.ttl, remaining, sorted(lease.keys)

    # -- internals ---------------------------------------------------------------
    def _persist(self, lease_id: int, ttl: int, remaining_ttl: int) -> None:
        record = lease_pb2.Lease(ID=lease_id, TTL=ttl, RemainingTTL=remaining_ttl)
        self._backend.batch().put(LEASE_BUCKET, lease_key(lease_id), record.SerializeToString())

    def _refresh(self, lease: Lease, now: float, extend: float) -> None:
        """etcd's refresh on the leader: expiry from the checkpointed TTL, then bookkeeping."""
        lease.expiry = now + extend + lease.checkpointed_ttl()
        self._expiry.register(lease.id, lease.expiry)
        self._schedule_checkpoint(lease, now)

    def _schedule_checkpoint(self, lease: Lease, now: float) -> None:
        """etcd's scheduleCheckpointIfNeeded: only leases longer than the interval."""
        if self.checkpointing and lease.checkpointed_ttl() > int(self.checkpoint_interval):
            heapq.heappush(self._checkpoints, (now + self.checkpoint_interval, lease.id))
