"""``python -m cluster snapshot save|status|restore`` against real member processes.

A 3-member cluster gets keys with history, a deletion, a compaction and a lease; it is
saved with our ``snapshot save`` and with the real ``etcdctl snapshot save``. Both files
report what ``etcdctl snapshot status`` reports. etcdctl's file is restored into 3 new
data dirs (new names, ports and token) and ours into 1; the new clusters serve every key
with the same create/mod revisions and versions, the same revision and HashKV, keep the
compaction and the lease, have new ids, and take writes. A snapshot of a real etcd
restores too.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT, Cluster, needs_etcdctl, running

pytestmark = needs_etcdctl

TOKEN = "restored-cluster"


def cluster_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m cluster <args>``; never raises unless ``check`` and it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "cluster", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"python -m cluster {' '.join(args)} failed: {done.stderr}")
    return done


def etcdctl_offline(*args: str) -> str:
    """etcdctl commands that need no endpoint (snapshot status / restore)."""
    done = subprocess.run(
        ["etcdctl", *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(c: Cluster) -> tuple[str, int]:
    """History, a deletion, a compaction, a leased key; (lease id in hex, compacted rev)."""
    for i in range(40):
        c.etcdctl("put", f"/k/{i % 12:02d}", f"value {i}")
    c.etcdctl("del", "/k/05")
    out = c.etcdctl("put", "/k/00", "compact here", "-w", "json")
    compacted = int(json.loads(out)["header"]["revision"])
    c.etcdctl("compact", str(compacted))
    lease = c.etcdctl("lease", "grant", "600").split()[1]
    c.etcdctl("put", "/leased", "by a lease", f"--lease={lease}")
    for i in range(5):
        c.etcdctl("put", f"/after/{i}", "x" * 100)
    return lease, compacted


def everything(c: Cluster) -> tuple[int, list[dict[str, object]]]:
    out = json.loads(c.etcdctl("get", "", "--prefix", "-w", "json"))
    return int(out["header"]["revision"]), out["kvs"]


def restored_cluster(tmp: Path, snap: Path, size: int) -> Cluster:
    """A new cluster (new names, ports, token) whose data dirs are restored from ``snap``."""
    tmp.mkdir()
    c = Cluster(tmp, size)
    initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in c.members)
    for m in c.members:
        m.args += ["--initial-cluster-token", TOKEN]
        done = cluster_cmd(
            "snapshot", "restore", str(snap), "--data-dir", str(m.data_dir), "--name", m.name,
            "--initial-cluster", initial, "--initial-cluster-token", TOKEN,
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer}",
        )  # fmt: skip
        assert done.stdout.startswith(f"restored snapshot {snap}"), done.stdout
        assert done.stderr == ""  # no progress bar without a terminal
    return c


def hashkv(c: Cluster, revision: int) -> set[int]:
    out = json.loads(c.etcdctl("endpoint", "hashkv", "--rev", str(revision), "-w", "json"))
    return {int(h["HashKV"]["hash"]) for h in out}


def check_restored(
    c: Cluster,
    revision: int,
    kvs: list[dict[str, object]],
    hashes: set[int],
    lease: str,
    compacted: int,
    source_cluster_id: int,
) -> None:
    c.start()
    c.leader(c.members)
    assert everything(c) == (revision, kvs)
    assert c.converged() == revision  # every member the same revision, HashKV agrees
    assert hashkv(c, revision) == hashes  # ... and equal to the source's
    ids = {int(s["Status"]["header"]["cluster_id"]) for s in c.statuses(c.members)}  # type: ignore[index]
    assert len(ids) == 1 and ids != {source_cluster_id}
    members = json.loads(c.etcdctl("member", "list", "-w", "json"))["members"]
    assert sorted(m["name"] for m in members) == sorted(m.name for m in c.members)
    done = c.run_etcdctl("get", "/k/00", "--rev", str(compacted - 1))
    assert "required revision has been compacted" in done.stderr
    assert c.etcdctl("get", "/k/00", "--rev", str(compacted), "--print-value-only") == (
        "compact here\n"
    )
    ttl = c.etcdctl("lease", "timetolive", lease, "--keys")
    assert "remaining" in ttl and "/leased" in ttl, ttl
    out = json.loads(c.etcdctl("put", "/new", "1", "-w", "json"))
    assert int(out["header"]["revision"]) == revision + 1
    assert c.converged() == revision + 1


def test_save_status_and_restore_a_three_member_cluster(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with running(tmp_path / "source") as src:
        lease, compacted = fill(src)
        revision = src.converged()
        rev, kvs = everything(src)
        assert rev == revision
        hashes = hashkv(src, revision)
        status = src.statuses(src.members[:1])[0]["Status"]
        source_cluster_id = int(status["header"]["cluster_id"])  # type: ignore[index]
        ours, theirs = tmp_path / "ours.db", tmp_path / "etcdctl.db"
        done = cluster_cmd("snapshot", "save", str(ours), "--endpoints", ",".join(src.endpoints))
        assert done.stdout == f"Snapshot saved at {ours}\n"
        assert not Path(f"{ours}.part").exists()
        out = src.etcdctl("snapshot", "save", str(theirs), endpoints=src.members[1:2])
        assert out == f"Snapshot saved at {theirs}\n"

    for snap in (ours, theirs):
        for write_out in ("simple", "json", "table", "fields"):
            expected = etcdctl_offline("snapshot", "status", str(snap), "-w", write_out)
            got = cluster_cmd("snapshot", "status", str(snap), "-w", write_out).stdout
            assert got == expected, (snap, write_out)
        assert (
            json.loads(cluster_cmd("snapshot", "status", str(snap), "-w", "json").stdout)[
                "revision"
            ]
            == revision
        )

    three = restored_cluster(tmp_path / "from-etcdctl", theirs, 3)
    try:
        check_restored(three, revision, kvs, hashes, lease, compacted, source_cluster_id)
    finally:
        three.stop()
    one = restored_cluster(tmp_path / "from-ours", ours, 1)
    try:
        check_restored(one, revision, kvs, hashes, lease, compacted, source_cluster_id)
    finally:
        one.stop()


def test_restore_refusals(tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    (tmp_path / "source").mkdir()
    with running(tmp_path / "source", size=1) as src:
        src.etcdctl("put", "a", "1")
        cluster_cmd("snapshot", "save", str(snap), "--endpoints", src.endpoints[0])
    flags = ["--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]  # fmt: skip
    (tmp_path / "taken").mkdir()
    done = cluster_cmd("snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "taken"),
                       *flags, check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (1, f"Error: data-dir '{tmp_path / 'taken'}' exists\n")
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    done = cluster_cmd("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "new"),
                       *flags, check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: snapshot: {bad}: offset {len(data) - 32}: sha256")
    assert not (tmp_path / "new").exists()
    done = cluster_cmd("snapshot", "save", str(tmp_path / "x.db"), "--endpoints",
                       "127.0.0.1:1", "--dial-timeout", "300ms", check=False)  # fmt: skip
    assert done.returncode == 1 and "no endpoint could be reached" in done.stderr
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "x.db.part").exists()


@pytest.mark.etcd_server
def test_a_real_etcd_snapshot_restores(tmp_path: Path) -> None:
    from tests.client.servers import etcd_available, etcd_binary

    if not etcd_available() and os.environ.get("CI") != "true":
        pytest.skip("no etcd binary")
    snap = tmp_path / "etcd.db"
    (tmp_path / "etcd").mkdir()
    with etcd_binary(tmp_path / "etcd", 1) as servers:
        etcd = Cluster(tmp_path / "unused", 1)
        etcd.members[0].client = int(servers.endpoints[0].rsplit(":", 1)[1])
        lease, compacted = fill(etcd)
        revision, kvs = everything(etcd)
        hashes = hashkv(etcd, revision)
        etcd.etcdctl("snapshot", "save", str(snap))
    one = restored_cluster(tmp_path / "restored", snap, 1)
    try:
        one.start()
        one.leader(one.members)
        assert everything(one) == (revision, kvs)
        assert hashkv(one, revision) == hashes  # etcd's HashKV, computed the same way
        ttl = one.etcdctl("lease", "timetolive", lease, "--keys")
        assert "/leased" in ttl, ttl
        got = base64.b64decode(str(kvs[0]["key"]))
        assert one.etcdctl("get", got.decode(), "--print-value-only").strip()
        done = one.run_etcdctl("get", "/k/00", "--rev", str(compacted - 1))
        assert "required revision has been compacted" in done.stderr
    finally:
        one.stop()
