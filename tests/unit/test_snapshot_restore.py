"""``cluster.snapshot``: save, status and restore against members in this process.

A member's snapshot (the Maintenance.Snapshot stream: bbolt + SHA-256) is saved, its
status compared with etcdctl's, and restored into the data dir of a member of a NEW
cluster, which is started and must serve the same keys, revisions, leases and
compaction as the source; damaged files are refused with the file and the offset.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cluster import snapshot
from cluster.bench.ports import free_ports
from cluster.config import parse_initial_cluster, parse_urls
from cluster.mvcc.kv import KeyValue, encode_kv
from cluster.mvcc.revision import Revision
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.snapshot import (
    Connection,
    RestoreConfig,
    RestoreError,
    SnapshotFileError,
    humanize_bytes,
    render_status,
    restore,
    save,
    snapshot_status,
)
from cluster.storage.backend import Backend
from cluster.storage.bolt import BoltWriter
from cluster.storage.durable import MemberPaths, open_raft_log
from tests.unit.server.live import LiveMember, serve_member, start_member

TOKEN = "restored"


def _flags(name: str, data_dir: Path, peers: dict[str, int], client: int) -> list[str]:
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peers.items())
    return [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peers[name]}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peers[name]}",
        f"--initial-cluster={initial}",
        f"--initial-cluster-token={TOKEN}",
        "--heartbeat-interval=10",
        "--election-timeout=100",
    ]


def _restore_config(snap: Path, data_dir: Path, name: str, peers: dict[str, int]) -> RestoreConfig:
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peers.items())
    return RestoreConfig(
        snapshot=str(snap),
        data_dir=str(data_dir),
        name=name,
        initial_cluster=parse_initial_cluster(initial),
        initial_cluster_token=TOKEN,
        initial_advertise_peer_urls=parse_urls(f"http://127.0.0.1:{peers[name]}", "x"),
    )


async def _fill(lm: LiveMember) -> tuple[int, int]:
    """Keys with several versions, a deletion, a compaction, a lease with a key, a user;
    (lease id, compacted revision)."""
    kv = lm.kv
    for i in range(30):
        await kv.Put(pb.PutRequest(key=b"/k/%02d" % (i % 10), value=b"v%d" % i))
    await kv.DeleteRange(pb.DeleteRangeRequest(key=b"/k/03"))
    compacted = (await kv.Put(pb.PutRequest(key=b"/k/00", value=b"x"))).header.revision
    await kv.Compact(pb.CompactionRequest(revision=compacted))
    lease = pb_grpc.LeaseStub(lm.channel)
    granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600))
    await kv.Put(pb.PutRequest(key=b"/leased", value=b"l", lease=granted.ID))
    await kv.Put(pb.PutRequest(key=b"/k/01", value=b"after compaction"))
    await pb_grpc.AuthStub(lm.channel).UserAdd(pb.AuthUserAddRequest(name="alice", password="pw"))
    return granted.ID, compacted


async def _everything(lm: LiveMember) -> pb.RangeResponse:
    resp: pb.RangeResponse = await lm.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    return resp


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[LiveMember]:
    lm = await start_member(tmp_path / "source")
    try:
        await lm.wait_leader()
        yield lm
    finally:
        await lm.stop()


async def test_save_restore_and_serve_the_same_data(source: LiveMember, tmp_path: Path) -> None:
    lease_id, compacted = await _fill(source)
    before = await _everything(source)
    hash_before = await source.maintenance.HashKV(pb.HashKVRequest(revision=before.header.revision))
    path = tmp_path / "snap.db"

    saved = await save(Connection(endpoints=(source.endpoint,)), str(path))
    assert saved.path == str(path) and not (tmp_path / "snap.db.part").exists()
    assert path.stat().st_size == saved.size + 32 and saved.revision == before.header.revision
    status = snapshot_status(str(path))
    assert status.revision == before.header.revision
    assert status.total_size == saved.size

    client, peer = free_ports(2)
    peers = {"solo": peer}
    data_dir = tmp_path / "restored"
    result = restore(_restore_config(path, data_dir, "solo", peers))
    assert result.revision == before.header.revision
    assert result.index == 1 and os.path.isdir(data_dir)
    assert not [p for p in tmp_path.iterdir() if ".restore-" in p.name]

    lm = await serve_member(_flags("solo", data_dir, peers, client), client)
    try:
        await lm.wait_leader()
        assert (lm.member.id, lm.member.cluster_id) == (result.member_id, result.cluster_id)
        assert lm.member.cluster_id != source.member.cluster_id
        after = await _everything(lm)
        assert list(after.kvs) == list(before.kvs)
        assert after.header.revision == before.header.revision
        h = await lm.maintenance.HashKV(pb.HashKVRequest(revision=before.header.revision))
        assert (h.hash, h.compact_revision) == (hash_before.hash, hash_before.compact_revision)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lm.kv.Range(pb.RangeRequest(key=b"/k/00", revision=compacted - 1))
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        ttl = await pb_grpc.LeaseStub(lm.channel).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
        )
        assert ttl.TTL > 0 and list(ttl.keys) == [b"/leased"]
        users = await pb_grpc.AuthStub(lm.channel).UserList(pb.AuthUserListRequest())
        assert list(users.users) == ["alice"]
        members = await pb_grpc.ClusterStub(lm.channel).MemberList(pb.MemberListRequest())
        assert [(m.ID, m.name) for m in members.members] == [(result.member_id, "solo")]
        put = await lm.kv.Put(pb.PutRequest(key=b"/new", value=b"1"))
        assert put.header.revision == before.header.revision + 1
    finally:
        await lm.stop()


async def test_restore_for_three_members_writes_their_log(
    source: LiveMember, tmp_path: Path
) -> None:
    await source.kv.Put(pb.PutRequest(key=b"a", value=b"1"))
    path = tmp_path / "snap.db"
    await save(Connection(endpoints=(source.endpoint,)), str(path))
    ports = free_ports(3)
    peers = {f"n{i}": p for i, p in enumerate(ports)}
    results = [
        restore(_restore_config(path, tmp_path / name, name, peers)) for name in sorted(peers)
    ]
    assert len({r.member_id for r in results}) == 3 and len({r.cluster_id for r in results}) == 1
    ids = sorted(r.member_id for r in results)
    named = sorted((r.member_id, os.path.basename(r.data_dir)) for r in results)
    for r in results:
        log = open_raft_log(r.data_dir, r.member_id, r.cluster_id)
        try:
            snap = log.storage.snapshot()
            assert (snap.metadata.index, snap.metadata.term) == (3, 1)
            assert sorted(snap.metadata.conf_state.voters) == ids
            assert log.storage.hard_state.commit == 3
        finally:
            log.close()
        with Backend(MemberPaths(r.data_dir).db_path) as be:
            assert be.consistent_index() == (3, 1)
            assert be.member_ids() == (r.member_id, r.cluster_id)
            stored = [pb.Member.FromString(v) for _, v in be.range("members", b"", b"\xff" * 9)]
            assert sorted((m.ID, m.name) for m in stored) == named
            assert be.range("members_removed", b"", b"\xff" * 9) == []


@pytest.mark.etcdctl
async def test_status_is_etcdctls(source: LiveMember, tmp_path: Path) -> None:
    for i in range(50):
        await source.kv.Put(pb.PutRequest(key=b"k%02d" % i, value=b"v" * 200))
    path = tmp_path / "snap.db"
    await save(Connection(endpoints=(source.endpoint,)), str(path))
    status = snapshot_status(str(path))
    for write_out in ("simple", "json", "table", "fields"):
        done = subprocess.run(
            ["etcdctl", "snapshot", "status", str(path), "-w", write_out],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=True,
        )
        assert render_status(status, write_out) == done.stdout, write_out
    assert json.loads(render_status(status, "json"))["revision"] == 51


def test_humanize_bytes_is_go_humanizes() -> None:
    cases = {
        0: "0 B",
        9: "9 B",
        10: "10 B",
        999: "999 B",
        1000: "1.0 kB",
        69632: "70 kB",
        1_500_000: "1.5 MB",
        17_231_872: "17 MB",
        2 * 1024**3: "2.1 GB",
    }
    assert {n: humanize_bytes(n) for n in cases} == cases


# -- refusals ---------------------------------------------------------------------------------


def _bolt_file(path: Path, n: int = 300, sha: bool = True) -> bytes:
    """A snapshot file of ``n`` keys, written by our bbolt writer."""
    import hashlib

    with path.open("w+b") as f:
        w = BoltWriter(f)
        w.write_bucket(
            b"key",
            (
                (
                    Revision(i + 2).to_bytes(),
                    encode_kv(KeyValue(b"k%04d" % i, i + 2, i + 2, 1, b"v" * 50, 0)),
                )
                for i in range(n)
            ),
        )
        w.write_bucket(b"meta", [(b"consistent_index", (9).to_bytes(8, "big"))])
        w.finish()
        f.seek(0)
        data = f.read()
        if sha:
            f.write(hashlib.sha256(data).digest())
    return path.read_bytes()


def _cfg(snap: Path, data_dir: Path, skip: bool = False) -> RestoreConfig:
    cfg = _restore_config(snap, data_dir, "a", {"a": 2380})
    return RestoreConfig(**{**cfg.__dict__, "skip_hash_check": skip})


def test_a_damaged_file_is_refused_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    data = bytearray(_bolt_file(path))
    data[5 * 4096 + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotFileError) as info:
        restore(_cfg(path, tmp_path / "d"))
    assert info.value.offset == len(data) - 32 and "sha256 mismatch" in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(SnapshotFileError, match="sha256 mismatch"):
        snapshot_status(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]  # nothing left behind


def test_a_truncated_file_has_no_trailer(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    data = _bolt_file(path)
    path.write_bytes(data[:-1000])
    with pytest.raises(SnapshotFileError, match="no SHA-256 trailer") as info:
        restore(_cfg(path, tmp_path / "d"))
    assert info.value.offset == len(data) - 1000
    with pytest.raises(SnapshotFileError, match="truncated") as info:
        restore(_cfg(path, tmp_path / "d", skip=True))
    assert info.value.offset == len(data) - 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]


def test_a_damaged_page_is_found_with_skip_hash_check(tmp_path: Path) -> None:
    path = tmp_path / "db"
    data = bytearray(_bolt_file(path, sha=False))
    data[4 * 4096 : 4 * 4096 + 8] = (999).to_bytes(8, "little")  # a page naming another
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotFileError) as info:
        restore(_cfg(path, tmp_path / "d", skip=True))
    assert info.value.offset == 4 * 4096 and "header says page 999" in info.value.reason


def test_a_file_without_trailer_restores_with_skip_hash_check(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _bolt_file(path, n=1000, sha=False)
    result = restore(_cfg(path, tmp_path / "d", skip=True))
    assert (result.revision, result.index) == (1001, 1)


def test_refusals_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    _bolt_file(path)
    (tmp_path / "exists").mkdir()
    with pytest.raises(RestoreError, match="exists"):
        restore(_cfg(path, tmp_path / "exists"))
    cfg = _cfg(path, tmp_path / "d")
    with pytest.raises(RestoreError, match="no member named 'b'"):
        restore(RestoreConfig(**{**cfg.__dict__, "name": "b"}))
    other = parse_urls("http://127.0.0.1:1", "x")
    with pytest.raises(RestoreError, match="--initial-advertise-peer-urls"):
        restore(RestoreConfig(**{**cfg.__dict__, "initial_advertise_peer_urls": other}))
    assert not (tmp_path / "d").exists()


async def test_save_refuses_a_stream_whose_hash_does_not_match(tmp_path: Path) -> None:
    class Stream:
        def __init__(self, blobs: list[bytes]) -> None:
            self.blobs = blobs

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> pb.SnapshotResponse:
            if not self.blobs:
                raise StopAsyncIteration
            return pb.SnapshotResponse(blob=self.blobs.pop(0))

    fd = os.open(tmp_path / "x.part", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(SnapshotFileError, match="sha256 mismatch") as info:
            await snapshot._receive(
                Stream([b"a" * 4096, b"b" * 4096, b"\0" * 32]),
                fd,
                "x.part",
                snapshot.Progress(False),
            )
        assert info.value.offset == 8192
        with pytest.raises(SnapshotFileError, match="without its SHA-256"):
            await snapshot._receive(Stream([b"a" * 4096]), fd, "x.part", snapshot.Progress(False))
    finally:
        os.close(fd)


# -- the command line ---------------------------------------------------------------------------


def test_cli_status_restore_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snap.db"
    _bolt_file(path, n=10)
    assert snapshot.main(["status", str(path), "-w", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["revision"] == 11 and err == ""  # no progress bar off a terminal
    args = [
        "restore", str(path), "--data-dir", str(tmp_path / "d"), "--name", "a",
        "--initial-cluster", "a=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
    ]  # fmt: skip
    assert snapshot.main(args) == 0
    out, err = capsys.readouterr()
    assert "revision 11" in out and str(tmp_path / "d") in out and err == ""
    assert snapshot.main(args) == 1
    _, err = capsys.readouterr()
    assert err == f"Error: data-dir {str(tmp_path / 'd')!r} exists\n"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    assert snapshot.main(["status", str(path)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"Error: snapshot: {path}: offset {path.stat().st_size - 32}: sha256")
