"""The load generator (``python -m cluster.bench <workload>``) against one live member."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from cluster.bench import load
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from tests.unit.server.live import LiveMember


def opts(live: LiveMember, **kw: object) -> load.Options:
    base = load.Options(endpoints=[live.endpoint], val_size=16, key_space_size=50)
    return load.Options(**{**base.__dict__, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("workload", ["put", "txn-put", "range", "lease-keepalive"])
async def test_each_request_workload_completes_every_request(
    live: LiveMember, workload: str
) -> None:
    report = await load.run(workload, opts(live, clients=4, conns=2, total=40))
    assert (report.requests, report.errors) == (40, 0)
    assert len(report.latencies) == 40 and 0 < report.percentile(50) <= report.percentile(99)


async def test_put_writes_the_keys_it_reports(live: LiveMember) -> None:
    await load.run("put", opts(live, clients=2, total=30, sequential_keys=True, key_size=4))
    got = await live.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True))
    assert got.count == 30  # keys 0000..0029


async def test_watch_latency_times_each_put_until_every_watcher_saw_it(
    live: LiveMember,
) -> None:
    o = opts(live, conns=3, total=60, watchers=12, watch_keys=4, put_rate=200)
    report = await load.run("watch-latency", o)
    # 60 puts counted: each only once all 3 watchers of its key had its event
    assert (report.requests, report.errors) == (60, 0)
    events = await live.kv.Range(pb.RangeRequest(key=b"watch-bench-", range_end=b"watch-bench."))
    assert sum(kv.version for kv in events.kvs) == 60


async def test_watch_reports_the_creation_of_every_watch(live: LiveMember) -> None:
    report = await load.run("watch", opts(live, conns=2, total=5, watchers=20, watch_keys=5))
    assert report.requests == 20 and len(report.latencies) == 20


async def test_the_command_line_prints_one_json_object(live: LiveMember) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cluster.bench", "put", "--endpoints", live.endpoint,
        "--total", "10", "--clients", "2", "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    summary = json.loads(out)
    assert proc.returncode == 0 and summary["requests"] == 10 and summary["errors"] == 0
    assert set(summary["latency_ms"]) >= {"min", "p50", "p90", "p99", "max"}
