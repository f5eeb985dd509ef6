"""The loopback ports benches and tests start members on (cluster/bench/ports.py)."""

from __future__ import annotations

import socket

import pytest

from cluster.bench import ports


def test_ports_come_from_below_the_ephemeral_range_and_are_free() -> None:
    low, _ = ports.ephemeral_range()
    chosen = ports.free_ports(6)
    assert len(set(chosen)) == 6
    assert all(ports.LOWEST <= p < low for p in chosen)
    for p in chosen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    block = ports._worker_block()
    assert block is not None
    base = next(p for p in block if all(map(ports._is_free, range(p, p + 4))))
    monkeypatch.setattr(ports, "_cursor", None)
    monkeypatch.setattr(ports, "_worker_block", lambda: range(base, base + 4))
    monkeypatch.setattr("random.randrange", lambda n: 0)
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", base + 1))
        held.listen()
        assert ports.free_ports(3) == [base, base + 2, base + 3]
        with pytest.raises(OSError, match="fewer than 4 free ports"):
            ports.free_ports(4)


def test_successive_calls_hand_out_different_ports() -> None:
    first, second = ports.free_ports(4), ports.free_ports(4)
    assert not set(first) & set(second)


def test_xdist_workers_get_disjoint_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    seen = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        block = ports._worker_block()
        assert block is not None
        seen.append(set(block))
    assert all(len(b) > 1_000 for b in seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    low, _ = ports.ephemeral_range()
    assert max(max(b) for b in seen) < low


def test_a_range_too_small_to_split_is_refused() -> None:
    with pytest.raises(ValueError, match="no block 5 of 5000"):
        ports.block(5, 5000)


def test_an_ephemeral_range_that_leaves_no_room_falls_back_to_the_kernels_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    assert ports._worker_block() is None
    chosen = ports.free_ports(3)
    assert len(set(chosen)) == 3 and all(0 < p < 65536 for p in chosen)


def test_the_roomier_side_of_the_ephemeral_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (10_500, 40_000))
    assert ports.block(0, 1) == range(40_001, 65_536)
