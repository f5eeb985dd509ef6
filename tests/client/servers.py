"""Servers for the client tests: real etcd processes by default.

A *server factory* is a function ``factory(tmp: Path, size: int)`` returning a context manager
that yields a :class:`Servers` (``endpoints``, ``kill(endpoint)``) with ``size`` members ready
to serve, and stops them all on exit. ``etcd_binary`` runs ``/usr/bin/etcd``; ``our_cluster``
runs this project's member (``python -m cluster``). The tests use the factory named by
``CLIENT_TEST_SERVER`` (``etcd``, ``ours`` or ``package.module:function``), default ``etcd``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cluster.bench.ports import free_ports
from tests.e2e.procs import member_flags

ROOT = Path(__file__).resolve().parents[2]
ETCD = os.environ.get("ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


class Servers(Protocol):
    @property
    def endpoints(self) -> list[str]: ...

    def kill(self, endpoint: str) -> None:
        """SIGKILL the member serving ``endpoint``."""


ServerFactory = Callable[[Path, int], AbstractContextManager[Servers]]


@dataclass
class Proc:
    name: str
    client_port: int
    peer_port: int
    log: Path
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, cwd=ROOT, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)  # by PID, never by name
            self.popen.wait(10)


class ProcCluster:
    """Member processes on free loopback ports; ``kill(endpoint)`` SIGKILLs one by PID."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    @property
    def endpoints(self) -> list[str]:
        return [p.endpoint for p in self.procs]

    def proc(self, endpoint: str) -> Proc:
        return next(p for p in self.procs if p.endpoint == endpoint)

    def kill(self, endpoint: str) -> None:
        self.proc(endpoint).kill()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()

    def wait_ready(self, timeout: float = 20) -> None:
        """Until every member answers Status and all agree on one leader."""
        from cluster.client import Client, EtcdError

        deadline = time.monotonic() + timeout
        last: object = None
        with Client(self.endpoints, timeout=1, retry_timeout=0.5) as c:
            while time.monotonic() < deadline:
                for p in self.procs:
                    if p.popen is not None and p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited: {p.log.read_text()[-2000:]}")
                try:
                    leaders = {c.status(ep).leader for ep in self.endpoints}
                    if len(leaders) == 1 and 0 not in leaders:
                        c.get("ready-probe")  # a linearizable read goes through
                        return
                    last = leaders
                except EtcdError as e:
                    last = e
                time.sleep(0.05)
        raise RuntimeError(f"servers not ready after {timeout}s: {last}")


def _etcd_procs(tmp: Path, size: int) -> list[Proc]:
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    procs = []
    for i, name in enumerate(names):
        client, peer = ports[2 * i], ports[2 * i + 1]
        argv = [
            ETCD, "--name", name, "--data-dir", str(tmp / name),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"client-tests-{tmp.name}",
            # quick elections (and a 1 s minimum lease TTL): failover tests stay short
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]  # fmt: skip
        procs.append(Proc(name, client, peer, tmp / f"{name}.log", argv))
    return procs


@contextmanager
def etcd_binary(tmp: Path, size: int) -> Iterator[Servers]:
    """``size`` real etcd members (``$ETCD_BIN``, ``etcd`` on PATH, or /usr/bin/etcd)."""
    if not Path(ETCD).exists():
        raise FileNotFoundError(f"etcd binary not found at {ETCD} (apt-get install etcd-server)")
    cluster = ProcCluster(_etcd_procs(tmp, size))
    try:
        for p in cluster.procs:
            p.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def our_cluster(tmp: Path, size: int) -> Iterator[Servers]:
    """``size`` members of this project (``python -m cluster``) with etcd's flags."""
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    procs = []
    for i, name in enumerate(names):
        client, peer = ports[2 * i], ports[2 * i + 1]
        argv = [
            sys.executable,
            "-m",
            "cluster",
            *member_flags(name, tmp / name, client, peer, initial),
        ]
        procs.append(Proc(name, client, peer, tmp / f"{name}.log", argv))
    cluster = ProcCluster(procs)
    try:
        for p in procs:
            p.start()
        cluster.wait_ready(timeout=30)
        yield cluster
    finally:
        cluster.stop()


FACTORIES: dict[str, ServerFactory] = {"etcd": etcd_binary, "ours": our_cluster}


def selected_names() -> list[str]:
    """The servers the client tests run against: ``CLIENT_TEST_SERVER`` (one name, or
    ``package.module:function``), or by default both real etcd and our cluster."""
    chosen = os.environ.get("CLIENT_TEST_SERVER")
    return [chosen] if chosen else ["etcd", "ours"]


def factory(name: str) -> ServerFactory:
    if name in FACTORIES:
        return FACTORIES[name]
    module, sep, func = name.partition(":")
    if not sep:
        raise ValueError(f"CLIENT_TEST_SERVER={name!r}: etcd, ours or package.module:function")
    found: ServerFactory = getattr(importlib.import_module(module), func)
    return found


def etcd_available() -> bool:
    return Path(ETCD).exists()
