"""Real member processes on free loopback ports (procs.py), driven by the real etcdctl."""

from __future__ import annotations

import signal
import time

from tests.e2e.procs import Cluster, needs_etcdctl

pytestmark = needs_etcdctl


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
    cluster.converged()  # the same revision, applied index and HashKV on all three


def test_follower_killed_writes_go_on_and_it_catches_up(cluster: Cluster) -> None:
    leader = cluster.leader(cluster.members)
    follower = next(m for m in cluster.members if m is not leader)
    follower.signal(signal.SIGKILL)
    follower.wait()
    rest = [m for m in cluster.members if m is not follower]
    acked = []
    for i in range(20):
        cluster.etcdctl("put", f"w{i:02}", str(i), endpoints=rest)
        acked.append(f"w{i:02}")
    follower.start()
    for _ in range(50):
        done = cluster.run_etcdctl("get", "--prefix", "w", "--keys-only", "--consistency=s",
                                   endpoints=[follower])  # fmt: skip
        if done.returncode == 0 and done.stdout.split() == acked:
            break
        time.sleep(0.2)
    assert done.stdout.split() == acked  # no acknowledged write is missing
    cluster.converged()


def test_sigterm_stops_a_member_cleanly(cluster: Cluster) -> None:
    member = cluster.members[0]
    member.signal(signal.SIGTERM)
    assert member.wait() == 0
