"""etcdctl 3.4's lease commands against three real member processes.

Grant, put with a lease, timetolive (through a follower: forwarded to the leader), list,
keep-alive (a running `etcdctl lease keep-alive` against a follower keeps a lease alive
past its TTL while one without expires, on every member at the same revision) and revoke;
then a keep-alive stream that outlives a SIGKILLed leader.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.e2e.procs import Cluster, Proc, needs_etcdctl, running

pytestmark = needs_etcdctl

NOT_FOUND = "etcdserver: requested lease not found"


def _grant(c: Cluster, ttl: int, endpoints: list[Proc] | None = None) -> str:
    """``lease grant``; the lease id in hex, as etcdctl prints it."""
    out = c.etcdctl("lease", "grant", str(ttl), endpoints=endpoints)
    found = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)\n", out)
    assert found is not None, out
    assert int(found.group(2)) == ttl
    return found.group(1)


def _json(c: Cluster, *args: str, endpoints: list[Proc] | None = None) -> Any:
    return json.loads(c.etcdctl(*args, "-w", "json", endpoints=endpoints))


def _serializable_values(c: Cluster, m: Proc, prefix: str, rev: int = 0) -> list[str]:
    args = ["get", "--prefix", prefix, "--consistency=s"] + ([f"--rev={rev}"] if rev else [])
    resp = _json(c, *args, endpoints=[m])
    return [base64.b64decode(kv["value"]).decode() for kv in resp.get("kvs", [])]


def _fails(c: Cluster, *args: str, endpoints: list[Proc] | None = None) -> str:
    done = c.run_etcdctl(*args, endpoints=endpoints)
    assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr


@contextmanager
def _keep_alive(c: Cluster, lease: str, endpoints: list[Proc]) -> Iterator[subprocess.Popen[str]]:
    """A running ``etcdctl lease keep-alive``; killed by its PID afterwards."""
    proc = subprocess.Popen(
        ["etcdctl", "--endpoints", ",".join(m.endpoint for m in endpoints),
         "lease", "keep-alive", lease],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _wait(cond: Any, timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_grant_put_timetolive_list_and_revoke(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader(c.members)
    follower = next(m for m in c.members if m is not leader)
    lease = _grant(c, 60)
    assert c.etcdctl("put", "--lease", lease, "/lease/b", "2").strip() == "OK"
    assert c.etcdctl("put", f"--lease={lease}", "/lease/a", "1").strip() == "OK"

    out = c.etcdctl("lease", "timetolive", lease, "--keys", endpoints=[follower])
    found = re.fullmatch(
        rf"lease {lease} granted with TTL\(60s\), remaining\((\d+)s\), "
        r"attached keys\(\[/lease/a /lease/b\]\)\n",
        out,
    )
    assert found is not None, out
    assert 55 <= int(found.group(1)) <= 60
    resp = _json(c, "lease", "timetolive", lease, endpoints=[follower])
    assert (resp["id"], resp["granted-ttl"]) == (int(lease, 16), 60)

    other = _grant(c, 120, endpoints=[follower])
    listed = c.etcdctl("lease", "list", endpoints=[follower]).splitlines()
    assert listed[0] == "found 2 leases" and sorted(listed[1:]) == sorted([lease, other])
    kept = c.etcdctl("lease", "keep-alive", "--once", other, endpoints=[follower])
    assert kept == f"lease {other} keepalived with TTL(120)\n"

    rev = int(_json(c, "get", "/lease/a")["header"]["revision"])
    assert c.etcdctl("lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert c.etcdctl("get", "--prefix", "/lease/") == ""
    after = int(_json(c, "get", "/lease/a")["header"]["revision"])
    assert after == rev + 1  # both keys deleted at one revision
    assert c.etcdctl("lease", "timetolive", lease) == f"lease {lease} already expired\n"
    assert NOT_FOUND in _fails(c, "lease", "revoke", lease)
    assert NOT_FOUND in _fails(c, "put", "--lease=1234abcd", "/lease/x", "v")
    assert "etcdserver: too large lease TTL" in _fails(c, "lease", "grant", "9000000001")
    assert c.etcdctl("lease", "list").splitlines() == ["found 1 leases", other]
    c.converged()


def test_keep_alive_through_a_follower_while_another_lease_expires(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader(c.members)
    follower = next(m for m in c.members if m is not leader)
    kept = _grant(c, 3)
    gone = _grant(c, 3)
    c.etcdctl("put", "--lease", kept, "/kept/k", "1")
    c.etcdctl("put", "--lease", gone, "/gone/a", "1")
    c.etcdctl("put", "--lease", gone, "/gone/b", "2")
    before = int(_json(c, "get", "/gone/a")["header"]["revision"])

    with _keep_alive(c, kept, [follower]) as ka:
        time.sleep(7)  # more than twice the TTL
        assert ka.poll() is None, "etcdctl lease keep-alive exited"
        for m in c.members:
            assert _serializable_values(c, m, "/kept/") == ["1"], m.name
        # the expired lease was revoked by the leader: on every member, at one revision
        _wait(lambda: all(_serializable_values(c, m, "/gone/") == [] for m in c.members), 10)
        revision = c.converged()
        assert revision == before + 1
        for m in c.members:
            assert _serializable_values(c, m, "/gone/", rev=before) == ["1", "2"], m.name
            assert _serializable_values(c, m, "/gone/", rev=revision) == [], m.name
        out = c.etcdctl("lease", "timetolive", kept, endpoints=[follower])
        assert re.fullmatch(rf"lease {kept} granted with TTL\(3s\), remaining\([123]s\)\n", out)
        os.kill(ka.pid, signal.SIGKILL)
        ka.wait(10)
        assert ka.stdout is not None
        lines = ka.stdout.read().splitlines()
    assert len(lines) >= 5 and set(lines) == {f"lease {kept} keepalived with TTL(3)"}, lines

    # Without its keep-alives the lease expires: the key goes, everywhere at one revision.
    _wait(lambda: all(_serializable_values(c, m, "/kept/") == [] for m in c.members), 10)
    assert c.converged() == before + 2
    assert c.etcdctl("lease", "timetolive", kept) == f"lease {kept} already expired\n"


def test_a_keep_alive_stream_outlives_a_killed_leader(tmp_path: Any) -> None:
    with running(tmp_path) as c:
        leader = c.leader(c.members)
        lease = _grant(c, 6)
        c.etcdctl("put", "--lease", lease, "/ka/k", "v")
        with _keep_alive(c, lease, c.members) as ka:
            time.sleep(2)
            leader.signal(signal.SIGKILL)
            leader.wait(10)
            rest = [m for m in c.members if m is not leader]
            new = c.leader(rest)
            assert new is not leader
            time.sleep(10)  # well past the TTL, counted from the kill
            assert ka.poll() is None, "etcdctl lease keep-alive exited"
            for m in rest:
                assert _serializable_values(c, m, "/ka/") == ["v"], m.name
            out = c.etcdctl("lease", "timetolive", lease, endpoints=rest)
            found = re.fullmatch(
                rf"lease {lease} granted with TTL\(6s\), remaining\((\d)s\)\n", out
            )
            assert found is not None and int(found.group(1)) >= 1, out
        c.converged(rest)
