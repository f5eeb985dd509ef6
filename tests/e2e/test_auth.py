"""Authentication and role-based access with the real etcdctl against 3 member processes.

etcd's rules, including the places where etcd itself once leaked (its CVEs): nested txn
operations, watches wider than the grant, membership / alarm / compaction calls by
non-root users, and LeaseTimeToLive revealing keys the caller cannot read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import Cluster, background, needs_etcdctl, running

pytestmark = needs_etcdctl

ROOT = ["--user", "root:root-pw-1"]
ALICE = ["--user", "alice:alice-pw-1"]
DENIED = "etcdserver: permission denied"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster with auth enabled: root, and alice who may only read under /app/."""
    with running(tmp_path_factory.mktemp("auth")) as c:
        c.etcdctl("user", "add", "root", "--new-user-password=root-pw-1")
        c.etcdctl("role", "add", "root")
        c.etcdctl("user", "grant-role", "root", "root")
        c.etcdctl("put", "/app/config", "v1")
        c.etcdctl("put", "/other/secret", "s")
        c.etcdctl("user", "add", "alice", "--new-user-password=alice-pw-1")
        c.etcdctl("role", "add", "reader")
        c.etcdctl("role", "grant-permission", "reader", "read", "/app/", "--prefix=true")
        c.etcdctl("user", "grant-role", "alice", "reader")
        assert "Authentication Enabled" in c.etcdctl("auth", "enable")
        yield c


def _fails(c: Cluster, *args: str, stdin: str = "") -> str:
    done = c.run_etcdctl(*args, stdin=stdin)
    assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr


def test_who_may_do_what(secured: Cluster) -> None:
    c = secured
    assert "etcdserver: user name is empty" in _fails(c, "get", "/app/config")
    assert "etcdserver: authentication failed, invalid user ID or password" in _fails(
        c, "--user", "alice:wrong", "get", "/app/config"
    )
    assert c.etcdctl(*ROOT, "put", "/app/config", "v2").strip() == "OK"
    assert c.etcdctl(*ALICE, "get", "/app/config", "--print-value-only").strip() == "v2"
    assert c.etcdctl(*ALICE, "get", "--prefix", "/app/", "--keys-only").split() == ["/app/config"]
    # outside the grant, wider than the grant, or a write
    assert DENIED in _fails(c, *ALICE, "get", "/other/secret")
    assert DENIED in _fails(c, *ALICE, "get", "--prefix", "/")
    assert DENIED in _fails(c, *ALICE, "put", "/app/config", "mine")
    # a txn whose nested operation reaches outside the grant
    txn = 'value("/app/config") = "v2"\n\nget /other/secret\n\n\n'
    assert DENIED in _fails(c, *ALICE, "txn", stdin=txn)
    # root-only calls
    for args in (["member", "list"], ["alarm", "list"], ["compaction", "1"], ["user", "list"]):
        assert DENIED in _fails(c, *ALICE, *args), args
    assert "root" in c.etcdctl(*ROOT, "user", "list").split()


def test_a_watch_wider_than_the_grant_is_canceled(secured: Cluster) -> None:
    c = secured
    with background(*ALICE, "watch", "--prefix", "/", endpoints=c.members) as w:
        assert w.wait(15) != 0
        assert DENIED in w.stderr()
    with background(*ALICE, "watch", "--prefix", "/app/", endpoints=c.members) as w:
        assert w.quiet(1.0)
        c.etcdctl(*ROOT, "put", "/app/watched", "1")
        assert w.lines(3) == ["PUT", "/app/watched", "1"]


def test_time_to_live_does_not_reveal_unreadable_keys(secured: Cluster) -> None:
    c = secured
    lease = c.etcdctl(*ROOT, "lease", "grant", "60").split()[1]
    c.etcdctl(*ROOT, "put", "--lease", lease, "/other/leased", "x")
    assert DENIED in _fails(c, *ALICE, "lease", "timetolive", lease, "--keys")
    assert "/other/leased" in c.etcdctl(*ROOT, "lease", "timetolive", lease, "--keys")
    assert DENIED in _fails(c, *ALICE, "lease", "revoke", lease)


def test_passwords_never_reach_the_disk(secured: Cluster) -> None:
    for m in secured.members:
        for path in Path(m.data_dir).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert b"root-pw-1" not in data and b"alice-pw-1" not in data, path
