"""Real member processes on free loopback ports, driven by the real etcdctl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.etcdctl,
    pytest.mark.skipif(
        shutil.which("etcdctl") is None and os.environ.get("CI") != "true",
        reason="etcdctl is not installed (apt-get install etcd-client)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Proc:
    name: str
    client: int
    peer: int
    data_dir: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cluster", *self.args], cwd=ROOT, stdout=out, stderr=out
        )

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)


class Cluster:
    def __init__(self, tmp: Path, size: int = 3) -> None:
        ports = _free_ports(2 * size)
        self.members = [
            Proc(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"m{i}", tmp / f"m{i}.log")
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in self.members)
        for m in self.members:
            m.args = [
                "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"http://127.0.0.1:{m.client}",
                "--advertise-client-urls", f"http://127.0.0.1:{m.client}",
                "--listen-peer-urls", f"http://127.0.0.1:{m.peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer}",
                "--initial-cluster", initial,
            ]  # fmt: skip

    def etcdctl(self, *args: str, endpoints: list[Proc] | None = None, stdin: str = "") -> str:
        eps = ",".join(m.endpoint for m in (endpoints or self.members))
        done = subprocess.run(
            ["etcdctl", "--endpoints", eps, "--command-timeout=8s", *args],
            input=stdin.encode(), capture_output=True, timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"}, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode()

    def statuses(self, members: list[Proc]) -> list[dict[str, object]]:
        return json.loads(self.etcdctl("endpoint", "status", "-w", "json", endpoints=members))

    def leader(self, members: list[Proc]) -> Proc:
        for _ in range(100):
            try:
                for m, s in zip(members, self.statuses(members), strict=True):
                    st = s["Status"]
                    assert isinstance(st, dict)
                    if st.get("leader") and st.get("leader") == st["header"]["member_id"]:
                        return m
            except AssertionError:
                pass
            time.sleep(0.1)
        raise AssertionError("no leader")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    for m in c.members:
        m.start()
    try:
        c.leader(c.members)
        yield c
    finally:
        for m in c.members:
            if m.popen is not None and m.popen.poll() is None:
                m.popen.kill()
                m.popen.wait(10)


def test_put_get_delete_and_status_through_every_member(cluster: Cluster) -> None:
    a, b, c = cluster.members
    assert cluster.etcdctl("put", "/cfg/a", "1", endpoints=[a]).strip() == "OK"
    assert cluster.etcdctl("put", "/cfg/b", "2", endpoints=[b]).strip() == "OK"  # forwarded
    assert cluster.etcdctl("get", "--prefix", "/cfg/", endpoints=[c]).split() == [
        "/cfg/a", "1", "/cfg/b", "2",
    ]  # fmt: skip
    assert cluster.etcdctl("del", "--prev-kv", "/cfg/a", endpoints=[c]).split() == [
        "1", "/cfg/a", "1",
    ]  # fmt: skip
    statuses = cluster.statuses(cluster.members)
    assert len({s["Status"]["header"]["cluster_id"] for s in statuses}) == 1  # type: ignore[index]
    assert len({s["Status"]["raftIndex"] for s in statuses}) <= 2  # type: ignore[index]


def test_leader_killed_then_restarted_keeps_every_write(cluster: Cluster) -> None:
    for i in range(5):
        cluster.etcdctl("put", f"k{i}", f"v{i}")
    leader = cluster.leader(cluster.members)
    leader.signal(signal.SIGKILL)
    leader.wait()
    rest = [m for m in cluster.members if m is not leader]
    start = time.monotonic()
    cluster.leader(rest)
    assert time.monotonic() - start < 5
    cluster.etcdctl("put", "after", "kill", endpoints=rest)
    leader.start()  # restart from its data dir
    for _ in range(50):
        out = cluster.etcdctl("get", "--prefix", "", "--keys-only", "--consistency=s",
                              endpoints=[leader]).split()  # fmt: skip
        if "after" in out:
            break
        time.sleep(0.2)
    assert out == ["after", "k0", "k1", "k2", "k3", "k4"]


def test_sigterm_stops_a_member_cleanly(cluster: Cluster) -> None:
    member = cluster.members[0]
    member.signal(signal.SIGTERM)
    assert member.wait() == 0
