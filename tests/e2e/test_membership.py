"""etcdctl 3.4's membership commands (member add/remove/promote/list) against real processes.

Members added here never start (etcdctl lists them as "unstarted", with an empty name);
the last test removes a real follower from a 3-member cluster and keeps writing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.bench.ports import free_ports
from tests.e2e.procs import ROOT, Cluster, member_flags, needs_etcdctl

pytestmark = needs_etcdctl


def _members(c: Cluster, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(c.etcdctl("member", "list", "-w", "json", **kw))[
        "members"
    ]
    return out


def _fails(c: Cluster, *args: str) -> str:
    done = c.run_etcdctl(*args)
    assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr


def test_add_learner_list_and_remove(module_cluster: Cluster) -> None:
    c = module_cluster
    c.settle()
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    out = c.etcdctl("member", "add", "newbie", f"--peer-urls={url}", "--learner")
    assert "added to cluster" in out
    assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out
    learners = [m for m in _members(c) if m.get("isLearner")]
    assert len(learners) == 1
    learner = learners[0]
    assert learner["peerURLs"] == [url] and not learner.get("name")
    hex_id = format(learner["ID"], "x")
    table = c.etcdctl("member", "list")
    row = next(line for line in table.splitlines() if line.split(",")[0].strip() == hex_id)
    assert [f.strip() for f in row.split(",")][1:] == ["unstarted", "", url, "", "true"]

    # the same peer URL again
    assert "etcdserver: peerURL exists" in _fails(c, "member", "add", "again", f"--peer-urls={url}")

    out = c.etcdctl("member", "remove", hex_id)
    assert out.split()[:3] == ["Member", hex_id, "removed"]  # etcdctl pads ids to 16 columns
    assert sorted(m["name"] for m in _members(c)) == ["m0", "m1", "m2"]


def test_member_errors(module_cluster: Cluster) -> None:
    c = module_cluster
    assert "etcdserver: member not found" in _fails(c, "member", "remove", "deadbeef")
    voter = format(_members(c)[0]["ID"], "x")
    err = _fails(c, "member", "promote", voter)
    assert "etcdserver: can only promote a learner member" in err
    assert "in sync" not in err


def test_remove_a_follower_then_writes_continue(cluster: Cluster) -> None:
    c = cluster
    c.settle()
    leader = c.leader(c.members)
    follower = next(m for m in c.members if m is not leader)
    rest = [m for m in c.members if m is not follower]
    ids = {m["name"]: m["ID"] for m in _members(c, endpoints=[leader])}
    out = c.etcdctl("member", "remove", format(ids[follower.name], "x"), endpoints=[leader])
    assert "removed from cluster" in out
    assert sorted(m["name"] for m in _members(c, endpoints=rest)) == sorted(m.name for m in rest)

    # The two remaining members keep a quorum: writes go on, through either of them.
    for i, m in enumerate(rest):
        assert c.etcdctl("put", f"/after-remove/{i}", "v", endpoints=[m]).strip() == "OK"
    got = c.etcdctl("get", "--prefix", "/after-remove/", endpoints=rest).split()
    assert got == ["/after-remove/0", "v", "/after-remove/1", "v"]

    # The removed member learns of its removal and stops (as etcd); not every time, since
    # the leader may stop talking to it before it sees the entry committed.
    try:
        assert follower.wait(10) == 0
    except subprocess.TimeoutExpired:
        pytest.skip("the removed member did not see its removal committed")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and follower.running:
        time.sleep(0.1)


def test_a_member_added_and_started_with_existing_state_joins_and_catches_up(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path)
    for m in c.members:  # a short log: the newcomer gets the leader's backend
        m.args += ["--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5"]
    c.start()
    try:
        c.leader(c.members)
        for i in range(40):
            c.etcdctl("put", f"k{i:02}", f"v{i}")
        c.settle()
        newbie = c.add_member("m3")
        newbie.start()
        for _ in range(100):
            done = c.run_etcdctl("get", "--prefix", "k", "--keys-only", "--consistency=s",
                                 endpoints=[newbie])  # fmt: skip
            if done.returncode == 0 and len(done.stdout.split()) == 40:
                break
            time.sleep(0.1)
        assert done.stdout.split() == [f"k{i:02}" for i in range(40)]
        assert "installed the leader's backend" in newbie.log.read_text()
        # It published itself: a started member with its name and client URL.
        for _ in range(50):
            listed = {m.get("name", ""): m for m in _members(c)}
            if "m3" in listed:
                break
            time.sleep(0.1)
        assert sorted(listed) == ["m0", "m1", "m2", "m3"]
        assert listed["m3"]["clientURLs"] == [f"http://127.0.0.1:{newbie.client}"]
        # A voter now: writes through it, and all four agree.
        c.etcdctl("put", "after-join", "1", endpoints=[newbie])
        c.converged()
        # Restarted, it finds itself in its data dir (the flags still say "existing").
        newbie.kill()
        c.etcdctl("put", "while-down", "1", endpoints=c.members[:3])
        newbie.start()
        for _ in range(100):
            done = c.run_etcdctl("get", "while-down", "--consistency=s", endpoints=[newbie])
            if done.returncode == 0 and done.stdout.split() == ["while-down", "1"]:
                break
            time.sleep(0.1)
        assert done.stdout.split() == ["while-down", "1"]
        c.converged()
    finally:
        c.stop()


def test_joining_with_a_wrong_initial_cluster_fails_with_one_clear_line(
    module_cluster: Cluster, tmp_path: Path
) -> None:
    c = module_cluster
    client, peer = free_ports(2)
    m0 = c.members[0]
    done = subprocess.run(
        [sys.executable, "-m", "cluster",
         *member_flags("x", tmp_path / "x", client, peer,
                       f"m0=http://127.0.0.1:{m0.peer},x=http://127.0.0.1:{peer}"),
         "--initial-cluster-state", "existing"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "member count is unequal" in done.stderr
    assert not (tmp_path / "x" / "member" / "wal").exists()
