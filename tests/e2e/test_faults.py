"""Faults with real member processes: a follower far behind, a frozen leader."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.procs import Cluster, Proc

pytestmark = pytest.mark.etcdctl


def _small_snapshots(tmp: Path) -> Cluster:
    c = Cluster(tmp)
    for m in c.members:
        m.args += ["--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5"]
    c.start()
    c.leader(c.members)
    return c


def _revision_and_applied(c: Cluster, members: list[Proc]) -> tuple[int, int]:
    status = c.statuses(members)[0]["Status"]
    assert isinstance(status, dict)
    return int(status["header"]["revision"]), int(status["raftAppliedIndex"])


def test_a_follower_behind_the_compacted_log_gets_the_leaders_backend(tmp_path: Path) -> None:
    c = _small_snapshots(tmp_path)
    try:
        c.etcdctl("put", "before", "1")
        leader = c.leader(c.members)
        follower = next(m for m in c.members if m is not leader)
        follower.signal(signal.SIGKILL)
        follower.wait()
        rest = [m for m in c.members if m is not follower]
        for i in range(60):  # several snapshots; the leader keeps 5 entries behind each
            c.etcdctl("put", f"k{i:02}", f"v{i}", endpoints=rest)
        snaps = list((leader.data_dir / "member" / "snap").glob("*.snap"))
        assert snaps, "the leader never took a snapshot"
        follower.start()
        for _ in range(100):
            keys = c.etcdctl("get", "--prefix", "k", "--keys-only", "--consistency=s",
                             endpoints=[follower]).split()  # fmt: skip
            if len(keys) == 60:
                break
            time.sleep(0.1)
        assert keys == [f"k{i:02}" for i in range(60)]
        assert "installed the leader's backend" in follower.log.read_text()
        # All members agree on the revision and what they applied.
        for _ in range(50):
            views = {_revision_and_applied(c, [m]) for m in c.members}
            if len(views) == 1:
                break
            time.sleep(0.1)
        assert len(views) == 1
        # And the same key-value history: HashKV agrees at that revision.
        revision = views.pop()[0]
        hashes = json.loads(c.etcdctl("endpoint", "hashkv", "--rev", str(revision), "-w", "json"))
        assert len({h["HashKV"]["hash"] for h in hashes}) == 1, hashes
        c.etcdctl("put", "after", "2", endpoints=[follower])  # and it keeps working
    finally:
        c.stop()


def test_a_frozen_leader_acknowledges_nothing_stale_after_it_resumes(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.start()
    try:
        leader = c.leader(c.members)
        c.etcdctl("put", "x", "1")
        leader.signal(signal.SIGSTOP)
        rest = [m for m in c.members if m is not leader]
        time.sleep(2.5)  # past the election timeout (1 s)
        c.leader(rest)
        c.etcdctl("put", "x", "2", endpoints=rest)
        leader.signal(signal.SIGCONT)
        # The old leader must not serve the stale value in a linearizable read.
        done = c.run_etcdctl("get", "x", "--print-value-only", endpoints=[leader])
        assert done.returncode != 0 or done.stdout.split() == ["2"], done.stdout
        for _ in range(50):
            done = c.run_etcdctl("get", "x", "--print-value-only", endpoints=[leader])
            if done.returncode == 0:
                break
            time.sleep(0.1)
        assert done.stdout.split() == ["2"]
        c.converged()
    finally:
        c.stop()


def test_a_nospace_alarm_stops_writes_on_every_member(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    for m in c.members:
        m.args += ["--quota-backend-bytes", str(512 * 1024)]
    c.start()
    try:
        c.leader(c.members)
        first = c.members[0]
        for i in range(40):
            done = c.run_etcdctl("put", f"k{i:02}", "v" * 64 * 1024, endpoints=[first])
            if done.returncode != 0:
                break
        assert "etcdserver: mvcc: database space exceeded" in done.stderr
        for _ in range(50):
            alarms = c.etcdctl("alarm", "list").splitlines()
            if alarms:
                break
            time.sleep(0.1)
        assert [a.split()[1] for a in alarms] == ["alarm:NOSPACE"], alarms
        # Every member applied the alarm: none of them takes a write now, however small.
        for m in c.members:
            done = c.run_etcdctl("put", "small", "1", endpoints=[m])
            assert "etcdserver: mvcc: database space exceeded" in done.stderr, m.name
            status = c.statuses([m])[0]["Status"]
            assert isinstance(status, dict)
            # (a member whose own backend is past the quota raises its own alarm too)
            assert {e.split()[1] for e in status["errors"]} == {"alarm:NOSPACE"}
        c.converged()
    finally:
        c.stop()
