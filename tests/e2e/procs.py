"""Real member processes (`python -m cluster`) on free loopback ports, for the e2e tests.

`Cluster` starts members with etcd's flags; `Cluster.etcdctl` drives them with the real
etcdctl (v3 API). `running()` starts one, waits until it is ready and kills whatever is still
running afterwards; the fixtures in conftest.py use it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.bench.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]


needs_etcdctl = pytest.mark.etcdctl
"""``pytestmark = needs_etcdctl``: skipped without etcdctl outside CI (tests/conftest.py)."""


@dataclass
class Proc:
    name: str
    client: int
    peer: int
    data_dir: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # ETCD_* settings besides the flags

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "cluster", *self.args],
                cwd=ROOT,
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
            )

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)

    @property
    def exited(self) -> bool:
        """Started, and no longer running."""
        return self.popen is not None and self.popen.poll() is not None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"


def member_flags(name: str, data_dir: Path, client: int, peer: int, initial: str) -> list[str]:
    """``python -m cluster`` flags for a member on 127.0.0.1 ``client`` and ``peer``."""
    return [
        "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", initial,
    ]  # fmt: skip


class Cluster:
    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.led_at: float | None = None  # when a leader was first seen
        ports = free_ports(2 * size)
        self.members = [
            Proc(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"m{i}", tmp / f"m{i}.log")
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in self.members)
        for m in self.members:
            m.args = member_flags(m.name, m.data_dir, m.client, m.peer, initial)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> None:
        for m in self.members:
            m.start()
        self.led_at = None

    def settle(self) -> None:
        """Wait until the members' peer streams have been up for etcd's 5 s HealthInterval
        (counted from the first leader seen): before that, the strict reconfiguration check
        refuses MemberAdd and MemberRemove ("etcdserver: unhealthy cluster")."""
        if self.led_at is None:
            self.leader(self.members)
        assert self.led_at is not None
        time.sleep(max(0.0, self.led_at + 6 - time.monotonic()))

    def stop(self) -> None:
        for m in self.members:
            m.kill()

    def run_etcdctl(
        self,
        *args: str,
        endpoints: list[Proc] | None = None,
        stdin: str = "",
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (v3 API) against ``endpoints`` (all members by default); never raises."""
        eps = ",".join(m.endpoint for m in (endpoints or self.members))
        return subprocess.run(
            ["etcdctl", "--endpoints", eps, "--command-timeout=8s", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "ETCDCTL_API": "3"}, check=False,
        )  # fmt: skip

    def etcdctl(self, *args: str, endpoints: list[Proc] | None = None, stdin: str = "") -> str:
        """etcdctl's stdout; an AssertionError with its stderr when it exits non-zero."""
        done = self.run_etcdctl(*args, endpoints=endpoints, stdin=stdin)
        if done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def add_member(self, name: str, *, learner: bool = False) -> Proc:
        """``etcdctl member add``; the new member (not started) is configured as etcdctl
        says, from the ETCD_* lines it prints, and appended to ``members``."""
        client, peer = free_ports(2)
        tmp = self.members[0].data_dir.parent
        proc = Proc(name, client, peer, tmp / name, tmp / f"{name}.log")
        flags = ["--learner"] if learner else []
        out = self.etcdctl("member", "add", name, f"--peer-urls=http://127.0.0.1:{peer}", *flags)
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.startswith("ETCD_"):
                proc.env[key] = value.strip('"')
        assert proc.env["ETCD_INITIAL_CLUSTER_STATE"] == "existing", out
        proc.args = [
            "--data-dir", str(proc.data_dir),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        ]  # fmt: skip
        self.members.append(proc)
        return proc

    def converged(self, members: list[Proc] | None = None, timeout: float = 10) -> int:
        """Wait until ``members`` (default: the running ones) report the same revision and
        applied index, then check HashKV agrees at that revision; returns the revision."""
        members = members or [m for m in self.members if m.running]
        deadline = time.monotonic() + timeout
        while True:
            views = set()
            for status in self.statuses(members):
                st = status["Status"]
                assert isinstance(st, dict)
                views.add((int(st["header"]["revision"]), int(st["raftAppliedIndex"])))
            if len(views) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(views) == 1, f"members did not converge: {views}"
        revision = views.pop()[0]
        out = self.etcdctl("endpoint", "hashkv", "--rev", str(revision), "-w", "json",
                           endpoints=members)  # fmt: skip
        hashes = json.loads(out)
        assert len({h["HashKV"]["hash"] for h in hashes}) == 1, hashes
        return revision

    def statuses(
        self, members: list[Proc], extra: tuple[str, ...] | list[str] = ()
    ) -> list[dict[str, object]]:
        out: list[dict[str, object]] = json.loads(
            self.etcdctl(*extra, "endpoint", "status", "-w", "json", endpoints=members)
        )
        return out

    def leader(
        self, members: list[Proc], extra: tuple[str, ...] | list[str] = (), timeout: float = 60
    ) -> Proc:
        """The member that leads, once all of ``members`` agree (``extra``: etcdctl flags).

        Fails at once, with its log, if one of ``members`` has exited: etcdctl would only
        time out against it, over and over."""
        deadline = time.monotonic() + timeout
        problem = "no status yet"
        while time.monotonic() < deadline:
            if exited := [m for m in members if m.exited]:
                raise AssertionError(
                    "".join(
                        f"{m.name} exited (code {m.popen and m.popen.returncode}); "
                        f"its log ends:\n{m.log_tail()}\n"
                        for m in exited
                    )
                )
            try:
                for m, s in zip(members, self.statuses(members, extra), strict=True):
                    st = s["Status"]
                    assert isinstance(st, dict)
                    if st.get("leader") and st.get("leader") == st["header"]["member_id"]:
                        if self.led_at is None:
                            self.led_at = time.monotonic()
                        return m
                problem = "no member says it leads"
            except AssertionError as e:
                problem = str(e)
            time.sleep(0.1)
        raise AssertionError(f"no leader within {timeout} s; last: {problem}")


class BackgroundEtcdctl:
    """A long-running etcdctl (v3 API: watch, lock, elect, lease keep-alive): its stdout lines
    queue up as a thread reads them, so a test can wait for a line or check that none comes.
    ``kill`` (by its own PID) ends it; ``Cluster.background`` kills what is left at exit."""

    def __init__(self, args: list[str], endpoints: list[Proc]) -> None:
        eps = ",".join(m.endpoint for m in endpoints)
        self.popen = subprocess.Popen(
            ["etcdctl", "--endpoints", eps, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        self.queue: queue.Queue[str | None] = queue.Queue()  # None: the output ended
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def line(self, timeout: float = 15) -> str:
        try:
            got = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s: {self.describe()}") from None
        if got is None:
            raise AssertionError(f"etcdctl ended: {self.describe()}")
        return got

    def lines(self, n: int, timeout: float = 15) -> list[str]:
        """The next ``n`` lines, all within ``timeout``."""
        deadline = time.monotonic() + timeout
        return [self.line(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def quiet(self, seconds: float = 0.5) -> bool:
        """Nothing is printed for ``seconds`` (else AssertionError); whether it still runs."""
        try:
            got = self.queue.get(timeout=seconds)
        except queue.Empty:
            return self.popen.poll() is None
        raise AssertionError(f"unexpected output {got!r}: {self.describe()}")

    def stderr(self) -> str:
        """Its standard error, once it has exited (waits up to 5 s)."""
        self.popen.wait(5)
        assert self.popen.stderr is not None
        return self.popen.stderr.read()

    def describe(self) -> str:
        code = self.popen.poll()
        return f"exit code {code}, stderr {self.stderr()!r}" if code is not None else "running"

    def signal(self, sig: int) -> None:
        os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 15) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._reader.join(10)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def background(*args: str, endpoints: list[Proc]) -> Iterator[BackgroundEtcdctl]:
    """``etcdctl <args>`` running in the background for the ``with`` block; killed after."""
    bg = BackgroundEtcdctl(list(args), endpoints)
    try:
        yield bg
    finally:
        bg.kill()


@contextmanager
def running(
    tmp: Path,
    ready: Callable[[Cluster], object] | None = None,
    size: int = 3,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """A started cluster; ``ready`` (default: a leader seen through etcdctl) must pass first.
    ``env``: ETCD_* settings for every member."""
    c = Cluster(tmp, size)
    for m in c.members:
        m.env.update(env or {})
    c.start()
    try:
        (ready or (lambda c: c.leader(c.members)))(c)
        yield c
    finally:
        c.stop()
