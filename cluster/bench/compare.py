"""``python -m cluster.bench compare``: the same workloads against our 3-member cluster and
a real 3-member etcd (Debian's ``etcd-server``), alternating, on this machine, in one run.

Our cluster runs once per client gRPC server asked for (``--ours grpcio,native``: grpcio's
asyncio server, the default, and pygrpc-native, ``--experimental-grpc-server=native``).
Every cluster listens on 127.0.0.1 only, on free ports, with its data in a temporary
directory, the same ``--snapshot-count`` and etcd's default fsync behaviour; all are
stopped (by PID) at the end. Each row runs against each of ours, then etcd, and the table
shows the ratio ours/etcd (requests per second; for latency rows, etcd's p50 over ours, so
above 1 is better for us in both).

A shared machine's speed drifts from minute to minute, so one run's ratio can be off by a
fifth. ``--rounds N`` runs every row N times, etcd first in every other round, and shows
each figure's median over the rounds and the range of the row's ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from cluster.config import GRPC_SERVERS
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from .load import Options, Report, run
from .ports import free_ports

ETCD = os.environ.get("ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


@dataclass(frozen=True)
class Row:
    name: str
    workload: str
    opts: Options


def rows(scale: float) -> list[Row]:
    def n(total: int) -> int:
        return max(10, int(total * scale))

    base = Options(endpoints=[], key_size=8, val_size=256, key_space_size=100000)
    return [
        Row(
            "put, 1 client (to the leader)", "put", replace(base, clients=1, conns=1, total=n(2000))
        ),
        Row("put, 64 clients", "put", replace(base, clients=64, conns=16, total=n(20000))),
        Row(
            "range serializable, 64 clients",
            "range",
            replace(base, clients=64, conns=16, total=n(40000), consistency="s"),
        ),
        Row(
            "range linearizable, 64 clients",
            "range",
            replace(base, clients=64, conns=16, total=n(20000), consistency="l"),
        ),
        Row(
            "watch put-to-event, 1000 puts/s, 100 keys",
            "watch-latency",
            replace(base, conns=4, total=n(10000), watchers=100, watch_keys=100, put_rate=1000),
        ),
        Row(
            "watch put-to-event, 100 puts/s, 1 key",
            "watch-latency",
            replace(base, conns=4, total=n(1000), watchers=100, watch_keys=1, put_rate=100),
        ),
    ]


def _member_argv(
    kind: str, name: str, client: int, peer: int, initial: str, data: Path
) -> list[str]:
    flags = [
        "--name", name, "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", initial, "--initial-cluster-state", "new",
        "--snapshot-count", "10000",
    ]  # fmt: skip
    if kind == "etcd":
        return [ETCD, *flags]
    return [sys.executable, "-m", "cluster", *flags]


@contextmanager
def cluster(
    kind: str,
    tmp: Path,
    size: int = 3,
    *,
    extra_flags: Sequence[str] = (),
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[list[str]]:
    """``size`` members of ``kind`` ("ours" or "etcd"); their client endpoints.

    ``extra_flags`` go after each member's own (a repeated flag's last value wins);
    ``started``, if given, receives the member processes, in endpoint order (their
    ``args`` start them again). Members still running at the end are killed.
    """
    ports = free_ports(2 * size)
    names = [f"{kind}{i}" for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, name in enumerate(names):
            argv = _member_argv(kind, name, ports[2 * i], ports[2 * i + 1], initial, tmp / name)
            argv += extra_flags
            with (tmp / f"{name}.log").open("wb") as log:
                procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        if started is not None:
            started.extend(procs)
        endpoints = [f"127.0.0.1:{ports[2 * i]}" for i in range(size)]
        asyncio.run(_wait_ready(endpoints))
        yield endpoints
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def _wait_ready(endpoints: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for ep in endpoints:
        async with grpc.aio.insecure_channel(ep) as ch:
            stub = pb_grpc.MaintenanceStub(ch)
            while True:
                try:
                    st = await stub.Status(pb.StatusRequest(), timeout=1)
                    if st.leader:
                        break
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ep} did not get ready")
                await asyncio.sleep(0.2)


async def _leader_first(endpoints: list[str]) -> list[str]:
    """``endpoints`` with the leader's first, so one-connection rows write to the leader in
    every cluster (etcd's published benchmarks name their target: "leader only")."""

    async def leads(ep: str) -> bool:
        async with grpc.aio.insecure_channel(ep) as ch:
            st = await pb_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
            return bool(st.leader) and st.leader == st.header.member_id

    leading = {ep: await leads(ep) for ep in endpoints}
    return sorted(endpoints, key=lambda ep: not leading[ep])  # stable: the rest keep order


def _ratio(ours: Report, etcd: Report, latency: bool) -> float:
    if latency:
        return etcd.percentile(50) / ours.percentile(50) if ours.latencies else 0.0
    return ours.rate / etcd.rate if etcd.rate else 0.0


@dataclass
class Result:
    row: Row
    ours: dict[str, Report]  # by our members' gRPC server
    etcd: Report


async def _run_row(row: Row, endpoints: list[str]) -> Report:
    """A one-connection row goes to the leader; wider rows spread their connections over the
    members in their configured order, as etcd's benchmark does with ``--endpoints``."""
    if row.opts.conns == 1:
        endpoints = await _leader_first(endpoints)
    return await run(row.workload, replace(row.opts, endpoints=endpoints))


async def _run_rows(
    todo: list[Row], ours_eps: dict[str, list[str]], etcd_eps: list[str], rounds: int = 1
) -> list[list[Result]]:
    """Per row, its result from each round; every round runs every row against each cluster,
    etcd first in every other round (neither side always runs on a warmer or cooler machine).

    All in one event loop: grpc.aio's poller can outlive a loop closed under it (and print
    "Event loop is closed" tracebacks), so not one per row."""
    results: list[list[Result]] = [[] for _ in todo]
    for round_ in range(rounds):
        for row, per_round in zip(todo, results, strict=True):
            etcd = await _run_row(row, etcd_eps) if round_ % 2 else None
            ours = {server: await _run_row(row, eps) for server, eps in ours_eps.items()}
            if etcd is None:
                etcd = await _run_row(row, etcd_eps)
            per_round.append(Result(row, ours, etcd))
    return results


def compare(
    scale: float, as_json: bool, servers: Sequence[str] = GRPC_SERVERS, rounds: int = 1
) -> int:
    if not Path(ETCD).exists():
        print(f"error: no etcd at {ETCD} (apt-get install etcd-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        ours_eps = {}
        for server in servers:
            (tmp / server).mkdir()
            flags = ["--experimental-grpc-server", server]
            ours_eps[server] = stack.enter_context(cluster("ours", tmp / server, extra_flags=flags))
        (tmp / "etcd").mkdir()
        etcd_eps = stack.enter_context(cluster("etcd", tmp / "etcd"))
        results = asyncio.run(_run_rows(rows(scale), ours_eps, etcd_eps, rounds))
    if as_json:
        print(json.dumps([
            {
                "row": per_round[0].row.name,
                "rounds": [
                    {
                        "ours": {server: o.summary() for server, o in r.ours.items()},
                        "etcd": r.etcd.summary(),
                    }
                    for r in per_round
                ],
            }
            for per_round in results
        ]))  # fmt: skip
        return 0
    print(table(results))
    return 0


def table(results: Sequence[Sequence[Result]]) -> str:
    """One line per row and gRPC server of ours, beside etcd's figures for the row: each
    figure the median over the row's rounds, and the range of the ratio when there are
    several."""
    lines = [
        f"{'workload':42} {'ours (gRPC server)':>19} {'etcd req/s':>11} {'ratio':>6} "
        f"{'range':>10} {'ours p50':>9} {'etcd p50':>9} {'ours p99':>9} {'etcd p99':>9}"
    ]
    for per_round in results:
        row = per_round[0].row
        latency = row.workload.startswith("watch")
        etcd = [r.etcd for r in per_round]
        for server in per_round[0].ours:
            ours = [r.ours[server] for r in per_round]
            ratios = [_ratio(o, e, latency) for o, e in zip(ours, etcd, strict=True)]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
            lines.append(
                f"{row.name:42} {statistics.median(o.rate for o in ours):10.0f} {server:>8} "
                f"{statistics.median(e.rate for e in etcd):11.0f} "
                f"{statistics.median(ratios):6.2f} {spread:>10} "
                f"{_median_ms(ours, 50):8.2f}m {_median_ms(etcd, 50):8.2f}m "
                f"{_median_ms(ours, 99):8.2f}m {_median_ms(etcd, 99):8.2f}m"
            )
    legend = "ratio: ours/etcd requests per second; watch: etcd p50 / ours p50; m = ms"
    rounds = len(results[0]) if results else 0
    if rounds > 1:
        legend += f"; medians of {rounds} rounds, range: the ratio's lowest-highest"
    lines.append(f"({legend})")
    return "\n".join(lines)


def _median_ms(reports: Sequence[Report], p: float) -> float:
    return statistics.median(r.percentile(p) for r in reports) * 1000


def _servers(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in GRPC_SERVERS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more of {', '.join(GRPC_SERVERS)}, comma-separated"
        )
    return chosen


def add_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = workloads.add_parser("compare", help="our cluster side by side with a real etcd")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every row's --total")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--ours",
        type=_servers,
        default=list(GRPC_SERVERS),
        help="our members' gRPC servers to run, comma-separated (default: grpcio,native)",
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="run every row this many times, etcd first in every other round; "
        "the table shows medians (default: 1)",
    )
    p.set_defaults(run=lambda a: compare(a.scale, a.json, a.ours, a.rounds))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value
