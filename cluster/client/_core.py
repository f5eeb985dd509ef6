"""What the sync and asyncio clients share: endpoints, channel settings, the retry policy and
the watch bookkeeping (sans I/O: the two faces only move messages)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from cluster.client.errors import (
    CompactedError,
    ConnectionFailedError,
    EtcdError,
    NoLeaderError,
    UnavailableError,
    WatchCanceledError,
    classify,
)
from cluster.client.txn import KeyLike, key_range
from cluster.client.types import Event, ResponseHeader, WatchResponse
from cluster.proto.etcdserverpb import rpc_pb2 as pb

Endpoints = str | Sequence[str]
WatchFilter = Literal["noput", "nodelete"]

# Like etcd's clientv3: no receive limit of our own; keepalive pings no more often than etcd's
# default enforcement (5 s) allows; reconnect quickly once a member is back.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

REQUIRE_LEADER = ("hasleader", "true")
"""Metadata asking the member to end a stream with "no leader" when it loses its leader."""

# Transport errors that prove the request never left the client (nothing can have applied).
_NOT_SENT = (
    "failed to connect to all addresses",
    "connection refused",
    "dns resolution failed",
    "no address available",
    "no connection available",
    "name resolution failure",
)


def never_sent(details: str) -> bool:
    """Does this transport error prove the request never left (nothing can have applied)?"""
    details = details.lower()
    return any(marker in details for marker in _NOT_SENT)


def parse_endpoints(endpoints: Endpoints) -> tuple[list[str], bool]:
    """``"a:2379,b:2379"`` or a list; ``http://`` / ``https://`` schemes are accepted.

    Returns the gRPC targets and whether any endpoint asked for TLS (``https://``).
    """
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    targets: list[str] = []
    tls = False
    for raw in items:
        ep = raw.strip()
        if not ep:
            continue
        if ep.startswith("https://"):
            tls = True
            ep = ep[len("https://") :]
        elif ep.startswith("http://"):
            ep = ep[len("http://") :]
        targets.append(ep.rstrip("/"))
    if not targets:
        raise ValueError("no endpoints given")
    return targets, tls


@dataclass(frozen=True)
class TLSConfig:
    """PEM files: the CA to verify members with, and an optional client certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> Any:
        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def is_retryable(err: EtcdError, idempotent: bool) -> bool:
    """Whether a failed call may be repeated on another member.

    Reads (and other calls that change nothing, or change nothing more when repeated) retry on
    any UNAVAILABLE error, as etcd's clientv3 does for its "immutable" RPCs. Writes retry only
    when the request cannot have been applied: the connection could not be made at all, or the
    member refused before proposing (``etcdserver: no leader``). A write cut off after it was
    sent (connection lost, ``request timed out``, ``leader changed``, a deadline) is raised: its
    outcome is unknown.
    """
    if not isinstance(err, UnavailableError):
        return False
    if idempotent or isinstance(err, NoLeaderError):
        return True
    if isinstance(err, ConnectionFailedError):
        return never_sent(err.message)
    return False


class Backoff:
    """Paces retries over ``n`` endpoints within ``budget`` seconds.

    Each endpoint is tried once at once; after every full round the wait doubles
    (50 ms up to 1 s, with jitter).
    """

    def __init__(self, n: int, budget: float) -> None:
        self.n = max(1, n)
        self.deadline = time.monotonic() + budget
        self.failures = 0

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        self.failures += 1
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        if self.failures % self.n:
            return 0.0
        rounds = self.failures // self.n
        delay = min(0.05 * 2.0 ** (rounds - 1), 1.0) * random.uniform(0.8, 1.2)
        return min(delay, left)


class EndpointRing:
    """The endpoints and which one calls go to now (sticky until it fails)."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.current = 0

    def failed(self, index: int) -> None:
        """Move away from ``index`` if calls still go there."""
        if self.current == index:
            self.current = (index + 1) % len(self.targets)


@dataclass(frozen=True)
class WatchSpec:
    """What a watch asks for (see ``Client.watch``)."""

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    filters: tuple[WatchFilter, ...] = ()
    progress_notify: bool = False

    @classmethod
    def build(
        cls,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> WatchSpec:
        k, end = key_range(key, prefix, range_end)
        fs = tuple(f.lower() for f in filters)
        for f in fs:
            if f not in ("noput", "nodelete"):
                raise ValueError(f"unknown watch filter {f!r} (noput, nodelete)")
        return cls(k, end, start_revision, prev_kv, fs, progress_notify)  # type: ignore[arg-type]


_FILTERS = {"noput": pb.WatchCreateRequest.NOPUT, "nodelete": pb.WatchCreateRequest.NODELETE}


@dataclass
class WatchState:
    """Where a watch stands, so a new stream can resume it exactly.

    ``next_revision`` is the first revision not yet delivered (0 until the first stream told us
    the current revision). A resumed stream starts there; events below it (repeats after a
    resume) are dropped, so nothing is delivered twice and nothing is skipped.
    """

    spec: WatchSpec
    next_revision: int = 0
    watch_id: int = -1
    _fragments: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_revision = self.spec.start_revision

    def create_request(self) -> pb.WatchRequest:
        s = self.spec
        self._fragments = []
        self.watch_id = -1
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=s.key, range_end=s.range_end, start_revision=self.next_revision,
                progress_notify=s.progress_notify, filters=[_FILTERS[f] for f in s.filters],
                prev_kv=s.prev_kv, fragment=True,
            )
        )  # fmt: skip

    def cancel_request(self) -> pb.WatchRequest | None:
        if self.watch_id < 0:
            return None
        return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=self.watch_id))

    def handle(self, resp: pb.WatchResponse, endpoint: str | None = None) -> WatchResponse | None:
        """Digest one response: a batch to deliver, None (nothing to deliver), or raise
        :class:`CompactedError` / :class:`WatchCanceledError`."""
        if resp.compact_revision:
            raise CompactedError(
                endpoint=endpoint, compact_revision=resp.compact_revision,
                message=resp.cancel_reason or "etcdserver: mvcc: required revision has been "
                "compacted",
            )  # fmt: skip
        if resp.canceled:
            reason = resp.cancel_reason or "watch canceled by the server"
            cls = classify(grpc.StatusCode.CANCELLED, reason)
            if cls is EtcdError:
                raise WatchCanceledError(reason, endpoint=endpoint)
            raise cls(reason, endpoint=endpoint)
        header = ResponseHeader.from_pb(resp.header)
        if resp.created:
            self.watch_id = resp.watch_id
            if self.next_revision == 0:
                self.next_revision = header.revision + 1
            return None
        events = [Event.from_pb(e) for e in resp.events]
        if resp.fragment:
            self._fragments.extend(events)
            return None
        if self._fragments:
            events = self._fragments + events
            self._fragments = []
        if not resp.events and not events:
            # progress notification: every event up to header.revision has been sent
            self.next_revision = max(self.next_revision, header.revision + 1)
            return WatchResponse(header, [])
        fresh = [e for e in events if e.revision >= self.next_revision]
        if not fresh:
            return None
        self.next_revision = fresh[-1].revision + 1
        return WatchResponse(header, fresh)


def leader_changed(last: tuple[bytes, int] | None, kv_key: bytes, kv_mod: int) -> bool:
    """For election observers: is (key, mod_revision) news after ``last`` (dedupe on resume)?"""
    return last is None or (kv_key, kv_mod) != last


def should_reconnect(err: EtcdError) -> bool:
    """Streams (watch, observe) reopen elsewhere after these errors."""
    return isinstance(err, UnavailableError)


class Stubs:
    """One endpoint's channel and a stub per etcd service (sync or aio alike)."""

    def __init__(self, target: str, channel: Any) -> None:
        from cluster.proto.etcdserverpb import rpc_pb2_grpc as rpc
        from cluster.proto.v3electionpb import v3election_pb2_grpc as election
        from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock

        self.target = target
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.cluster = rpc.ClusterStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.lock = lock.LockStub(channel)
        self.election = election.ElectionStub(channel)
