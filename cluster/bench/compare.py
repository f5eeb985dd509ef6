"""``python -m cluster.bench compare``: the same workloads against our 3-member cluster and
a real 3-member etcd (Debian's ``etcd-server``), alternating, on this machine, in one run.

Both clusters listen on 127.0.0.1 only, on free ports, with their data in a temporary
directory, the same ``--snapshot-count`` and etcd's default fsync behaviour; both are
stopped (by PID) at the end. Each row runs against ours, then etcd, and the table shows the
ratio ours/etcd (requests per second; for latency rows, etcd's p50 over ours, so above 1
is better for us in both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from .load import Options, Report, run

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
        Row("put, 1 client", "put", replace(base, clients=1, conns=1, total=n(2000))),
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


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
    ports = _free_ports(2 * size)
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


def _ratio(ours: Report, etcd: Report, latency: bool) -> float:
    if latency:
        return etcd.percentile(50) / ours.percentile(50) if ours.latencies else 0.0
    return ours.rate / etcd.rate if etcd.rate else 0.0


def compare(scale: float, as_json: bool) -> int:
    if not Path(ETCD).exists():
        print(f"error: no etcd at {ETCD} (apt-get install etcd-server)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "ours").mkdir()
        (tmp / "etcd").mkdir()
        with cluster("ours", tmp / "ours") as ours_eps, cluster("etcd", tmp / "etcd") as etcd_eps:
            for row in rows(scale):
                ours = asyncio.run(run(row.workload, replace(row.opts, endpoints=ours_eps)))
                etcd = asyncio.run(run(row.workload, replace(row.opts, endpoints=etcd_eps)))
                results.append((row, ours, etcd))
    if as_json:
        print(json.dumps([
            {"row": row.name, "ours": o.summary(), "etcd": e.summary()}
            for row, o, e in results
        ]))  # fmt: skip
        return 0
    print(f"{'workload':42} {'ours req/s':>11} {'etcd req/s':>11} {'ratio':>6} "
          f"{'ours p50':>9} {'etcd p50':>9} {'ours p99':>9} {'etcd p99':>9}")  # fmt: skip
    for row, o, e in results:
        latency = row.workload.startswith("watch")
        print(
            f"{row.name:42} {o.rate:11.0f} {e.rate:11.0f} {_ratio(o, e, latency):6.2f} "
            f"{o.percentile(50) * 1000:8.2f}m {e.percentile(50) * 1000:8.2f}m "
            f"{o.percentile(99) * 1000:8.2f}m {e.percentile(99) * 1000:8.2f}m"
        )
    print("(ratio: ours/etcd requests per second; watch: etcd p50 / ours p50; m = ms)")
    return 0


def add_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = workloads.add_parser("compare", help="our cluster side by side with a real etcd")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every row's --total")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a: compare(a.scale, a.json))
