"""Member flags: etcd's names, defaults, ETCD_* variables, ids and one-line errors."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, GiB, build_parser, load

THREE = (
    "--initial-cluster",
    "infra1=http://127.0.0.1:2380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380",
)


def test_defaults_are_etcds_and_give_etcds_well_known_ids() -> None:
    c = load([], {})
    assert c.name == "default" and c.data_dir == "default.etcd"
    assert [str(u) for u in c.listen_client_urls] == ["http://localhost:2379"]
    assert (c.heartbeat_interval_ms, c.election_timeout_ms, c.election_ticks) == (100, 1000, 10)
    assert (c.max_request_bytes, c.max_txn_ops, c.quota_backend_bytes) == (1572864, 128, 2 * GiB)
    assert (c.max_snapshots, c.max_wals, c.snapshot_count) == (5, 5, 10000)
    # The ids `etcd` itself reports for a default single-member cluster.
    assert (c.member_id, c.cluster_id) == (0x8E9E05C52164694D, 0xCDF818194E3A8C32)


def test_a_three_member_cluster_from_flags() -> None:
    c = load(
        [
            "--name", "infra2",
            "--initial-advertise-peer-urls", "http://127.0.0.1:22380",
            "--listen-client-urls", "http://127.0.0.1:22379",
            *THREE,
        ],
        {},
    )  # fmt: skip
    assert list(c.initial_cluster) == ["infra1", "infra2", "infra3"]
    assert c.data_dir == "infra2.etcd"
    others = [load(["--name", n, "--initial-advertise-peer-urls", u, *THREE], {}) for n, u in (
        ("infra1", "http://127.0.0.1:2380"), ("infra3", "http://127.0.0.1:32380"))]  # fmt: skip
    assert len({c.member_id, *(o.member_id for o in others)}) == 3
    assert {o.cluster_id for o in others} == {c.cluster_id}


def test_environment_variables_set_flags() -> None:
    c = load([], {"ETCD_NAME": "n1", "ETCD_DATA_DIR": "/tmp/x", "ETCD_INITIAL_CLUSTER":
                  "n1=http://localhost:2380", "ETCD_SNAPSHOT_COUNT": "42"})  # fmt: skip
    assert (c.name, c.data_dir, c.snapshot_count) == ("n1", "/tmp/x", 42)


def test_a_value_given_as_flag_and_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ETCD_NAME.*--name"):
        load(["--name", "a"], {"ETCD_NAME": "b"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen-client-urls", "localhost:2379"], "scheme must be http or https"),
        (["--listen-client-urls", "http://127.0.0.1"], "must have a host and a port"),
        (["--listen-client-urls", "http://127.0.0.1:99999"], "out of range"),
        (["--listen-peer-urls", "http://127.0.0.1:2380/x"], "must not have a path"),
        (["--heartbeat-interval", "abc"], "not a non-negative integer"),
        (["--election-timeout", "300"], "at least 5 times"),
        (["--initial-cluster", "other=http://localhost:2380"], "no member named 'default'"),
        (["--initial-cluster", "default=http://localhost:9999"], "--initial-advertise-peer-urls"),
        (["--initial-cluster", "garbage"], "is not name=peer-url"),
        (
            ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
            "number of revisions",
        ),
        (["--auto-compaction-retention", "soon"], "duration"),
    ],
)
def test_bad_values_fail_with_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(argv, {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_flags_and_bad_choices_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--no-such-flag"], ["--initial-cluster-state", "maybe"]):
        with pytest.raises(SystemExit) as exit_info:
            load(argv, {})
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_variable() -> None:
    text = build_parser().format_help()
    for flag in ("--name", "--data-dir", "--initial-cluster-token", "--max-txn-ops",
                 "--quota-backend-bytes", "--auto-compaction-retention"):  # fmt: skip
        assert flag in text
    assert "ETCD_INITIAL_CLUSTER_STATE" in text


def test_gc_max_pause_flag() -> None:
    assert load([], {}).gc_max_pause_ms == 20
    assert load(["--experimental-gc-max-pause-ms", "0"], {}).gc_max_pause_ms == 0
    assert load([], {"ETCD_EXPERIMENTAL_GC_MAX_PAUSE_MS": "50"}).gc_max_pause_ms == 50
    with pytest.raises(ConfigError, match="not a non-negative integer"):
        load(["--experimental-gc-max-pause-ms", "-1"], {})


def test_grpc_server_flag() -> None:
    assert load([], {}).grpc_server == "grpcio"
    assert load(["--experimental-grpc-server", "native"], {}).grpc_server == "native"
    assert load([], {"ETCD_EXPERIMENTAL_GRPC_SERVER": "native"}).grpc_server == "native"
    with pytest.raises(ConfigError, match="is not one of grpcio, native"):
        load([], {"ETCD_EXPERIMENTAL_GRPC_SERVER": "rust"})


def test_snapshot_catchup_entries_flag() -> None:
    assert load([], {}).snapshot_catchup_entries == 5000
    c = load(["--experimental-snapshot-catchup-entries", "7"], {})
    assert c.snapshot_catchup_entries == 7
