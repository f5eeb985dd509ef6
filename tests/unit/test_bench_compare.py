"""``python -m cluster.bench compare``'s table and its ``--ours`` choice (the runs themselves
need a real etcd: ``make bench``), and the order it drives a cluster's endpoints in."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import pytest

from cluster.bench import compare
from cluster.bench.compare import Result, _leader_first, _servers, cluster, rows, table
from cluster.bench.load import Options, Report
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc


def _report(rate: float, p50_ms: float) -> Report:
    return Report("put", int(rate), 0, 1.0, [p50_ms / 1000] * 3)


def test_one_line_per_row_and_grpc_server_with_ratios_against_etcd() -> None:
    put, watch = rows(1.0)[1], rows(1.0)[4]
    lines = table(
        [
            [
                Result(
                    put,
                    {"grpcio": _report(2000, 25), "native": _report(5000, 12)},
                    _report(4000, 10),
                )
            ],
            [Result(watch, {"grpcio": _report(1000, 8)}, _report(1000, 2))],
        ]
    ).splitlines()
    assert len(lines) == 5  # header, 2 + 1 rows, legend
    grpcio, native, watched = lines[1:4]
    assert grpcio.startswith(put.name) and " grpcio " in grpcio and " 0.50 " in grpcio
    assert " native " in native and " 1.25 " in native  # requests/s: ours over etcd
    assert " 0.25 " in watched  # latency rows: etcd's p50 over ours
    assert "-" not in grpcio[len(put.name) :] and "rounds" not in lines[-1]  # one round: no range


def test_several_rounds_show_medians_and_the_ratios_range() -> None:
    put = rows(1.0)[1]
    rounds = [
        Result(put, {"native": _report(ours, p50)}, _report(etcd, 10))
        for ours, etcd, p50 in ((3000, 4000, 20), (4500, 5000, 12), (2000, 4000, 30))
    ]
    _, line, legend = table([rounds]).splitlines()
    fields = line[len(put.name) :].split()
    # ours 3000 (median of 3000, 4500, 2000), etcd 4000; ratios 0.75, 0.90, 0.50
    assert fields[:5] == ["3000", "native", "4000", "0.75", "0.50-0.90"]
    assert fields[5] == "20.00m"  # ours p50: the median round's
    assert "medians of 3 rounds" in legend


def test_rounds_alternate_which_cluster_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    async def fake_run(workload: str, opts: Options) -> Report:
        order.append(opts.endpoints[0])
        return _report(1, 1)

    monkeypatch.setattr(compare, "run", fake_run)
    todo = rows(0.01)[1:3]  # wider rows: no leader lookup
    results = asyncio.run(compare._run_rows(todo, {"grpcio": ["ours:1"]}, ["etcd:1"], 3))
    assert [len(per_round) for per_round in results] == [3, 3]
    first, second, third = order[0:4], order[4:8], order[8:12]
    assert first == ["ours:1", "etcd:1", "ours:1", "etcd:1"]
    assert second == ["etcd:1", "ours:1", "etcd:1", "ours:1"]
    assert third == first


def test_rounds_must_be_a_positive_whole_number() -> None:
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    assert parser.parse_args(["compare", "--rounds", "3"]).rounds == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["compare", "--rounds", bad])


def test_ours_takes_known_grpc_servers() -> None:
    assert _servers("grpcio,native") == ["grpcio", "native"]
    assert _servers(" native ") == ["native"]
    for bad in ("", "grpcio,rust"):
        with pytest.raises(argparse.ArgumentTypeError, match="one or more of grpcio, native"):
            _servers(bad)


def test_rows_run_with_the_leaders_endpoint_first(tmp_path: Path) -> None:
    """The one-connection row writes to the leader, in our cluster as in etcd's."""
    with cluster("ours", tmp_path) as endpoints:
        ordered = asyncio.run(_leader_first(endpoints))

        async def leads(ep: str) -> bool:
            async with grpc.aio.insecure_channel(ep) as ch:
                st = await pb_grpc.MaintenanceStub(ch).Status(pb.StatusRequest())
                return bool(st.leader == st.header.member_id)

        assert sorted(ordered) == sorted(endpoints)
        assert [asyncio.run(leads(ep)) for ep in ordered] == [True, False, False]
        assert ordered[1:] == [ep for ep in endpoints if ep != ordered[0]]


def test_only_the_one_connection_row_is_sent_to_the_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wider rows keep the configured order: putting the leader first there would hand it
    the extra connection in every cluster (2 of 4 watch streams), which is not what etcd's
    benchmark does."""
    seen: list[tuple[int, list[str]]] = []

    async def fake_run(workload: str, opts: Options) -> Report:
        seen.append((opts.conns, opts.endpoints))
        return _report(1, 1)

    async def leader_last_is_leader(endpoints: list[str]) -> list[str]:
        return [endpoints[-1], *endpoints[:-1]]

    monkeypatch.setattr(compare, "run", fake_run)
    monkeypatch.setattr(compare, "_leader_first", leader_last_is_leader)
    eps = ["a:1", "b:2", "c:3"]
    asyncio.run(compare._run_rows(rows(0.01), {"grpcio": eps}, eps))
    assert seen[0] == (1, ["c:3", "a:1", "b:2"]) and seen[1] == (1, ["c:3", "a:1", "b:2"])
    assert all(order == eps for conns, order in seen[2:]) and {c for c, _ in seen[2:]} != {1}
