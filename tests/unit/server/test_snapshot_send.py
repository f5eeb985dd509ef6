"""A leader sends a follower its backend without stalling its event loop.

The transport takes a MsgSnap's data from a source when it sends it and
streams its blocks; what else goes to that peer waits behind it. Then three
in-process members with tiny Raft snapshots: one is stopped while the others
take a few megabytes of writes, then restarted, behind the compacted log, so
it needs the leader's backend. The leader's copy of it is held (in
``snapshot_chunks``) until a client request has been served: were the copy
made on the event loop, that request could never complete. The follower then
holds the same data as the leader, and the db it replaced is freed afterwards in
a worker thread.
"""

from __future__ import annotations

import asyncio
import mmap
import re
import threading
from collections.abc import Awaitable, Generator, Iterable
from pathlib import Path
from typing import cast

import pytest

from cluster.bench.ports import free_ports
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.raft import ConfState, Message, MessageType, Snapshot, SnapshotMetadata
from cluster.server.member import _DROP_EVERY, _split_image
from tests.unit.server.live import LiveMember, retired_db_released, start_peer, wait_leader
from tests.unit.server.test_transport import _app, _connected, _Member

KEYS = 3000
VALUE = b"v" * 1024  # ~3 MiB of values: the image travels in several chunks


async def test_a_snapshot_source_streams_its_blocks_and_messages_wait_behind_it() -> None:
    a, b = await _Member(1).start(), await _Member(2).start()
    blocks = [bytes([i]) * 2500 for i in range(4)]  # split into the 1000-byte frames of FAST
    release = asyncio.Event()

    async def source(m: Message) -> Iterable[bytes]:
        await release.wait()
        return iter(blocks)

    a.transport.snapshot_source = source
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))))
    a.transport.send([Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)])
    a.transport.send([_app(1, 2, 5)])  # queued behind the snapshot being prepared
    await asyncio.sleep(0.05)
    assert b.received == []
    release.set()
    await b.wait_for(2)
    got = b.received[0].snapshot
    assert got is not None and got.metadata == snap.metadata and got.data[:] == b"".join(blocks)
    assert b.received[1].type == MessageType.APP
    assert a.snapshot_status == [(2, True)]
    await a.transport.close()
    await b.transport.close()


async def test_a_long_snapshot_lets_the_loop_run_between_chunks() -> None:
    a, b = await _Member(1).start(), await _Member(2).start()
    blocks = [bytes([i % 256]) * 2000 for i in range(200)]  # 400 chunks of FAST's 1000 bytes
    ticks = 0
    sending = True

    async def ticker() -> None:
        nonlocal ticks
        while sending:
            ticks += 1
            await asyncio.sleep(0)

    async def source(m: Message) -> Iterable[bytes]:
        return iter(blocks)

    a.transport.snapshot_source = source
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = ticks
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))))
    a.transport.send([Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)])
    await b.wait_for(1)
    sending = False
    await task
    assert b.received[0].snapshot is not None
    assert b.received[0].snapshot.data[:] == b"".join(blocks)
    # the sender gave the loop back at least once per chunk (loopback never blocks it)
    assert ticks - before >= 400
    await a.transport.close()
    await b.transport.close()


async def test_a_failing_snapshot_source_is_reported_and_the_stream_goes_on() -> None:
    a, b = await _Member(1).start(), await _Member(2).start()

    async def source(m: Message) -> Iterable[bytes]:
        raise OSError("no space left for the copy")

    a.transport.snapshot_source = source
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))))
    a.transport.send([Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)])
    a.transport.send([_app(1, 2, 5)])
    await b.wait_for(1)
    assert [m.type for m in b.received] == [MessageType.APP]
    assert a.snapshot_status == [(2, False)]
    await a.transport.close()
    await b.transport.close()


def _start(data_dir: Path, name: str, client: int, peers: list[int]) -> Awaitable[LiveMember]:
    snapshots = ["--snapshot-count=200", "--experimental-snapshot-catchup-entries=10"]
    return start_peer(data_dir, name, client, peers, *snapshots)


async def test_the_leader_serves_clients_while_it_prepares_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = retired_db_released(monkeypatch)
    ports = free_ports(6)
    clients, peers = ports[:3], ports[3:]
    names = ["m0", "m1", "m2"]
    members = [await _start(tmp_path / n, n, c, peers) for n, c in zip(names, clients, strict=True)]
    try:
        leader = await wait_leader(members)
        behind = next(lm for lm in members if lm is not leader)
        at = members.index(behind)
        await behind.stop()
        for i in range(KEYS):
            await leader.kv.Put(pb.PutRequest(key=b"k%05d" % i, value=VALUE))
        assert leader.member.log_store.storage.snapshot().metadata.index > 0

        backend = leader.member.backend
        copy_chunks = backend.snapshot_chunks
        copying = threading.Event()
        served = threading.Event()
        copied_in: list[threading.Thread] = []

        def held_copy(chunk_size: int = 1024 * 1024) -> Generator[bytes, None, None]:
            copied_in.append(threading.current_thread())
            copying.set()
            served.wait(10)  # on the event loop, this would keep the request below waiting
            return copy_chunks(chunk_size)

        backend.snapshot_chunks = held_copy  # type: ignore[method-assign]
        members[at] = behind = await _start(tmp_path / names[at], names[at], clients[at], peers)
        async with asyncio.timeout(10):
            while not copying.is_set():
                await asyncio.sleep(0.01)
        try:
            async with asyncio.timeout(5):  # served while the copy is held
                await leader.kv.Put(pb.PutRequest(key=b"during", value=b"snapshot"))
                got = await leader.kv.Range(pb.RangeRequest(key=b"during"))
            assert got.kvs[0].value == b"snapshot"
            assert not served.is_set()
        finally:
            served.set()
        assert copied_in and copied_in[0] is not threading.main_thread()

        async with asyncio.timeout(20):
            while True:
                want = await leader.maintenance.HashKV(pb.HashKVRequest())
                have = await behind.maintenance.HashKV(pb.HashKVRequest())
                if have.header.revision == want.header.revision:
                    break
                await asyncio.sleep(0.05)
        assert have.hash == want.hash
        everything = pb.RangeRequest(key=b"\0", range_end=b"\0", serializable=True)
        assert (await behind.kv.Range(everything)).kvs == (await leader.kv.Range(everything)).kvs
        # the db it replaced was kept aside and then freed, off the loop
        await released(behind.member.backend.path)
    finally:
        for lm in members:
            if not lm.member._stopping:
                await lm.stop()


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")  # a mapping's first line in smaps


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or (line[:1] in "abcdef" and "-" in line.split()[0]):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_reading_a_mapped_image_gives_its_pages_back_as_it_goes(tmp_path: Path) -> None:
    """The follower copies a received image out of its memory map without the map's
    pages piling up in its RSS (``_split_image``)."""
    chunks = [bytes([i]) * (1024 * 1024) for i in range(32)]
    image = tmp_path / "image"
    image.write_bytes(b"".join(len(c).to_bytes(4, "big") + c for c in chunks))
    with image.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        most = 0
        for got, want in zip(_split_image(cast(bytes, mapped)), chunks, strict=True):
            assert got == want
            most = max(most, _mapped_kib(image))
        assert most <= (_DROP_EVERY + 2 * 1024 * 1024) // 1024, most  # not the whole 32 MiB
    # the view over the map was released: closing it (the ``with``) did not raise
