"""``python -m cluster.bench large``: a 3-member cluster of ours holding many keys.

Starts a cluster (``compare.cluster``, data in a temporary directory under ``--tmp``, every
member run with ``--snapshot-count``), then, in order:

1. **load**: ``--keys`` keys of ``--val-size`` bytes, written to the leader as fast as it
   takes them (``--load-clients`` concurrent txns of ``--txn-ops`` puts each);
2. **memory**: each member's RSS (``/proc/PID/status``: VmRSS, and its anonymous and
   file-backed parts; the LMDB map counts as file-backed) and its ``db`` file size;
3. **restart**: a follower (or, ``--restart leader``, the leader) is stopped (SIGTERM) and
   started again with the same argv and data; the time until it answers a linearizable
   Range (and its RSS then);
4. **stalls**: a steady open-loop load (``--rate`` requests/s, puts and linearizable gets
   alternating, each request on its own, sent from a process of its own so that the
   bursts below cannot delay it) against the leader and the other follower, while
   (a) a burst of single puts makes every member take snapshots, and (b) a follower is
   stopped, more entries than the leader keeps for catching up are written, and it is
   started again, so the leader must send it its backend. Reported per endpoint: the
   longest gap between consecutive successful completions, latency p50/p99/max, errors.

Every phase is bounded in time; the members are stopped (by PID) at the end and the data
is deleted (``--keep`` keeps it, with the members' logs). Figures are printed as a table,
or as one JSON object (``--json``); ``started_unix`` lines the stall phase's times up with
the members' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from .compare import cluster
from .load import percentile

_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]
LOAD_TIMEOUT = 3600.0  # seconds
KEY_PREFIX = b"large/"
STALL_PREFIX = b"stall/"
BURST_PREFIX = b"burst/"


@dataclass
class Member:
    """One member process of the benchmark cluster."""

    name: str
    endpoint: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    member_id: int = 0

    @property
    def db_path(self) -> Path:
        return self.data_dir / "member" / "snap" / "db"

    def memory(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile and VmHWM (peak RSS), in bytes; empty if not running."""
        out: dict[str, int] = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                        out[name] = int(rest.split()[0]) * 1024
        except FileNotFoundError:
            pass
        return out

    def db_bytes(self) -> int:
        try:
            return self.db_path.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout``); seconds it took."""
        start = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return time.perf_counter() - start

    def start(self) -> None:
        """Start the member again with the argv it was started with, its data kept."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.proc.args, stdout=log, stderr=log)


@dataclass
class Series:
    """One endpoint's requests under the steady load."""

    endpoint: str
    role: str
    latencies: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    errors: int = 0

    def max_gap(self, start: float = 0.0, end: float = math.inf) -> tuple[float, float]:
        """(longest time between consecutive successful completions, when it ended),
        among the gaps that end in [start, end)."""
        done = sorted(self.completions)
        best, at = 0.0, 0.0
        for a, b in itertools.pairwise(done):
            if start <= b < end and b - a > best:
                best, at = b - a, b
        return best, at

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def summary(self, origin: float, windows: list[tuple[str, float, float]]) -> dict[str, Any]:
        """Figures over the whole run; the longest gap in each of ``windows``
        (name, start, end; times from ``time.perf_counter``)."""
        gap, at = self.max_gap()
        return {
            "max_gap_ms_by_window": {
                name: round(self.max_gap(a, b)[0] * 1000, 1) for name, a, b in windows
            },
            "endpoint": self.endpoint,
            "role": self.role,
            "requests": len(self.latencies),
            "errors": self.errors,
            "max_gap_ms": round(gap * 1000, 1),
            "max_gap_ended_at_s": round(at - origin, 2) if at else None,
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(max(self.latencies) * 1000, 1) if self.latencies else None,
        }


@dataclass
class Options:
    keys: int = 1_000_000
    val_size: int = 256
    txn_ops: int = 128
    load_clients: int = 8
    snapshot_count: int = 10000
    catchup_entries: int = 5000
    rate: float = 200.0
    burst_clients: int = 32
    restart: str = "follower"
    tmp: str | None = None
    keep: bool = False


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


async def _status(endpoint: str, timeout: float = 2) -> pb.StatusResponse:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        st: pb.StatusResponse = await pb_grpc.MaintenanceStub(ch).Status(
            pb.StatusRequest(), timeout=timeout
        )
        return st


async def _identify(members: list[Member]) -> Member:
    """Fill in each member's id; the leader (retried until one is known)."""
    deadline = time.monotonic() + 60
    while True:
        leader = 0
        for m in members:
            with contextlib.suppress(grpc.aio.AioRpcError):
                st = await _status(m.endpoint)
                m.member_id = st.header.member_id
                leader = leader or st.leader
        for m in members:
            if leader and m.member_id == leader:
                return m
        if time.monotonic() > deadline:
            raise TimeoutError("no leader")
        await asyncio.sleep(0.2)


# -- phases ------------------------------------------------------------------------------


async def load(endpoint: str, opts: Options, progress: bool) -> dict[str, Any]:
    """Write ``opts.keys`` keys through txns of ``opts.txn_ops`` puts; the rate."""
    value = b"v" * opts.val_size
    batches = (opts.keys + opts.txn_ops - 1) // opts.txn_ops
    next_batch = 0
    done = 0
    retries = 0

    async def client(kv: pb_grpc.KVStub) -> None:
        nonlocal next_batch, done, retries
        while next_batch < batches:
            b = next_batch
            next_batch += 1
            lo, hi = b * opts.txn_ops, min(opts.keys, (b + 1) * opts.txn_ops)
            txn = pb.TxnRequest(
                success=[
                    pb.RequestOp(
                        request_put=pb.PutRequest(key=KEY_PREFIX + b"%010d" % i, value=value)
                    )
                    for i in range(lo, hi)
                ]
            )
            for attempt in range(20):
                try:
                    await kv.Txn(txn, timeout=30)
                    break
                except grpc.aio.AioRpcError:
                    retries += 1
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)
            done += hi - lo
            if progress and b % 200 == 0:
                print(f"\r  loaded {done:>10,} keys", end="", file=sys.stderr)

    start = time.perf_counter()
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(max(1, opts.load_clients // 4))]
    try:
        stubs = [pb_grpc.KVStub(ch) for ch in channels]
        await asyncio.gather(*(client(stubs[c % len(stubs)]) for c in range(opts.load_clients)))
    finally:
        for ch in channels:
            await ch.close()
    seconds = time.perf_counter() - start
    if progress:
        print(file=sys.stderr)
    return {
        "keys": opts.keys,
        "seconds": round(seconds, 1),
        "keys_per_second": round(opts.keys / seconds),
        "retries": retries,
    }


async def _until_serving(endpoint: str, timeout: float) -> float:
    """Seconds until ``endpoint`` answers a linearizable Range (retried every 50 ms)."""
    start = time.perf_counter()
    deadline = start + timeout
    # gRPC's reconnect backoff (1 s, growing) would add up to seconds after the member
    # starts listening: retry the connection every 50-100 ms instead.
    async with grpc.aio.insecure_channel(endpoint, options=_FAST_RECONNECT) as ch:
        kv = pb_grpc.KVStub(ch)
        while True:
            try:
                await kv.Range(pb.RangeRequest(key=KEY_PREFIX + b"%010d" % 0), timeout=1)
                return time.perf_counter() - start
            except grpc.aio.AioRpcError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{endpoint} did not serve within {timeout} s") from None
                await asyncio.sleep(0.05)


async def restart(member: Member, timeout: float = 300) -> dict[str, Any]:
    """Stop ``member`` (SIGTERM), start it again; the time until it serves."""
    stop_s = await asyncio.to_thread(member.stop)
    member.start()
    serve_s = await _until_serving(member.endpoint, timeout)
    return {
        "member": member.name,
        "stop_seconds": round(stop_s, 2),
        "start_to_serving_seconds": round(serve_s, 2),
        "memory_after": member.memory(),
    }


async def _steady(
    series: Series,
    rate: float,
    stop: asyncio.Event,
) -> None:
    """Open-loop requests at ``rate``/s (put, linearizable get, ...) until ``stop``.

    Each request is sent on schedule whether or not the earlier ones are done, so a
    member that stalls shows as latency and as a gap in completions, not as fewer
    requests sent.
    """
    async with grpc.aio.insecure_channel(series.endpoint) as ch:
        kv = pb_grpc.KVStub(ch)
        value = b"s" * 64
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            key = STALL_PREFIX + b"%04d" % (i % 1000)
            t = time.perf_counter()
            try:
                if i % 2:
                    await kv.Range(pb.RangeRequest(key=key), timeout=10)
                else:
                    await kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
            except grpc.aio.AioRpcError:
                series.errors += 1
                return
            end = time.perf_counter()
            series.latencies.append(end - t)
            series.completions.append(end)

        begin = time.perf_counter()
        for i in itertools.count():
            if stop.is_set():
                break
            task = asyncio.ensure_future(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            delay = begin + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if pending:
            await asyncio.wait(pending, timeout=15)


def _steady_process(series: list[Series], rate: float, ready: Any, stop: Any, out: Any) -> None:
    """A child process: the steady load against each of ``series``, ``rate``/s in all,
    from ``ready`` being set until ``stop`` is; then the filled ``series`` to ``out``.

    The load runs in its own process so that the bursts' clients, on the parent's event
    loop, cannot delay its sends or completions: a gap in them is the cluster's.
    (``time.perf_counter`` is the same monotonic clock in both processes.)
    """
    async def main() -> None:
        halt = asyncio.Event()
        loads = [asyncio.ensure_future(_steady(s, rate / len(series), halt)) for s in series]
        ready.set()
        await asyncio.to_thread(stop.wait)
        halt.set()
        await asyncio.wait(loads, timeout=30)

    try:
        asyncio.run(main())
    finally:
        out.put(series)


async def _burst(endpoint: str, puts: int, clients: int, tag: str) -> dict[str, Any]:
    """``puts`` single puts (one Raft entry each) over ``clients`` concurrent clients."""
    next_i = 0
    errors = 0
    value = b"b" * 64

    async def client(kv: pb_grpc.KVStub) -> None:
        nonlocal next_i, errors
        while next_i < puts:
            i = next_i
            next_i += 1
            key = BURST_PREFIX + tag.encode() + b"/%06d" % (i % 5000)
            try:
                await kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1

    start = time.perf_counter()
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = pb_grpc.KVStub(ch)
        await asyncio.gather(*(client(kv) for _ in range(clients)))
    return {"seconds": round(time.perf_counter() - start, 1), "errors": errors}


async def stalls(
    leader: Member, other: Member, victim: Member, opts: Options, log: Callable[[str], None]
) -> dict[str, Any]:
    """The steady load against ``leader`` and ``other`` while snapshots happen and
    ``victim`` catches up from the leader's backend."""
    series = [Series(leader.endpoint, "leader"), Series(other.endpoint, "follower")]
    # spawned, not forked: this process already runs gRPC channels and an event loop
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    steady = ctx.Process(
        target=_steady_process,
        args=(series, opts.rate, ready, stop, out),
        name="steady-load",
    )
    steady.start()
    if not await asyncio.to_thread(ready.wait, 60):
        steady.kill()
        raise RuntimeError("the steady load's process did not start")
    origin, started_unix = time.perf_counter(), time.time()
    events: list[dict[str, Any]] = []
    marks: dict[str, float] = {}

    def event(what: str, **extra: Any) -> None:
        marks[what] = now = time.perf_counter()
        events.append({"at_s": round(now - origin, 2), "event": what, **extra})
        log(f"  {events[-1]['at_s']:7.2f}s  {what} {extra or ''}")

    try:
        await asyncio.sleep(5)
        # (a) enough entries for every member to take at least two snapshots
        n = 2 * opts.snapshot_count + 1000
        event("snapshot burst", puts=n)
        done = await asyncio.wait_for(_burst(leader.endpoint, n, opts.burst_clients, "a"), 900)
        event("snapshot burst done", **done)
        await asyncio.sleep(3)
        # (b) a follower catching up by snapshot: the leader keeps ``catchup_entries``
        # entries after each snapshot, so snapshot_count + catchup_entries (and some)
        # entries written while the follower is down compact away everything it has.
        event("follower stopped", member=victim.name)
        await asyncio.to_thread(victim.stop)  # not on this loop: it times the requests
        n = opts.snapshot_count + opts.catchup_entries + 2000
        event("follower-down burst", puts=n)
        done = await asyncio.wait_for(_burst(leader.endpoint, n, opts.burst_clients, "b"), 900)
        event("follower-down burst done", **done)
        await asyncio.sleep(3)
        installs_before = _count_in_log(victim.log, "installed the leader's backend")
        event("follower started", member=victim.name)
        victim.start()
        serving = await _until_serving(victim.endpoint, 300)
        installed = _count_in_log(victim.log, "installed the leader's backend") - installs_before
        event("follower serving", seconds=round(serving, 2), backend_installed=installed)
        await asyncio.sleep(5)
    finally:
        stop.set()
        try:
            series = await asyncio.to_thread(out.get, True, 60)
        finally:
            await asyncio.to_thread(steady.join, 10)
            if steady.is_alive():
                steady.kill()
    end = time.perf_counter()
    windows = [
        ("quiet", origin + 1, marks.get("snapshot burst", end)),
        ("snapshots", marks.get("snapshot burst", end), marks.get("follower stopped", end)),
        ("follower down", marks.get("follower stopped", end), marks.get("follower started", end)),
        ("catch-up", marks.get("follower started", end), end),
    ]
    return {
        "rate": opts.rate,
        "started_unix": round(started_unix, 3),  # to line events up with member logs
        "events": events,
        "series": [s.summary(origin, windows) for s in series],
    }


def _count_in_log(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except FileNotFoundError:
        return 0


# -- driver ------------------------------------------------------------------------------


def _memory_rows(members: list[Member]) -> list[dict[str, Any]]:
    return [{"member": m.name, "db_bytes": m.db_bytes(), **m.memory()} for m in members]


async def _phases(
    members: list[Member], opts: Options, say: Callable[[str], None]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    leader = await _identify(members)
    followers = [m for m in members if m is not leader]
    say(f"leader {leader.name}; loading {opts.keys:,} keys of {opts.val_size} bytes")
    result["load"] = await asyncio.wait_for(
        load(leader.endpoint, opts, progress=sys.stderr.isatty()), LOAD_TIMEOUT
    )
    say(f"  {result['load']}")
    await asyncio.sleep(2)  # followers apply the tail
    result["memory_after_load"] = _memory_rows(members)

    target = leader if opts.restart == "leader" else followers[0]
    say(f"restarting {target.name}")
    result["restart"] = await restart(target)
    say(f"  {result['restart']['start_to_serving_seconds']} s to serving")
    leader = await _identify(members)
    followers = [m for m in members if m is not leader]
    result["memory_after_restart"] = _memory_rows(members)

    say("steady load with snapshots and a follower catching up by snapshot")
    result["stalls"] = await stalls(leader, followers[1], followers[0], opts, say)
    result["memory_end"] = _memory_rows(members)
    return result


def run(opts: Options, say: Callable[[str], None]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-large-", dir=opts.tmp))
    started: list[subprocess.Popen[bytes]] = []
    members: list[Member] = []
    flags = [
        "--snapshot-count", str(opts.snapshot_count),
        "--experimental-snapshot-catchup-entries", str(opts.catchup_entries),
    ]  # fmt: skip
    try:
        with cluster("ours", tmp, extra_flags=flags, started=started) as endpoints:
            members = [
                Member(f"ours{i}", ep, tmp / f"ours{i}", tmp / f"ours{i}.log", started[i])
                for i, ep in enumerate(endpoints)
            ]
            result = asyncio.run(_phases(members, opts, say))
            result["data_dir"] = str(tmp)
            return result
    finally:
        for m in members:  # restarted members are not cluster()'s to stop
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait(10)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _table(r: dict[str, Any]) -> str:
    lines = []
    ld = r["load"]
    lines.append(f"load: {ld['keys']:,} keys in {ld['seconds']} s ({ld['keys_per_second']:,}/s)")
    lines.append("")
    lines.append(
        f"{'member':8} {'when':16} {'RSS MiB':>8} {'anon':>6} {'file':>6} {'peak':>6} {'db MiB':>7}"
    )
    for when in ("memory_after_load", "memory_after_restart", "memory_end"):
        for row in r[when]:
            lines.append(
                f"{row['member']:8} {when.removeprefix('memory_'):16} {_mib(row.get('VmRSS')):>8} "
                f"{_mib(row.get('RssAnon')):>6} {_mib(row.get('RssFile')):>6} "
                f"{_mib(row.get('VmHWM')):>6} {_mib(row['db_bytes']):>7}"
            )
    rs = r["restart"]
    lines.append("")
    lines.append(
        f"restart of {rs['member']}: stop {rs['stop_seconds']} s, start to serving a "
        f"linearizable Range {rs['start_to_serving_seconds']} s"
    )
    st = r["stalls"]
    lines.append("")
    lines.append(f"steady load {st['rate']:.0f} req/s (put + linearizable get) during:")
    for ev in st["events"]:
        extra = {k: v for k, v in ev.items() if k not in ("at_s", "event")}
        lines.append(f"  {ev['at_s']:7.2f}s {ev['event']} {extra if extra else ''}")
    lines.append(
        f"{'endpoint':20} {'role':9} {'reqs':>6} {'errs':>5} {'max gap ms':>11} {'at s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    for s in st["series"]:
        lines.append(
            f"{s['endpoint']:20} {s['role']:9} {s['requests']:6} {s['errors']:5} "
            f"{s['max_gap_ms']:11.1f} {s['max_gap_ended_at_s'] or 0:7.2f} {s['p50_ms']:7.2f} "
            f"{s['p99_ms']:7.2f} {s['max_ms'] or 0:7.1f}"
        )
    windows = list(st["series"][0]["max_gap_ms_by_window"]) if st["series"] else []
    lines.append("")
    lines.append(f"{'longest gap, ms':20} {'role':9} " + " ".join(f"{w:>14}" for w in windows))
    for s in st["series"]:
        gaps = s["max_gap_ms_by_window"]
        lines.append(
            f"{s['endpoint']:20} {s['role']:9} " + " ".join(f"{gaps[w]:14.1f}" for w in windows)
        )
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    opts = Options(
        keys=args.keys,
        val_size=args.val_size,
        txn_ops=args.txn_ops,
        load_clients=args.load_clients,
        snapshot_count=args.snapshot_count,
        catchup_entries=args.catchup_entries,
        rate=args.rate,
        burst_clients=args.burst_clients,
        restart=args.restart,
        tmp=args.tmp,
        keep=args.keep,
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = run(opts, say)
    print(json.dumps(result) if args.json else _table(result))
    return 0


def add_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = workloads.add_parser(
        "large", help="many keys: memory, restart time, stalls during snapshots"
    )
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--txn-ops", type=int, default=128, help="puts per load txn (<= --max-txn-ops)")
    p.add_argument("--load-clients", type=int, default=8, help="concurrent load txns")
    p.add_argument("--snapshot-count", type=int, default=10000)
    p.add_argument("--catchup-entries", type=int, default=5000,
                   help="the members' --experimental-snapshot-catchup-entries")  # fmt: skip
    p.add_argument("--rate", type=float, default=200.0, help="steady load, requests/s in all")
    p.add_argument("--burst-clients", type=int, default=32)
    p.add_argument("--restart", choices=("follower", "leader"), default="follower")
    p.add_argument("--tmp", default=os.environ.get("TMPDIR") or "/tmp", help="parent of the data")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_main)
