"""The Watch servicer over a real in-process member (``live``), driven by the generated stub.

Every write goes through Raft and the apply step, which notifies the hub; the
responses are checked field by field as etcd's clients read them (headers,
created / canceled, compact_revision, events with kv and prev_kv).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc
from cluster.proto.mvccpb import kv_pb2
from cluster.server.watch import WatchServicer
from cluster.watch import ERR_DUPLICATE_ID, ERR_EMPTY_RANGE, WatchStream
from tests.unit.server.live import LiveMember, start_member

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
NOPUT, NODELETE = pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
REQUIRE_LEADER = (("hasleader", "true"),)


@pytest.fixture(autouse=True)
def no_grpc_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """gRPC logs no error: every call ends cleanly, however the client leaves."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.name.startswith("grpc")], errors


class Stream:
    """One Watch call, with helpers that read with a deadline."""

    def __init__(self, live: LiveMember, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.live = live
        self.call: Any = pb_grpc.WatchStub(live.channel).Watch(metadata=metadata)
        self.responses: list[pb.WatchResponse] = []  # what ``events`` read

    async def send(self, req: pb.WatchRequest) -> None:
        await self.call.write(req)

    async def create(self, key: bytes, range_end: bytes = b"", **fields: object) -> int:
        """A create request; its ``created`` response must come next: the watch id."""
        create = pb.WatchCreateRequest(key=key, range_end=range_end, **fields)  # type: ignore[arg-type]
        await self.send(pb.WatchRequest(create_request=create))
        resp = await self.recv()
        assert resp.created and not resp.canceled, resp
        return resp.watch_id

    async def recv(self, timeout: float = 5.0) -> pb.WatchResponse:
        async with asyncio.timeout(timeout):
            resp = await self.call.read()
        assert isinstance(resp, pb.WatchResponse), f"the stream ended: {resp}"
        return resp

    async def events(self, n: int, timeout: float = 10.0) -> list[tuple[int, kv_pb2.Event]]:
        """The next ``n`` events as (watch id, event), checking each response's header."""
        got: list[tuple[int, kv_pb2.Event]] = []
        async with asyncio.timeout(timeout):
            while len(got) < n:
                resp = await self.recv(timeout)
                assert resp.events, f"expected events, got {resp}"
                assert resp.header.revision >= resp.events[-1].kv.mod_revision
                self.responses.append(resp)
                got.extend((resp.watch_id, ev) for ev in resp.events)
        assert len(got) == n, got
        return got

    async def quiet(self, seconds: float = 0.2) -> None:
        """Nothing arrives for ``seconds``."""
        with pytest.raises(TimeoutError):
            resp = await self.recv(seconds)
            raise AssertionError(f"unexpected response {resp}")


async def put(live: LiveMember, key: bytes, value: bytes = b"v") -> int:
    return int((await live.kv.Put(pb.PutRequest(key=key, value=value))).header.revision)


async def delete(live: LiveMember, key: bytes, range_end: bytes = b"") -> int:
    req = pb.DeleteRangeRequest(key=key, range_end=range_end)
    return int((await live.kv.DeleteRange(req)).header.revision)


def summary(events: list[tuple[int, kv_pb2.Event]]) -> list[tuple[int, str, bytes, bytes, int]]:
    """(watch id, type, key, value, mod_revision) of each event."""
    return [
        (wid, kv_pb2.Event.EventType.Name(ev.type), ev.kv.key, ev.kv.value, ev.kv.mod_revision)
        for wid, ev in events
    ]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# -- events ------------------------------------------------------------------------------------


async def test_create_put_delete_events_in_order_with_etcds_headers(live: LiveMember) -> None:
    m = live.member
    s = Stream(live)
    before = m.kv.current_revision
    await s.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
    created = await s.recv()
    assert created == pb.WatchResponse(
        header=pb.ResponseHeader(
            cluster_id=m.cluster_id, member_id=m.id, revision=before, raft_term=m.node.term
        ),
        watch_id=0,
        created=True,
    )
    r1 = await put(live, b"k", b"1")
    await put(live, b"other", b"x")  # not watched
    r2 = await put(live, b"k", b"2")
    r3 = await delete(live, b"k")
    resps = [await s.recv() for _ in range(3)]
    assert [r.header.revision for r in resps] == [r1, r2, r3]
    assert all(r.header.member_id == m.id and r.header.cluster_id == m.cluster_id for r in resps)
    assert resps[0].events[0] == kv_pb2.Event(
        type=PUT,
        kv=kv_pb2.KeyValue(key=b"k", value=b"1", create_revision=r1, mod_revision=r1, version=1),
    )
    assert resps[2].events[0] == kv_pb2.Event(
        type=DELETE, kv=kv_pb2.KeyValue(key=b"k", mod_revision=r3)
    )
    assert summary([(0, ev) for r in resps for ev in r.events]) == [
        (0, "PUT", b"k", b"1", r1),
        (0, "PUT", b"k", b"2", r2),
        (0, "DELETE", b"k", b"", r3),
    ]
    await s.quiet()


async def test_prefix_and_open_ended_ranges(live: LiveMember) -> None:
    s = Stream(live)
    prefix = await s.create(b"/a/", b"/a0")
    from_m = await s.create(b"m", b"\0")  # every key from "m" on
    everything = await s.create(b"", b"\0")  # etcdctl watch "" --prefix
    r = [await put(live, k) for k in (b"/a/1", b"/b", b"/a/2", b"z")]
    got = summary(await s.events(7))
    # a revision's events for each watcher in one response; watchers in creation order
    assert sorted(got, key=lambda e: (e[4], e[0])) == [
        (prefix, "PUT", b"/a/1", b"v", r[0]),
        (everything, "PUT", b"/a/1", b"v", r[0]),
        (everything, "PUT", b"/b", b"v", r[1]),
        (prefix, "PUT", b"/a/2", b"v", r[2]),
        (everything, "PUT", b"/a/2", b"v", r[2]),
        (from_m, "PUT", b"z", b"v", r[3]),
        (everything, "PUT", b"z", b"v", r[3]),
    ]


async def test_prev_kv_only_for_watchers_that_ask(live: LiveMember) -> None:
    r0 = await put(live, b"p", b"old")
    s = Stream(live)
    with_prev = await s.create(b"p", prev_kv=True)
    plain = await s.create(b"p")
    r1 = await put(live, b"p", b"new")
    r2 = await delete(live, b"p")
    evs = dict[tuple[int, int], kv_pb2.Event]()
    for wid, ev in await s.events(4):
        evs[wid, ev.kv.mod_revision] = ev
    old = kv_pb2.KeyValue(key=b"p", value=b"old", create_revision=r0, mod_revision=r0, version=1)
    new = kv_pb2.KeyValue(key=b"p", value=b"new", create_revision=r0, mod_revision=r1, version=2)
    assert evs[with_prev, r1].prev_kv == old
    assert evs[with_prev, r2].prev_kv == new
    assert not evs[plain, r1].HasField("prev_kv") and not evs[plain, r2].HasField("prev_kv")


async def test_filters_drop_puts_or_deletes(live: LiveMember) -> None:
    s = Stream(live)
    no_put = await s.create(b"f", filters=[NOPUT])
    no_delete = await s.create(b"f", filters=[NODELETE])
    r1 = await put(live, b"f")
    r2 = await delete(live, b"f")
    assert sorted(summary(await s.events(2))) == [
        (no_put, "DELETE", b"f", b"", r2),
        (no_delete, "PUT", b"f", b"v", r1),
    ]
    await s.quiet()


async def test_fragments_split_a_large_revision_for_watchers_that_ask(live: LiveMember) -> None:
    live.member.hub.max_response_bytes = 4096
    s = Stream(live)
    frag = await s.create(b"big/", b"big0", fragment=True)
    ops = [
        pb.RequestOp(request_put=pb.PutRequest(key=b"big/%02d" % i, value=b"x" * 1000))
        for i in range(10)
    ]
    rev = (await live.kv.Txn(pb.TxnRequest(success=ops))).header.revision
    parts: list[pb.WatchResponse] = []
    while not parts or parts[-1].fragment:
        parts.append(await s.recv())
    assert len(parts) > 1 and all(p.watch_id == frag and p.header.revision == rev for p in parts)
    keys = [ev.kv.key for p in parts for ev in p.events]
    assert keys == [b"big/%02d" % i for i in range(10)]


# -- history -------------------------------------------------------------------------------------


async def test_replay_from_a_past_revision_then_live_without_gap_or_duplicate(
    live: LiveMember,
) -> None:
    revs = [await put(live, b"h/%d" % i, b"%d" % i) for i in range(300)]
    start = revs[50]
    stop = asyncio.Event()

    async def writer() -> None:  # keeps writing while the watcher replays and goes live
        i = 300
        while not stop.is_set():
            revs.append(await put(live, b"h/%d" % i, b"%d" % i))
            i += 1

    task = asyncio.create_task(writer())
    try:
        s = Stream(live)
        await s.create(b"h/", b"h0", start_revision=start)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
    last = revs[-1]
    got = await s.events(last - start + 1)
    assert [ev.kv.mod_revision for _, ev in got] == list(range(start, last + 1))
    assert [ev.kv.value for _, ev in got] == [b"%d" % i for i in range(50, len(revs))]
    await s.quiet()


async def test_compacted_start_revision_is_canceled_with_compact_revision(
    live: LiveMember,
) -> None:
    revs = [await put(live, b"c", b"%d" % i) for i in range(5)]
    await live.kv.Compact(pb.CompactionRequest(revision=revs[3]))
    s = Stream(live)
    other = await s.create(b"c2")
    await s.send(
        pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"c", start_revision=revs[1]))
    )
    created = await s.recv()
    assert created.created and not created.canceled
    canceled = await s.recv()
    assert canceled.watch_id == created.watch_id
    assert canceled.canceled and canceled.compact_revision == revs[3] and not canceled.events
    # the stream and its other watcher go on
    r = await put(live, b"c2")
    assert summary(await s.events(1)) == [(other, "PUT", b"c2", b"v", r)]
    assert live.member.hub.watcher_count == 1


# -- requests ------------------------------------------------------------------------------------


async def test_cancel_stops_one_watcher(live: LiveMember) -> None:
    s = Stream(live)
    a = await s.create(b"x")
    b = await s.create(b"x")
    await s.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=a)))
    canceled = await s.recv()
    assert (canceled.watch_id, canceled.canceled, canceled.created) == (a, True, False)
    await s.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=99)))  # unknown
    r = await put(live, b"x")
    assert summary(await s.events(1)) == [(b, "PUT", b"x", b"v", r)]
    await s.quiet()
    assert live.member.hub.watcher_count == 1


async def test_several_watches_refusals_and_explicit_ids_on_one_stream(live: LiveMember) -> None:
    s = Stream(live)
    assert [await s.create(b"w%d" % i) for i in range(3)] == [0, 1, 2]
    assert await s.create(b"w7", watch_id=7) == 7
    for create, reason in [
        (pb.WatchCreateRequest(key=b"w8", watch_id=7), ERR_DUPLICATE_ID),
        (pb.WatchCreateRequest(key=b"b", range_end=b"a"), ERR_EMPTY_RANGE),
        (pb.WatchCreateRequest(key=b"a", range_end=b"a"), ERR_EMPTY_RANGE),
    ]:
        await s.send(pb.WatchRequest(create_request=create))
        refused = await s.recv()
        assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
        assert refused.cancel_reason == reason
        assert refused.header.member_id == live.member.id
    await s.send(pb.WatchRequest())  # no request at all: ignored, as etcd
    revs = [await put(live, k) for k in (b"w2", b"w7", b"w0", b"w1")]
    got = summary(await s.events(4))
    assert [(wid, rev) for wid, _, _, _, rev in got] == list(zip([2, 7, 0, 1], revs, strict=True))


async def test_progress_request_is_answered_at_the_current_revision(live: LiveMember) -> None:
    s = Stream(live)
    await s.create(b"q")
    rev = await put(live, b"unwatched")
    await s.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    resp = await s.recv()
    assert resp.watch_id == -1 and not (resp.events or resp.created or resp.canceled)
    assert resp.header.revision == rev and resp.header.member_id == live.member.id


async def test_a_request_failing_in_the_server_leaves_the_stream_working(
    live: LiveMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = WatchStream.watch

    def watch(self: WatchStream, key: bytes, *args: object, **kwargs: object) -> int:
        if key == b"boom":
            raise RuntimeError("kaboom")
        return real(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(WatchStream, "watch", watch)
    s = Stream(live)
    ok = await s.create(b"fine")
    await s.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"boom")))
    refused = await s.recv()
    assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
    assert refused.cancel_reason == "kaboom"
    r = await put(live, b"fine")
    assert summary(await s.events(1)) == [(ok, "PUT", b"fine", b"v", r)]


# -- the end of a call ---------------------------------------------------------------------------


async def test_ending_the_call_frees_its_watchers(live: LiveMember) -> None:
    hub = live.member.hub
    s = Stream(live)
    for key in (b"e1", b"e2", b"e3"):
        await s.create(key)
    # a half-close keeps the stream sending, as etcd's
    await s.call.done_writing()
    r = await put(live, b"e1")
    assert summary(await s.events(1)) == [(0, "PUT", b"e1", b"v", r)]
    assert hub.watcher_count == 3
    s.call.cancel()
    await eventually(lambda: hub.watcher_count == 0)


async def test_a_client_disconnect_frees_its_watchers(live: LiveMember) -> None:
    hub = live.member.hub
    hub.max_pending_events = 50
    channel = grpc.aio.insecure_channel(live.endpoint)
    call = pb_grpc.WatchStub(channel).Watch()
    for key in (b"d1", b"d2"):
        await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
        assert (await call.read()).created
    # output the client never reads, until gRPC's buffers are full and the sender stalls
    for _ in range(100):
        await asyncio.gather(*(put(live, b"d1", b"x" * 8192) for _ in range(20)))
        if hub.unsynced_count:
            break
    assert hub.watcher_count == 2 and hub.unsynced_count == 1
    await channel.close()
    await eventually(lambda: hub.watcher_count == 0)


async def test_a_slow_reader_gets_every_event_and_never_blocks_the_writer(
    live: LiveMember,
) -> None:
    hub = live.member.hub
    hub.max_pending_events = 200  # the hub's own buffer: small, so the reader falls behind
    s = Stream(live)
    await s.create(b"s/", b"s0")
    n, value = 5000, b"x" * 1000
    fell_behind = False

    async def observe() -> None:
        nonlocal fell_behind
        while True:
            fell_behind |= hub.unsynced_count > 0
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(observe())
    revs: list[int] = []
    async with asyncio.timeout(60):  # the writers finish while the watch is not read
        for base in range(0, n, 50):  # 50 writers at a time
            batch = (put(live, b"s/%05d" % i, value) for i in range(base, base + 50))
            revs += await asyncio.gather(*batch)
    watcher.cancel()
    assert fell_behind, "the reader never fell behind: the test proves nothing"
    got = await s.events(n, timeout=60)
    assert [ev.kv.mod_revision for _, ev in got] == sorted(revs)
    assert sorted(ev.kv.key for _, ev in got) == [b"s/%05d" % i for i in range(n)]
    assert all(ev.kv.value == value for _, ev in got)
    # converted long after they were queued, responses keep the revision the hub gave them
    assert all(r.header.revision == r.events[-1].kv.mod_revision for r in s.responses)
    assert s.responses[0].header.revision < live.member.kv.current_revision
    await eventually(lambda: hub.unsynced_count == 0)
    await s.quiet()


# -- require leader ------------------------------------------------------------------------------


async def test_a_stream_requiring_a_leader_is_refused_without_one(tmp_path: Path) -> None:
    lm = await start_member(tmp_path / "m0", extra_peers=2)  # a quorum that never forms
    try:
        s = Stream(lm, REQUIRE_LEADER)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.recv()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "etcdserver: no leader"
        # without the metadata a watch is served from the member's own state
        plain = Stream(lm)
        assert await plain.create(b"k") == 0
        assert lm.member.hub.watcher_count == 1
    finally:
        await lm.stop()


async def test_a_stream_requiring_a_leader_ends_when_the_leader_is_lost(
    live: LiveMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = live.member.hub
    s = Stream(live, REQUIRE_LEADER)
    plain = Stream(live)
    await s.create(b"l")
    await plain.create(b"l")
    servicer_timeout = 0.1  # the live member's --election-timeout
    monkeypatch.setattr(type(live.member), "leader", property(lambda self: 0))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.recv(timeout=5)
    assert time.monotonic() - started >= 2 * servicer_timeout
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "etcdserver: no leader",
    )
    await eventually(lambda: hub.watcher_count == 1)  # the other stream's watcher stays


async def test_the_servicer_takes_the_election_timeout_from_the_config(live: LiveMember) -> None:
    assert WatchServicer(live.member)._election_timeout == 0.1
