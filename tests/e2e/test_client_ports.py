"""A member whose client port cannot be bound says so in one line and exits 1, on either
client gRPC server (``--experimental-grpc-server``)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import GRPC_SERVERS
from tests.e2e.procs import ROOT, free_ports, member_flags


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
