"""Peer transport over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from cluster.server.peer_codec import decode_batch, decode_message, encode_batch, encode_message
from cluster.server.transport import (
    _FRAME,
    _HELLO,
    _SNAP_END,
    MAX_FRAME,
    FrameKind,
    PeerTransport,
    TransportOptions,
    frame,
)
from cluster.storage.codec import CodecError

CLUSTER = 0xC1
FAST = TransportOptions(backoff_min=0.01, backoff_max=0.05, snapshot_chunk=1000)


def _app(frm: int, to: int, index: int, n: int = 1) -> Message:
    entries = [Entry(3, index + i, EntryType.NORMAL, b"e%d" % (index + i)) for i in range(n)]
    return Message(MessageType.APP, to=to, frm=frm, term=3, log_term=2, index=index - 1,
                   entries=entries, commit=max(0, index - 2), context=b"ctx")  # fmt: skip


def test_codec_round_trips_every_field() -> None:
    snap = Snapshot(SnapshotMetadata(50, 4, ConfState(frozenset({1, 2}), frozenset({3}))), b"db")
    messages = [
        _app(1, 2, 10, n=3),
        Message(
            MessageType.APP_RESP,
            to=1,
            frm=2,
            term=3,
            index=9,
            reject=True,
            reject_hint=7,
            log_term=2,
        ),
        Message(MessageType.SNAP, to=3, frm=1, term=4, snapshot=snap),
        Message(MessageType.READ_INDEX, to=1, frm=2, context=b"r1"),
    ]
    assert decode_batch(encode_batch(messages)) == messages


def test_codec_rejects_damaged_input() -> None:
    data = encode_batch([_app(1, 2, 10, n=2)])
    for cut in (1, 10, len(data) - 1):
        with pytest.raises(CodecError):
            decode_batch(data[:cut])
    with pytest.raises(CodecError):
        decode_batch(data + b"x")
    bad_type = bytearray(encode_message(_app(1, 2, 1)))
    bad_type[0] = 99
    with pytest.raises(CodecError):
        decode_message(bytes(bad_type))


class _Member:
    def __init__(self, member_id: int, cluster_id: int = CLUSTER) -> None:
        self.id = member_id
        self.received: list[Message] = []
        self.arrived = asyncio.Event()
        self.unreachable: list[int] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.transport = PeerTransport(
            member_id, cluster_id, self._deliver, on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda peer, ok: self.snapshot_status.append((peer, ok)),
            options=FAST,
        )  # fmt: skip
        self.port = 0

    def _deliver(self, messages: list[Message]) -> None:
        self.received.extend(messages)
        self.arrived.set()

    async def start(self) -> _Member:
        self.port = await self.transport.listen("127.0.0.1", 0)
        return self

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def enough() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)


async def _connected(a: _Member, b: _Member) -> None:
    """Wait until a's stream to b is up (messages sent earlier are dropped as unreachable)."""
    peer = a.transport._peers[b.id]
    for _ in range(500):
        if peer.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("peer never connected")


async def test_messages_arrive_in_order_batched_per_peer() -> None:
    a, b, c = [await _Member(i).start() for i in (1, 2, 3)]
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                x.transport.set_peer(y.id, "127.0.0.1", y.port)
    await _connected(a, b)
    await _connected(a, c)
    a.transport.send([_app(1, 2, i) for i in range(1, 201)] + [_app(1, 3, 1)])
    await b.wait_for(200)
    await c.wait_for(1)
    assert [m.index for m in b.received] == list(range(0, 200))
    assert b.received[0].entries[0].data == b"e1"
    for x in (a, b, c):
        await x.transport.close()


async def test_a_peer_of_another_cluster_is_refused() -> None:
    a = await _Member(1).start()
    stranger = await _Member(2, cluster_id=0xBAD).start()
    stranger.transport.set_peer(1, "127.0.0.1", a.port)
    await asyncio.sleep(0.2)
    stranger.transport.send([_app(2, 1, 1)])
    await asyncio.sleep(0.2)
    assert a.received == []
    await a.transport.close()
    await stranger.transport.close()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_FRAME.pack(4, 99), "unknown frame kind 99"),
        (_FRAME.pack(MAX_FRAME + 1, FrameKind.MESSAGES), "exceeds"),
    ],
)
async def test_a_bad_frame_header_closes_the_connection(
    header: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await _Member(1).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
    writer.write(frame(FrameKind.HELLO, _HELLO.pack(CLUSTER, 2, 1)) + header)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the member
    writer.close()
    assert a.received == []
    assert any(reason in r.getMessage() for r in caplog.records)
    await a.transport.close()


async def test_reconnects_after_the_peer_restarts() -> None:
    a, b = await _Member(1).start(), await _Member(2).start()
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    a.transport.send([_app(1, 2, 1)])
    await b.wait_for(1)
    port = b.port
    await b.transport.close()
    await asyncio.sleep(0.1)
    a.transport.send([_app(1, 2, 2)])  # lost: reported, not queued forever
    b2 = _Member(2)
    b2.port = await b2.transport.listen("127.0.0.1", port)
    await _connected(a, b2)
    a.transport.send([_app(1, 2, 3)])
    await b2.wait_for(1)
    assert [m.entries[0].index for m in b2.received] == [3]
    assert 2 in a.unreachable
    await a.transport.close()
    await b2.transport.close()


async def test_a_stalled_peer_does_not_block_the_others() -> None:
    a, fast = await _Member(1).start(), await _Member(2).start()
    # A peer that accepts connections but never reads.
    stalled_readers: list[asyncio.StreamReader] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled_readers.append(reader)
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    stalled_port = server.sockets[0].getsockname()[1]
    a.transport.set_peer(2, "127.0.0.1", fast.port)
    a.transport.set_peer(3, "127.0.0.1", stalled_port)
    await _connected(a, fast)
    await asyncio.sleep(0.1)
    big = [_app(1, 3, i, n=50) for i in range(1, 3000)]  # megabytes nobody reads
    for i in range(1, 101):
        a.transport.send([*big[i * 20 : i * 20 + 20], _app(1, 2, i)])
        await asyncio.sleep(0)
    await fast.wait_for(100, timeout=5)
    assert [m.entries[0].index for m in fast.received] == list(range(1, 101))
    await a.transport.close()
    await fast.transport.close()
    server.close()


async def test_snapshot_travels_in_chunks_and_is_reported() -> None:
    a, b = await _Member(1).start(), await _Member(2).start()
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    data = bytes(range(256)) * 40  # 10 KB in 1000-byte chunks
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))), data)
    a.transport.send([_app(1, 2, 5), Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)])
    await b.wait_for(2)
    got = b.received[1].snapshot
    assert got is not None and got.metadata == snap.metadata
    assert hashlib.sha256(got.data).digest() == hashlib.sha256(data).digest()
    for _ in range(100):
        if a.snapshot_status:
            break
        await asyncio.sleep(0.01)
    assert a.snapshot_status == [(2, True)]
    await a.transport.close()
    await b.transport.close()


def _spool_files(spool: Path) -> list[str]:
    """What this process has open or mapped from ``spool`` (its descriptors and maps)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    maps = Path("/proc/self/maps").read_text().splitlines()
    return [x for x in links + maps if str(spool) in x]


async def test_a_received_snapshot_is_spooled_to_a_nameless_file_and_mapped(
    tmp_path: Path,
) -> None:
    a, b = await _Member(1).start(), await _Member(2).start()
    b.transport.snapshot_spool = str(tmp_path)
    a.transport.set_peer(2, "127.0.0.1", b.port)
    await _connected(a, b)
    data = bytes(range(256)) * 40
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))), data)
    a.transport.send([Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)])
    await b.wait_for(1)
    got = b.received.pop().snapshot
    assert got is not None and isinstance(got.data, mmap.mmap) and got.data[:] == data
    assert os.listdir(tmp_path) == []  # never named: nothing to clean up after a crash
    assert _spool_files(tmp_path)  # the map, in the spool directory's file system
    del got
    gc.collect()
    assert _spool_files(tmp_path) == []  # the last reference gone, so is the file
    await a.transport.close()
    await b.transport.close()


async def _until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def _snapshot_under_way(
    b: _Member, spool: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw peer connection to ``b`` that has begun a snapshot and sent b 1000 bytes of it,
    which b is spooling in ``spool``."""
    b.transport.snapshot_spool = str(spool)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    snap = Snapshot(SnapshotMetadata(77, 5, ConfState(frozenset({1, 2}))))
    begin = Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=snap)
    writer.write(frame(FrameKind.HELLO, _HELLO.pack(CLUSTER, 1, 2)))
    writer.write(frame(FrameKind.SNAP_BEGIN, encode_message(begin, with_snapshot_data=False)))
    writer.write(frame(FrameKind.SNAP_CHUNK, b"x" * 1000))
    await _until(lambda: _spool_files(spool))
    assert _spool_files(spool)
    return reader, writer


async def test_a_snapshot_that_fails_its_checksum_is_refused_and_its_spool_closed(
    tmp_path: Path,
) -> None:
    b = await _Member(2).start()
    reader, writer = await _snapshot_under_way(b, tmp_path)
    writer.write(frame(FrameKind.SNAP_END, _SNAP_END.pack(hashlib.sha256(b"y").digest(), 1000)))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # b hung up
    assert b.received == [] and _spool_files(tmp_path) == []
    writer.close()
    await b.transport.close()


async def test_a_snapshot_cut_off_midway_leaves_no_spool(tmp_path: Path) -> None:
    b = await _Member(2).start()
    _, writer = await _snapshot_under_way(b, tmp_path)
    writer.close()  # the sender went away mid-snapshot
    await _until(lambda: not _spool_files(tmp_path))
    assert _spool_files(tmp_path) == [] and b.received == []
    await b.transport.close()


async def test_a_snapshot_that_cannot_be_spooled_closes_the_connection_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = await _Member(2).start()
    b.transport.snapshot_spool = str(tmp_path / "gone")  # writing there fails
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    begin = Message(MessageType.SNAP, to=2, frm=1, term=5, snapshot=Snapshot(SnapshotMetadata(7)))
    writer.write(frame(FrameKind.HELLO, _HELLO.pack(CLUSTER, 1, 2)))
    writer.write(frame(FrameKind.SNAP_BEGIN, encode_message(begin, with_snapshot_data=False)))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # b hung up
    assert b.received == []
    assert "closed: [Errno 2] No such file or directory" in caplog.text
    writer.close()
    await b.transport.close()


async def test_snapshot_to_an_unreachable_peer_is_reported_failed() -> None:
    a = await _Member(1).start()
    a.transport.set_peer(2, "127.0.0.1", 1)  # nothing listens on port 1
    snap = Snapshot(SnapshotMetadata(5, 1, ConfState(frozenset({1, 2}))), b"x")
    a.transport.send([Message(MessageType.SNAP, to=2, frm=1, term=1, snapshot=snap)])
    assert a.snapshot_status == [(2, False)]
    assert 2 in a.unreachable
    await a.transport.close()
