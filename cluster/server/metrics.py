"""A member's Prometheus metrics, under etcd's names, in a registry of its own.

``MemberMetrics`` holds what is counted as it happens (leader changes, failed proposals,
WAL fsync and backend commit durations, health checks) and, through ``_MemberCollector``,
computes the rest from the member at scrape time (leader, Raft indexes, db size, keys,
revisions), so the write path pays nothing for them. ``count_calls`` wraps a gRPC method
handler (once, when the services are registered: see handlers.py) to count its calls as
go-grpc-prometheus does (``grpc_server_started_total`` and ``grpc_server_handled_total``
with etcd's labels and Go's code names).

Names and types follow etcd 3.5: ``etcd_server_proposals_committed_total`` and
``..._applied_total`` are gauges (the Raft indexes), histograms use etcd's buckets.
Not exported: ``etcd_network_peer_round_trip_time_seconds`` (etcd measures it with a
prober over its peer HTTP transport; our peer streams have no such probe).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import gcpauses

from . import handlers
from .handlers import Handler

if TYPE_CHECKING:
    from .member import Member

log = logging.getLogger(__name__)

SERVER_VERSION: Final = "3.5.0"
"""The etcd version this member speaks for (/version, etcd_server_version, Status)."""
CLUSTER_VERSION: Final = "3.5.0"

# etcd's buckets: 1 ms .. 8 s, doubling.
_DISK_BUCKETS: Final = tuple(0.001 * 2**i for i in range(14))

# Go's names for gRPC codes, as go-grpc-prometheus labels them.
GO_CODE_NAMES: Final[dict[grpc.StatusCode, str]] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# No ``*_created`` series beside each counter and histogram: etcd (Go) has none.
disable_created_metrics()  # type: ignore[no-untyped-call]


class MemberMetrics:
    """Every metric of one member; ``registry`` is what /metrics serves."""

    def __init__(self, member: Member) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader_changes = Counter(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            registry=r,
        )
        self.proposals_failed = Counter(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            registry=r,
        )
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=_DISK_BUCKETS,
            registry=r,
        )
        self.backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            buckets=_DISK_BUCKETS,
            registry=r,
        )
        self.grpc_started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.health_success = 0
        self.health_failures = 0
        self.healthchecks: dict[tuple[str, str], bool] = {}  # (livez|readyz, check) -> passed
        self.healthcheck_counts: dict[tuple[str, str, str], int] = {}
        r.register(_MemberCollector(member, self))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def record_health(self, healthy: bool) -> None:
        """One /health answer (etcd_server_health_success / _failures)."""
        if healthy:
            self.health_success += 1
        else:
            self.health_failures += 1

    def record_check(self, kind: str, name: str, passed: bool) -> None:
        """One /livez or /readyz check (etcd_server_healthcheck, ..._healthchecks_total)."""
        self.healthchecks[(kind, name)] = passed
        key = (kind, name, "success" if passed else "error")
        self.healthcheck_counts[key] = self.healthcheck_counts.get(key, 0) + 1

    def count_calls(self, method: str, handler: Handler) -> Handler:
        """``handler`` feeding ``grpc_server_*``; wrap it outermost, so refused calls count."""
        return _counting(self, method, handler)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, value: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    g.add_metric([value], 1)
    return g


class _MemberCollector(Collector):
    """Gauges read from the member when scraped."""

    def __init__(self, member: Member, metrics: MemberMetrics) -> None:
        self._member = member
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m, mx = self._member, self._metrics
        # etcd's two health counters are named without "_total": untyped keeps the names.
        for name, value, doc in (
            ("etcd_server_health_success", mx.health_success, "successful health checks"),
            ("etcd_server_health_failures", mx.health_failures, "failed health checks"),
        ):
            untyped = Metric(name, f"The total number of {doc}", "unknown")
            untyped.add_sample(name, {}, value)
            yield untyped
        if mx.healthchecks:
            gauge = GaugeMetricFamily(
                "etcd_server_healthcheck",
                "The result of each kind of healthcheck.",
                labels=["type", "name"],
            )
            for (kind, name), passed in sorted(mx.healthchecks.items()):
                gauge.add_metric([kind, name], 1 if passed else 0)
            yield gauge
            counts = Metric(
                "etcd_server_healthchecks",
                "The total number of each kind of healthcheck.",
                "counter",
            )
            for (kind, name, status), n in sorted(mx.healthcheck_counts.items()):
                counts.add_sample(
                    "etcd_server_healthchecks_total",
                    {"type": kind, "name": name, "status": status},
                    n,
                )
            yield counts
        yield _labelled(
            "etcd_server_version", "Which version is running.", "server_version", SERVER_VERSION
        )
        yield _labelled(
            "etcd_cluster_version",
            "Which version is running.",
            "cluster_version",
            CLUSTER_VERSION.rsplit(".", 1)[0],
        )
        yield from self._gc_pauses()
        try:
            yield from self._from_member(m)
        except Exception:  # starting or stopping: what the member cannot tell yet is left out
            log.debug("metrics: the member's gauges are not available", exc_info=True)

    def _gc_pauses(self) -> Iterator[Metric]:
        bound = gcpauses.installed()
        if bound is None:
            return
        yield CounterMetricFamily(
            "python_gc_freezes",
            "Full garbage collections slower than the bound whose survivors were frozen.",
            value=bound.freezes,
        )
        yield _gauge(
            "python_gc_longest_full_collection_seconds",
            "The longest full (oldest generation) garbage collection seen.",
            bound.longest_pause,
        )

    def _from_member(self, m: Member) -> Iterator[Metric]:
        yield _labelled("etcd_server_id", "Server or member ID in hexadecimal format.",
                        "server_id", f"{m.id:x}")  # fmt: skip
        yield _gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            1 if m.leader else 0,
        )
        yield _gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            1 if m.leader == m.id else 0,
        )
        yield _gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            1 if m.id in m.conf.learners else 0,
        )
        yield _gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            m.committed_index,
        )
        yield _gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            m.applied_index,
        )
        yield _gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            len(m._waiting),  # the proposals of this member waiting to be applied
        )
        yield _gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            m.cfg.quota_backend_bytes,
        )
        size = m.backend.size_bytes()
        yield _gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            size,
        )
        yield _gauge(
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            size,
        )
        yield _gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            m.backend.size_in_use_bytes(),
        )
        kv = m.kv
        yield _gauge(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys (deleted ones count until compacted away).",
            len(kv.index),
        )
        yield _gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            kv.current_revision,
        )
        yield _gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            max(kv.compact_revision, 0),
        )
        yield _gauge(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            m.hub.watcher_count,
        )


# -- gRPC ------------------------------------------------------------------------------------


def _code(context: Any, exc: BaseException | None) -> grpc.StatusCode:
    """How a call ended: the code it set (abort, set_code), else from ``exc``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions report the raw number
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return member
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _MethodCounts:
    """One method's ``grpc_server_started`` and ``_handled`` series, each resolved on its
    first use (a series appears once a call has made it move, as before)."""

    __slots__ = ("_handled", "_handled_family", "_labels", "_started", "_started_family")

    def __init__(self, metrics: MemberMetrics, kind: str, method: str) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self._labels = (kind, service, name)
        self._started_family = metrics.grpc_started
        self._handled_family = metrics.grpc_handled
        self._started: Any = None
        self._handled: dict[grpc.StatusCode, Any] = {}

    def started(self) -> None:
        counter = self._started
        if counter is None:
            counter = self._started = self._started_family.labels(*self._labels)
        counter.inc()

    def handled(self, code: grpc.StatusCode) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = self._handled_family.labels(
                *self._labels, GO_CODE_NAMES.get(code, "Unknown")
            )
        counter.inc()


def _counting(metrics: MemberMetrics, method: str, handler: Handler) -> Handler:
    """``handler`` counting every call: started, and handled with its code."""
    counts = _MethodCounts(metrics, handlers.kind(handler), method)
    started, done = counts.started, counts.handled
    inner = handlers.behavior(handler)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            started()
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                done(_code(context, exc))
                raise
            done(_code(context, None))

        return handlers.replace(handler, streaming)

    async def single(request: Any, context: Any) -> Any:
        started()
        try:
            result = await inner(request, context)
        except BaseException as exc:
            done(_code(context, exc))
            raise
        done(_code(context, None))
        return result

    return handlers.replace(handler, single)
