"""A member whose client port cannot be bound says so in one line and exits 1, on either
client gRPC server (``--experimental-grpc-server``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.bench.ports import free_ports
from cluster.config import GRPC_SERVERS
from tests.e2e.procs import ROOT, Cluster, member_flags, needs_etcdctl


@pytest.mark.parametrize("server", GRPC_SERVERS)
def test_a_client_port_in_use_fails_with_one_clear_line(tmp_path: Path, server: str) -> None:
    client, peer = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", client))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "cluster",
             *member_flags("x", tmp_path / "x", client, peer, f"x=http://127.0.0.1:{peer}"),
             "--experimental-grpc-server", server, "--log-level", "error"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # the last line is ours (grpc-core logs its own reason, "Address already in use", first)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen for clients on http://127.0.0.1:{client}: ")


@needs_etcdctl
def test_waiting_for_a_leader_fails_at_once_with_the_log_of_a_member_that_exited(
    tmp_path: Path,
) -> None:
    """The harness's wait for a leader does not spin for minutes on a member that is gone."""
    c = Cluster(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", c.members[1].client))
        taken.listen()
        c.start()
        try:
            started = time.monotonic()
            with pytest.raises(AssertionError) as failed:
                c.leader(c.members)
            assert time.monotonic() - started < 30
        finally:
            c.stop()
    message = str(failed.value)
    assert message.startswith("m1 exited (code 1); its log ends:"), message
    assert f"error: cannot listen for clients on http://127.0.0.1:{c.members[1].client}" in message
