"""Client load in the manner of etcd's ``benchmark`` tool, against any etcd v3 endpoints.

``python -m cluster.bench put|range|txn-put|watch|watch-latency|lease-keepalive --endpoints ...``
with etcd's flags (``--clients``, ``--conns``, ``--total``, ``--key-size``, ``--val-size``,
``--key-space-size``, ``--sequential-keys``, ``--consistency``). Clients are asyncio tasks
sharing ``--conns`` gRPC channels; each request's latency is recorded. The report: requests
per second, latency min / p50 / p90 / p99 / max, a histogram, or one JSON object
(``--json``). The load generator is the same for every server, so figures compare servers
(ours against a real etcd in ``compare.py``); on a small machine it takes CPU from them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

WORKLOADS = ("put", "range", "txn-put", "watch", "watch-latency", "lease-keepalive")


def percentile(latencies: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``latencies``; NaN if there are none."""
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Report:
    workload: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "workload": self.workload,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.rate, 1),
            "latency_ms": {
                "min": round(min(lat) * 1000, 3) if lat else None,
                "p50": round(self.percentile(50) * 1000, 3),
                "p90": round(self.percentile(90) * 1000, 3),
                "p99": round(self.percentile(99) * 1000, 3),
                "max": round(max(lat) * 1000, 3) if lat else None,
            },
        }

    def text(self) -> str:
        s = self.summary()
        lat = s["latency_ms"]
        lines = [
            f"Summary ({self.workload}):",
            f"  Total:        {s['seconds']:.4f} secs.",
            f"  Requests/sec: {s['requests_per_second']:.1f}",
            f"  Errors:       {self.errors}",
            f"  Latency (ms): min {lat['min']}  p50 {lat['p50']}  p90 {lat['p90']}  "
            f"p99 {lat['p99']}  max {lat['max']}",
            "",
            "Response time histogram:",
            *self._histogram(),
        ]
        return "\n".join(lines)

    def _histogram(self, buckets: int = 10) -> list[str]:
        if not self.latencies:
            return ["  (no samples)"]
        lo, hi = min(self.latencies), max(self.latencies)
        width = (hi - lo) / buckets or 1e-9
        counts = [0] * buckets
        for x in self.latencies:
            counts[min(buckets - 1, int((x - lo) / width))] += 1
        top = max(counts)
        return [
            f"  {1000 * (lo + (i + 1) * width):9.3f} [{n:7d}]\t|{'∎' * (40 * n // top)}"
            for i, n in enumerate(counts)
        ]


@dataclass(frozen=True)
class Options:
    endpoints: list[str]
    clients: int = 1
    conns: int = 1
    total: int = 10000
    key_size: int = 8
    val_size: int = 8
    key_space_size: int = 1
    sequential_keys: bool = False
    consistency: str = "l"
    watchers: int = 10
    put_rate: int = 0  # watch, watch-latency: puts per second (0: one after another)
    watch_keys: int = 1  # watch, watch-latency: keys the watchers are spread over
    progress: bool = False


def _key(opts: Options, i: int) -> bytes:
    n = i % opts.key_space_size if opts.sequential_keys else random.randrange(opts.key_space_size)
    return str(n).encode().rjust(opts.key_size, b"0")[-opts.key_size :]


async def _drive(opts: Options, workload: str, op: Callable[[int, int], Awaitable[None]]) -> Report:
    """Run ``op(client, i)`` ``opts.total`` times over ``opts.clients`` concurrent clients."""
    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def client(c: int) -> None:
        nonlocal next_i, errors
        while next_i < opts.total:
            i = next_i
            next_i += 1
            start = time.perf_counter()
            try:
                await op(c, i)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            if opts.progress and len(latencies) % max(1, opts.total // 50) == 0:
                done = len(latencies) * 50 // opts.total
                print(f"\r[{'#' * done}{'.' * (50 - done)}]", end="", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(opts.clients)))
    elapsed = time.perf_counter() - start
    if opts.progress:
        print(file=sys.stderr)
    return Report(workload, len(latencies), errors, elapsed, latencies)


async def run(workload: str, opts: Options) -> Report:
    channels = [
        grpc.aio.insecure_channel(opts.endpoints[i % len(opts.endpoints)])
        for i in range(opts.conns)
    ]
    try:
        kvs = [pb_grpc.KVStub(ch) for ch in channels]
        value = b"v" * opts.val_size
        if workload == "put":

            async def put(c: int, i: int) -> None:
                await kvs[c % len(kvs)].Put(pb.PutRequest(key=_key(opts, i), value=value))

            return await _drive(opts, workload, put)
        if workload == "range":
            await kvs[0].Put(pb.PutRequest(key=_key(opts, 0), value=value))
            serializable = opts.consistency == "s"

            async def get(c: int, i: int) -> None:
                req = pb.RangeRequest(key=_key(opts, 0), serializable=serializable)
                await kvs[c % len(kvs)].Range(req)

            return await _drive(opts, workload, get)
        if workload == "txn-put":

            async def txn_put(c: int, i: int) -> None:
                op = pb.RequestOp(request_put=pb.PutRequest(key=_key(opts, i), value=value))
                await kvs[c % len(kvs)].Txn(pb.TxnRequest(success=[op]))

            return await _drive(opts, workload, txn_put)
        if workload == "lease-keepalive":
            leases = pb_grpc.LeaseStub(channels[0])
            granted = await leases.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
            stubs = [pb_grpc.LeaseStub(ch) for ch in channels]

            async def keepalive(c: int, i: int) -> None:
                call = stubs[c % len(stubs)].LeaseKeepAlive(
                    iter([pb.LeaseKeepAliveRequest(ID=granted.ID)])
                )
                async for _ in call:
                    break

            return await _drive(opts, workload, keepalive)
        if workload in ("watch", "watch-latency"):
            return await _watch_bench(workload, opts, channels, value)
        raise ValueError(f"unknown workload {workload!r}")
    finally:
        for ch in channels:
            await ch.close()


class _WatchStreams:
    """``opts.watchers`` watches over ``opts.conns`` streams (as etcd's benchmark multiplexes
    them), watcher ``n`` on key ``n % opts.watch_keys``; counts each revision's events."""

    def __init__(self, opts: Options, channels: list[Any]) -> None:
        self.opts = opts
        self.keys = [b"watch-bench-%06d" % k for k in range(max(1, opts.watch_keys))]
        self.per_key = [0] * len(self.keys)
        for n in range(opts.watchers):
            self.per_key[n % len(self.keys)] += 1
        self.created: list[float] = []  # each watch's creation latency
        self.seen: dict[int, int] = {}
        self.on_all_seen: Callable[[int], None] = lambda rev: None
        self._channels = channels
        self._tasks: list[asyncio.Task[None]] = []
        self._all_created = asyncio.Event()

    async def start(self, timeout: float = 60) -> None:
        streams = max(1, min(self.opts.conns, self.opts.watchers))
        for s in range(streams):
            mine = list(range(s, self.opts.watchers, streams))
            self._tasks.append(asyncio.ensure_future(self._stream(s, mine)))
        await asyncio.wait_for(self._all_created.wait(), timeout)

    async def _stream(self, s: int, watchers: list[int]) -> None:
        stub = pb_grpc.WatchStub(self._channels[s % len(self._channels)])
        queue: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        asked: list[float] = []
        expected_of: dict[int, int] = {}  # watch id -> watchers of its key

        async def requests() -> Any:
            for n in watchers:
                key = self.keys[n % len(self.keys)]
                asked.append(time.perf_counter())
                yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key))
            while True:
                yield await queue.get()

        answered = 0
        async for resp in stub.Watch(requests()):
            if resp.created:
                self.created.append(time.perf_counter() - asked[answered])
                n = watchers[answered]
                expected_of[resp.watch_id] = self.per_key[n % len(self.keys)]
                answered += 1
                if len(self.created) == self.opts.watchers:
                    self._all_created.set()
            for ev in resp.events:
                rev = ev.kv.mod_revision
                count = self.seen.get(rev, 0) + 1
                self.seen[rev] = count
                if count == expected_of.get(resp.watch_id, -1):
                    self.on_all_seen(rev)

    def expected(self, key_index: int) -> int:
        return self.per_key[key_index]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


async def _watch_bench(workload: str, opts: Options, channels: list[Any], value: bytes) -> Report:
    """``watch-latency``: puts at ``--put-rate`` (issued on schedule, not one after another),
    each timed from its send until every watcher of its key has its event. ``watch``: the
    latency of creating each watch (then the same puts, to check events flow)."""
    streams = _WatchStreams(opts, channels)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    done = 0

    def all_seen(rev: int) -> None:
        nonlocal done
        t = sent.pop(rev, None)
        if t is not None:
            latencies.append(time.perf_counter() - t)
            done += 1

    streams.on_all_seen = all_seen
    kvs = [pb_grpc.KVStub(ch) for ch in channels]  # puts spread over every connection
    errors = 0

    async def put(i: int) -> None:
        nonlocal errors, done
        k = i % len(streams.keys)
        t = time.perf_counter()
        try:
            resp = await kvs[i % len(kvs)].Put(pb.PutRequest(key=streams.keys[k], value=value))
        except grpc.aio.AioRpcError:
            errors += 1
            return
        rev = resp.header.revision
        if streams.seen.get(rev, 0) >= streams.expected(k):
            latencies.append(time.perf_counter() - t)  # the events came before the response
            done += 1
        else:
            sent[rev] = t

    try:
        created_from = time.perf_counter()
        await streams.start()
        created_in = time.perf_counter() - created_from
        interval = 1 / opts.put_rate if opts.put_rate else 0.0
        begin = time.perf_counter()
        puts: list[asyncio.Task[None]] = []
        for i in range(opts.total):
            if interval:
                await asyncio.sleep(max(0.0, begin + i * interval - time.perf_counter()))
                puts.append(asyncio.ensure_future(put(i)))
            else:
                await put(i)
        await asyncio.gather(*puts)
        deadline = time.perf_counter() + 10
        while done < opts.total - errors and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - begin
        if workload == "watch":
            return Report(workload, len(streams.created), errors, created_in, streams.created)
        return Report(workload, len(latencies), errors, elapsed, latencies)
    finally:
        streams.stop()


def add_parsers(workloads: Any) -> None:
    for name in WORKLOADS:
        p = workloads.add_parser(name, help=f"etcd benchmark's {name} against --endpoints")
        p.add_argument("--endpoints", default="127.0.0.1:2379", help="host:port,...")
        p.add_argument("--clients", type=int, default=1)
        p.add_argument("--conns", type=int, default=1)
        p.add_argument("--total", type=int, default=10000)
        p.add_argument("--key-size", type=int, default=8)
        p.add_argument("--val-size", type=int, default=8)
        p.add_argument("--key-space-size", type=int, default=1)
        p.add_argument("--sequential-keys", action="store_true")
        p.add_argument("--consistency", choices=("l", "s"), default="l")
        p.add_argument("--watchers", type=int, default=10, help="watch: watchers")
        p.add_argument("--watch-keys", type=int, default=1, help="watch: keys they watch")
        p.add_argument("--put-rate", type=int, default=0, help="watch: puts per second")
        p.add_argument("--json", action="store_true", help="one JSON object")
        p.set_defaults(run=_main, workload_name=name)


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        endpoints=[e.strip() for e in args.endpoints.split(",") if e.strip()],
        clients=args.clients,
        conns=max(1, args.conns),
        total=args.total,
        key_size=args.key_size,
        val_size=args.val_size,
        key_space_size=max(1, args.key_space_size),
        sequential_keys=args.sequential_keys,
        consistency=args.consistency,
        watchers=args.watchers,
        put_rate=args.put_rate,
        watch_keys=max(1, args.watch_keys),
        progress=sys.stderr.isatty() and not args.json,
    )


def _main(args: argparse.Namespace) -> int:
    report = asyncio.run(run(args.workload_name, options_from(args)))
    print(json.dumps(report.summary()) if args.json else report.text())
    return 0 if report.requests else 1


__all__ = ["WORKLOADS", "Options", "Report", "add_parsers", "run"]
