"""The Maintenance service on a real single-member cluster in this process.

Driven by our generated stub and by the real etcdctl (3.4): hashes, the
snapshot stream (a bbolt file and its SHA-256, which `etcdctl snapshot
status` / `restore` open), defragment, leader transfer and alarms, with
etcd's codes and messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import grpc
import pytest
from crc32c import crc32c

from cluster.mvcc.kv import decode_kv
from cluster.mvcc.revision import Revision
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.server import maintenance
from cluster.server.maintenance import HASH_IGNORES, MaintenanceServicer
from cluster.server.member import Member
from cluster.storage.bolt import read_bolt
from tests.unit.server.live import LiveMember, retired_db_released, start_member


async def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details()


async def _put(lm: LiveMember, key: bytes, value: bytes = b"v") -> int:
    return int((await lm.kv.Put(pb.PutRequest(key=key, value=value))).header.revision)


async def _snapshot(lm: LiveMember) -> tuple[list[pb.SnapshotResponse], bytes]:
    responses = [r async for r in lm.maintenance.Snapshot(pb.SnapshotRequest())]
    return responses, b"".join(r.blob for r in responses)


def _header_ok(lm: LiveMember, header: pb.ResponseHeader) -> None:
    m = lm.member
    assert (header.cluster_id, header.member_id) == (m.cluster_id, m.id)
    assert header.raft_term == m.node.term > 0


# -- hashes -----------------------------------------------------------------------------------


async def test_hash_kv_is_the_stores_hash_at_a_revision(live: LiveMember) -> None:
    for i in range(5):
        rev = await _put(live, b"k%d" % i, b"v%d" % i)
    resp = await live.maintenance.HashKV(pb.HashKVRequest())
    want, compact = live.member.kv.hash_kv(0)
    assert (resp.hash, resp.compact_revision, resp.hash_revision) == (want, compact, rev)
    assert resp.header.revision == rev
    _header_ok(live, resp.header)

    at3 = await live.maintenance.HashKV(pb.HashKVRequest(revision=3))
    assert (at3.hash, at3.hash_revision, at3.header.revision) == (
        live.member.kv.hash_kv(3)[0],
        3,
        rev,
    )
    assert at3.hash != resp.hash
    await _put(live, b"later")  # a later write does not change the hash up to rev
    assert (await live.maintenance.HashKV(pb.HashKVRequest(revision=rev))).hash == resp.hash


async def test_hash_kv_errors_are_etcds(live: LiveMember) -> None:
    for i in range(4):
        await _put(live, b"k", b"%d" % i)
    await live.kv.Compact(pb.CompactionRequest(revision=3))
    assert await _status(live.maintenance.HashKV(pb.HashKVRequest(revision=2))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )
    assert await _status(live.maintenance.HashKV(pb.HashKVRequest(revision=99))) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )
    assert (await live.maintenance.HashKV(pb.HashKVRequest())).compact_revision == 3


async def test_hash_covers_every_bucket_but_the_raft_position(live: LiveMember) -> None:
    # The member publishes its attributes through Raft once it has a leader; wait for
    # that write so it does not land between the two hashes below.
    for _ in range(200):
        if any(live.member.id == m.ID and m.clientURLs for m in live.member.members()):
            break
        await asyncio.sleep(0.01)
    await _put(live, b"a", b"1")
    first = await live.maintenance.Hash(pb.HashRequest())
    _header_ok(live, first.header)
    assert first.header.revision == live.member.kv.current_revision
    # Stable while nothing changes, though the member keeps committing its batch.
    assert (await live.maintenance.Hash(pb.HashRequest())).hash == first.hash
    await _put(live, b"b", b"2")
    second = await live.maintenance.Hash(pb.HashRequest())
    assert second.hash != first.hash

    # etcd's definition, over the same records the snapshot exports.
    _, stream = await _snapshot(live)
    crc = 0
    for name, items in sorted(read_bolt(stream[:-32]).items()):
        crc = crc32c(name, crc)
        for key, value in items:
            if (name.decode(), key) not in HASH_IGNORES:
                crc = crc32c(value, crc32c(key, crc))
    assert second.hash == crc


# -- snapshot ---------------------------------------------------------------------------------


async def test_snapshot_streams_a_bbolt_file_then_its_sha256(live: LiveMember) -> None:
    big = os.urandom(100_000)  # several 32 KiB messages, an overflow page in the file
    await _put(live, b"big", big)
    for i in range(50):
        await _put(live, b"key/%03d" % i, b"value %d" % i)
    responses, stream = await _snapshot(live)

    db, sha = stream[:-32], stream[-32:]
    assert hashlib.sha256(db).digest() == sha
    assert len(stream) % 512 == 32  # what etcdctl takes as "has a checksum"
    assert len(responses) > 3
    assert all(len(r.blob) <= 32 * 1024 for r in responses)
    remaining = [r.remaining_bytes for r in responses]
    assert remaining == sorted(remaining, reverse=True) and remaining[-2:] == [0, 0]
    assert responses[0].remaining_bytes == len(db) - len(responses[0].blob)
    _header_ok(live, responses[0].header)
    assert responses[0].header.revision == live.member.kv.current_revision

    buckets = read_bolt(db)
    assert sorted(buckets) == sorted(n.encode() for n in live.member.backend.BUCKETS)
    values = {decode_kv(v).key: decode_kv(v).value for _, v in buckets[b"key"]}
    assert values[b"big"] == big and values[b"key/049"] == b"value 49"
    meta = dict(buckets[b"meta"])
    index, term = live.member.backend.consistent_index()
    assert meta[b"consistent_index"] == index.to_bytes(8, "big")
    assert meta[b"term"] == term.to_bytes(8, "big")
    assert b"member_ids" not in meta


async def test_snapshot_is_consistent_while_writes_and_defrag_go_on(
    live: LiveMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "_YIELD_EVERY", 5)  # the export yields often
    for i in range(200):
        await _put(live, b"k%04d" % i)
    writes = asyncio.gather(*(_put(live, b"w%04d" % i) for i in range(50)))
    defrag = live.maintenance.Defragment(pb.DefragmentRequest())  # waits for the export
    (_, stream), _ = await asyncio.gather(_snapshot(live), defrag)
    await writes
    buckets = read_bolt(stream[:-32])
    revs = [Revision.from_bytes(k).main for k, _ in buckets[b"key"]]
    assert revs == list(range(2, 2 + len(revs)))  # a prefix of the history, no holes
    assert len(revs) >= 200
    # The consistent index exported is that of the same moment as the data.
    assert int.from_bytes(dict(buckets[b"meta"])[b"consistent_index"], "big") >= revs[-1]
    got = await live.kv.Range(pb.RangeRequest(key=b"w", range_end=b"x", count_only=True))
    assert got.count == 50


# -- defragment -------------------------------------------------------------------------------


async def test_defragment_shrinks_the_file_and_keeps_serving(
    live: LiveMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = retired_db_released(monkeypatch)
    blob = b"x" * 2000
    for i in range(300):
        await _put(live, b"k%03d" % i, blob)
    rev = await _put(live, b"last", b"1")
    await live.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"))
    await live.kv.Compact(pb.CompactionRequest(revision=rev + 1, physical=True))
    before = await live.maintenance.Status(pb.StatusRequest())
    hash_before = (await live.maintenance.Hash(pb.HashRequest())).hash

    resp = await live.maintenance.Defragment(pb.DefragmentRequest())
    _header_ok(live, resp.header)

    after = await live.maintenance.Status(pb.StatusRequest())
    assert after.dbSize < before.dbSize / 4
    assert after.dbSizeInUse <= after.dbSize
    assert (await live.maintenance.Hash(pb.HashRequest())).hash == hash_before
    got = await live.kv.Range(pb.RangeRequest(key=b"last"))
    assert got.kvs[0].value == b"1"
    await _put(live, b"after", b"2")  # writes go on into the new file
    got = await live.kv.Range(pb.RangeRequest(key=b"a", range_end=b"z"))
    assert [kv.key for kv in got.kvs] == [b"after", b"last"]
    # the old file was kept aside (freeing it at once stalls fsyncs), then freed in steps
    await released(live.member.backend.path)


# -- leader transfer --------------------------------------------------------------------------


async def test_move_leader_to_an_unknown_member_is_refused(live: LiveMember) -> None:
    assert await _status(live.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=0x1234))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: bad leader transferee",
    )


async def test_move_leader_to_the_leader_itself_succeeds(live: LiveMember) -> None:
    resp = await live.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=live.member.id))
    _header_ok(live, resp.header)
    assert live.member.leader == live.member.id


async def test_move_leader_on_a_member_that_is_not_leader(tmp_path: Path) -> None:
    # A two-member cluster of which only one runs: it never becomes leader.
    lm = await start_member(tmp_path / "m0", extra_peers=1)
    try:
        assert await _status(
            lm.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=lm.member.id))
        ) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    finally:
        await lm.stop()


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.status = (code, details)
        raise _Aborted()


async def test_move_leader_that_does_not_complete_times_out() -> None:
    transfers: list[int] = []
    node = SimpleNamespace(
        status=lambda: SimpleNamespace(progress={2: SimpleNamespace(is_learner=False)}),
        transfer_leader=transfers.append,
    )
    member = SimpleNamespace(
        id=1,
        leader=1,
        node=node,
        request_timeout=0.05,
        cfg=SimpleNamespace(heartbeat_interval_ms=10),
    )
    servicer = MaintenanceServicer(cast(Member, member))
    ctx = _Context()
    with pytest.raises(_Aborted):
        await servicer.MoveLeader(pb.MoveLeaderRequest(targetID=2), cast(Any, ctx))
    assert transfers == [2]
    assert ctx.status == (
        grpc.StatusCode.UNAVAILABLE,
        "etcdserver: request timed out, leader transfer took too long",
    )


async def test_move_leader_to_a_learner_is_refused() -> None:
    node = SimpleNamespace(
        status=lambda: SimpleNamespace(progress={2: SimpleNamespace(is_learner=True)}),
    )
    member = SimpleNamespace(id=1, leader=1, node=node)
    ctx = _Context()
    with pytest.raises(_Aborted):
        await MaintenanceServicer(cast(Member, member)).MoveLeader(
            pb.MoveLeaderRequest(targetID=2), cast(Any, ctx)
        )
    assert ctx.status == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")


# -- alarms -----------------------------------------------------------------------------------


async def test_alarms(live: LiveMember) -> None:
    m = live.member
    got = await live.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET))
    assert list(got.alarms) == []
    _header_ok(live, got.header)
    off = pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=m.id, alarm=pb.NOSPACE)
    assert list((await live.maintenance.Alarm(off)).alarms) == []
    await live.kv.Put(pb.PutRequest(key=b"before", value=b"1"))

    on = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=m.id, alarm=pb.NOSPACE)
    raised = pb.AlarmMember(memberID=m.id, alarm=pb.NOSPACE)
    assert list((await live.maintenance.Alarm(on)).alarms) == [raised]
    got = await live.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET))
    assert list(got.alarms) == [raised]
    status = await live.maintenance.Status(pb.StatusRequest())
    assert list(status.errors) == [f"memberID:{m.id} alarm:NOSPACE "]
    # an alarm for a member the cluster does not have is ignored, as etcd does
    stranger = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0x99, alarm=pb.NOSPACE)
    assert list((await live.maintenance.Alarm(stranger)).alarms) == []

    # NOSPACE: whatever adds data is refused; reads, deletes and compaction go on
    no_space = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
    assert await _status(live.kv.Put(pb.PutRequest(key=b"k", value=b"v"))) == no_space
    put_op = pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=b"v"))
    txn = pb.TxnRequest(failure=[put_op])
    assert await _status(live.kv.Txn(txn)) == no_space
    read_only = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"before"))])
    assert (await live.kv.Txn(read_only)).responses[0].response_range.kvs[0].value == b"1"
    revision = (await live.kv.DeleteRange(pb.DeleteRangeRequest(key=b"before"))).header.revision
    await live.kv.Compact(pb.CompactionRequest(revision=revision))
    assert m.kv.current_revision == revision  # nothing refused was written

    # the alarm is in the backend: a restart keeps refusing
    assert [a.memberID for a in type(m.alarms)(m.backend).active()] == [m.id]

    assert list((await live.maintenance.Alarm(off)).alarms) == [raised]
    assert list((await live.maintenance.Status(pb.StatusRequest())).errors) == []
    await live.kv.Put(pb.PutRequest(key=b"k", value=b"v"))


async def test_a_write_past_the_quota_raises_nospace(tmp_path: Path) -> None:
    lm = await start_member(tmp_path / "m0", quota_backend_bytes=str(256 * 1024))
    try:
        await lm.wait_leader()
        no_space = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
        for i in range(50):
            put = lm.kv.Put(pb.PutRequest(key=f"k{i}".encode(), value=b"x" * 32 * 1024))
            try:
                await put
            except grpc.aio.AioRpcError as exc:
                assert (exc.code(), exc.details()) == no_space
                break
        else:
            raise AssertionError("50 puts of 32 KiB fit in a 256 KiB quota")
        assert lm.member._backend_size() + 32 * 1024 >= 256 * 1024
        async with asyncio.timeout(5):  # the member raises the alarm through Raft
            while not lm.member.alarms.nospace:
                await asyncio.sleep(0.01)
        # now even a tiny put is refused, until the alarm is cleared
        assert await _status(lm.kv.Put(pb.PutRequest(key=b"tiny", value=b"1"))) == no_space
    finally:
        await lm.stop()


# -- the real etcdctl -------------------------------------------------------------------------


async def _etcdctl(endpoint: str | None, *args: str, ok: bool | None = True) -> tuple[str, str]:
    """etcdctl's (stdout, stderr); ``ok``: whether it must succeed (None: either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    flags = [f"--endpoints={endpoint}", "--dial-timeout=5s", "--command-timeout=10s"]
    proc = await asyncio.create_subprocess_exec(
        "etcdctl",
        *(flags if endpoint else []),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert ok is None or (proc.returncode == 0) == ok, (proc.returncode, out, err)
    return out.decode(), err.decode()


@pytest.mark.etcdctl
async def test_etcdctl_endpoint_hashkv(live: LiveMember) -> None:
    await _put(live, b"foo", b"bar")
    out, _ = await _etcdctl(live.endpoint, "endpoint", "hashkv")
    want, _ = live.member.kv.hash_kv(0)
    assert out == f"{live.endpoint}, {want}\n"
    out, _ = await _etcdctl(live.endpoint, "endpoint", "hashkv", "-w", "json")
    (row,) = json.loads(out)
    assert row["HashKV"]["hash"] == want
    assert row["HashKV"]["header"]["revision"] == 2


@pytest.mark.etcdctl
async def test_etcdctl_snapshot_save_status_and_restore(live: LiveMember, tmp_path: Path) -> None:
    for i in range(20):
        await _put(live, b"k%02d" % i, b"v" * 100)
    path = tmp_path / "snap.db"
    out, _ = await _etcdctl(live.endpoint, "snapshot", "save", str(path))
    assert out == f"Snapshot saved at {path}\n"

    out, _ = await _etcdctl(None, "snapshot", "status", str(path), "-w", "json")
    status = json.loads(out)
    data = path.read_bytes()
    assert status["revision"] == 21 == live.member.kv.current_revision
    assert status["totalSize"] == len(data) - 32
    buckets = read_bolt(data[:-32])
    assert status["totalKey"] == sum(len(items) for items in buckets.values())
    crc = 0
    for name, items in sorted(buckets.items()):  # etcdctl's hash: every record
        crc = crc32c(name, crc)
        for key, value in items:
            crc = crc32c(value, crc32c(key, crc))
    assert status["hash"] == crc

    # etcdctl checks the SHA-256 and opens the data with etcd's own mvcc store.
    restored = tmp_path / "restored"
    await _etcdctl(None, "snapshot", "restore", str(path), f"--data-dir={restored}")
    assert (restored / "member" / "snap" / "db").exists()


@pytest.mark.etcdctl
async def test_etcdctl_defrag(live: LiveMember) -> None:
    for i in range(50):
        await _put(live, b"k%02d" % i, b"v" * 1000)
    out, _ = await _etcdctl(live.endpoint, "defrag")
    assert out == f"Finished defragmenting etcd member[{live.endpoint}]\n"
    out, _ = await _etcdctl(live.endpoint, "get", "k49", "--print-value-only")
    assert out == "v" * 1000 + "\n"


@pytest.mark.etcdctl
async def test_etcdctl_move_leader_on_a_single_member(live: LiveMember) -> None:
    _, err = await _etcdctl(live.endpoint, "move-leader", "1234", ok=False)
    assert err.rstrip("\n").rsplit("\n", 1)[-1] == "Error: etcdserver: bad leader transferee"
    me = f"{live.member.id:x}"
    out, _ = await _etcdctl(live.endpoint, "move-leader", me)
    assert out == f"Leadership transferred from {me} to {me}\n"


@pytest.mark.etcdctl
async def test_etcdctl_nospace_alarm_then_compact_defrag_and_disarm(tmp_path: Path) -> None:
    lm = await start_member(tmp_path / "m0", quota_backend_bytes=str(512 * 1024))
    try:
        await lm.wait_leader()
        ep = lm.endpoint
        assert (await _etcdctl(ep, "alarm", "list"))[0] == ""
        value = "v" * 64 * 1024
        for i in range(40):
            out, err = await _etcdctl(ep, "put", f"k{i:02}", value, ok=None)
            if "database space exceeded" in err:
                break
        else:
            raise AssertionError("40 puts of 64 KiB fit in a 512 KiB quota")
        assert err.rstrip("\n").rsplit("\n", 1)[-1] == (
            "Error: etcdserver: mvcc: database space exceeded"
        )
        async with asyncio.timeout(5):
            while not lm.member.alarms.nospace:
                await asyncio.sleep(0.01)
        assert (await _etcdctl(ep, "alarm", "list"))[0] == (
            f"memberID:{lm.member.id} alarm:NOSPACE \n"
        )
        status = json.loads((await _etcdctl(ep, "endpoint", "status", "-w", "json"))[0])
        assert status[0]["Status"]["errors"] == [f"memberID:{lm.member.id} alarm:NOSPACE "]
        # etcd's recovery: free the space, compact, defragment, disarm
        out, _ = await _etcdctl(ep, "del", "--prefix", "k")
        revision = lm.member.kv.current_revision
        await _etcdctl(ep, "compact", str(revision))
        await _etcdctl(ep, "defrag")
        assert lm.member.backend.size_bytes() < 512 * 1024
        out, _ = await _etcdctl(ep, "alarm", "disarm")
        assert out == f"memberID:{lm.member.id} alarm:NOSPACE \n"
        assert (await _etcdctl(ep, "alarm", "list"))[0] == ""
        assert (await _etcdctl(ep, "put", "again", "1"))[0] == "OK\n"
    finally:
        await lm.stop()


async def test_periodic_auto_compaction_compacts_on_the_leader(tmp_path: Path) -> None:
    lm = await start_member(
        tmp_path / "m0", auto_compaction_mode="periodic", auto_compaction_retention="1s"
    )
    try:
        await lm.wait_leader()
        for i in range(5):
            await lm.kv.Put(pb.PutRequest(key=b"k", value=str(i).encode()))
        async with asyncio.timeout(5):  # the first compaction comes a full retention after start
            while lm.member.kv.compact_revision < 2:
                await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await lm.kv.Range(pb.RangeRequest(key=b"k", revision=1))
        assert e.value.details() == "etcdserver: mvcc: required revision has been compacted"
        latest = await lm.kv.Range(pb.RangeRequest(key=b"k"))
        assert latest.kvs[0].value == b"4"
    finally:
        await lm.stop()
