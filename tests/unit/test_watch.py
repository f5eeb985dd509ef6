"""The watch hub: live fan-out, catch-up from history, slow streams, progress, a random model."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.mvcc import DeleteRangeRequest, KeyValue, KVStore, PutRequest, TxnRequest
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2 as mvccpb
from cluster.watch import (
    ERR_DUPLICATE_ID,
    ERR_EMPTY_RANGE,
    INVALID_WATCH_ID,
    Event,
    EventType,
    WatchHub,
    WatchResponse,
    WatchStream,
    _Intervals,
    event_size,
)
from tests.unit.mvcc.conftest import Member

PUT, DELETE = EventType.PUT, EventType.DELETE


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(str(tmp_path / "member" / "snap" / "db"))
    yield m
    m.close()


@pytest.fixture
def kv(member: Member) -> KVStore:
    return member.store


@pytest.fixture
def hub(kv: KVStore) -> WatchHub:
    return WatchHub(kv)


# -- helpers ------------------------------------------------------------------------------------


def put(hub: WatchHub, key: bytes, value: bytes = b"v") -> int:
    res = hub.store.put(key, value)
    hub.notify(hub.store.current_revision, res.changes)
    return res.revision


def delete(hub: WatchHub, key: bytes, end: bytes = b"") -> int:
    res = hub.store.delete_range(key, end)
    hub.notify(hub.store.current_revision, res.changes)
    return res.revision


def txn(hub: WatchHub, *ops: PutRequest | DeleteRangeRequest) -> int:
    res = hub.store.txn(success=ops)
    hub.notify(hub.store.current_revision, res.changes)
    return hub.store.current_revision


def events(
    resps: list[WatchResponse], watch_id: int | None = None
) -> list[tuple[EventType, bytes, int]]:
    """(type, key, revision) of every event, in order."""
    return [
        (ev.type, ev.kv.key, ev.kv.mod_revision)
        for r in resps
        if watch_id is None or r.watch_id == watch_id
        for ev in r.events
    ]


def sync_all(hub: WatchHub, *streams: WatchStream) -> list[list[WatchResponse]]:
    """Sync and drain until no watcher is behind; what each stream got."""
    got: list[list[WatchResponse]] = [[] for _ in streams]
    for _ in range(10000):
        for out, s in zip(got, streams, strict=True):
            out += s.take()
        if hub.sync_unsynced() == 0 and not any(s.pending for s in streams):
            return got
    raise AssertionError("watchers never caught up")


# -- encoding sizes -----------------------------------------------------------------------------


def test_event_sizes_are_the_protobuf_sizes() -> None:
    kvs = [
        KeyValue(b"k"),
        KeyValue(b"key", 2, 9, 3, b"value" * 40, 7),
        KeyValue(b"x" * 300, 1 << 40, 1 << 41, 1, b"", -5),
    ]
    for kv in kvs:
        for prev in (None, kvs[1]):
            for kind in (PUT, DELETE):
                ev = Event(kind, kv, prev)
                msg = mvccpb.Event(
                    type=mvccpb.Event.DELETE if kind == DELETE else mvccpb.Event.PUT, kv=_pb_kv(kv)
                )
                if prev is not None:
                    msg.prev_kv.CopyFrom(_pb_kv(prev))
                assert pb.WatchResponse(events=[msg]).ByteSize() == event_size(ev)


def _pb_kv(kv: KeyValue) -> mvccpb.KeyValue:
    return mvccpb.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


# -- live events --------------------------------------------------------------------------------


def test_put_and_delete_events(hub: WatchHub) -> None:
    s = hub.new_stream()
    wid = s.watch(b"foo")
    assert s.take() == [WatchResponse(wid, 1, created=True)]
    put(hub, b"foo", b"v1")  # 2
    assert s.take() == [WatchResponse(wid, 2, [Event(PUT, KeyValue(b"foo", 2, 2, 1, b"v1"))])]
    put(hub, b"bar")  # 3: not watched
    put(hub, b"foo", b"v2")  # 4
    delete(hub, b"foo")  # 5
    # not drained between the two: the second joins the first's response, still queued
    assert s.take() == [
        WatchResponse(
            wid,
            5,
            [
                Event(PUT, KeyValue(b"foo", 2, 4, 2, b"v2")),
                Event(DELETE, KeyValue(b"foo", mod_revision=5)),
            ],
        ),
    ]


def test_range_forms(hub: WatchHub) -> None:
    s = hub.new_stream()
    one = s.watch(b"b")
    prefix = s.watch(b"b", b"c")
    from_key = s.watch(b"b", b"\x00")
    every = s.watch(b"", b"\x00")
    empty_key = s.watch(b"")  # etcd reads an empty key as b"\0"
    s.take()
    for key in (b"\x00", b"a", b"b", b"b\x00", b"bz", b"c", b"zz"):
        put(hub, key)
    got = s.take()
    assert [k for _, k, _ in events(got, one)] == [b"b"]
    assert [k for _, k, _ in events(got, prefix)] == [b"b", b"b\x00", b"bz"]
    assert [k for _, k, _ in events(got, from_key)] == [b"b", b"b\x00", b"bz", b"c", b"zz"]
    assert len(events(got, every)) == 7
    assert [k for _, k, _ in events(got, empty_key)] == [b"\x00"]


def test_refused_watches(hub: WatchHub) -> None:
    s = hub.new_stream()
    assert s.watch(b"b", b"a") == INVALID_WATCH_ID
    assert s.watch(b"b", b"b") == INVALID_WATCH_ID
    assert s.watch(b"k", start_revision=-1) == INVALID_WATCH_ID
    assert s.take() == [
        WatchResponse(-1, 1, created=True, canceled=True, cancel_reason=ERR_EMPTY_RANGE),
        WatchResponse(-1, 1, created=True, canceled=True, cancel_reason=ERR_EMPTY_RANGE),
        WatchResponse(
            -1,
            1,
            created=True,
            canceled=True,
            cancel_reason="etcdserver: mvcc: required revision has been compacted",
        ),
    ]
    assert hub.watcher_count == 0


def test_watch_ids(hub: WatchHub) -> None:
    s, other = hub.new_stream(), hub.new_stream()
    assert [s.watch(b"k") for _ in range(2)] == [0, 1]
    assert other.watch(b"k") == 0  # ids are per stream
    assert s.watch(b"k", watch_id=7) == 7
    assert s.watch(b"k", watch_id=3) == 3
    assert s.watch(b"k") == 2
    assert s.watch(b"k") == 4  # 3 is taken
    s.take()
    assert s.watch(b"k", watch_id=7) == INVALID_WATCH_ID
    assert s.take() == [
        WatchResponse(-1, 1, created=True, canceled=True, cancel_reason=ERR_DUPLICATE_ID)
    ]
    assert sorted(s.watch_ids()) == [0, 1, 2, 3, 4, 7]


def test_txn_events_come_in_one_response_in_order(hub: WatchHub) -> None:
    s = hub.new_stream()
    wid = s.watch(b"a", b"z")
    put(hub, b"c")
    s.take()
    rev = txn(hub, PutRequest(b"d"), DeleteRangeRequest(b"c"), PutRequest(b"b"), PutRequest(b"zz"))
    got = s.take()
    assert len(got) == 1
    assert got[0].revision == rev
    assert events(got, wid) == [(PUT, b"d", rev), (DELETE, b"c", rev), (PUT, b"b", rev)]


def test_cancel(hub: WatchHub) -> None:
    s = hub.new_stream()
    a, b = s.watch(b"k"), s.watch(b"k")
    put(hub, b"k")  # 2
    assert s.cancel(a)
    put(hub, b"k")  # 3
    got = s.take()
    # events queued before the cancel still come, before its answer; b's later event
    # joins its response still queued (the cancel is a's, so nothing of b's is passed)
    assert [(r.watch_id, r.revision, r.canceled, len(r.events)) for r in got[2:]] == [
        (a, 2, False, 1),
        (b, 3, False, 2),
        (a, 2, True, 0),
    ]
    assert not s.cancel(a)
    assert not s.cancel(99)
    assert s.take() == []
    assert hub.watcher_count == 1


def test_close_removes_every_watcher(hub: WatchHub) -> None:
    s = hub.new_stream()
    s.watch(b"k")
    s.watch(b"a", b"z")
    s.watch(b"k", start_revision=1)
    assert hub.watcher_count == 3
    s.close()
    assert hub.watcher_count == 0 and hub.unsynced_count == 0
    put(hub, b"k")
    assert s.take() == []
    with pytest.raises(RuntimeError):
        s.watch(b"k")


def test_filters_and_prev_kv(hub: WatchHub) -> None:
    s = hub.new_stream()
    no_put = s.watch(b"k", no_put=True)
    no_delete = s.watch(b"k", no_delete=True)
    prev = s.watch(b"k", prev_kv=True)
    put(hub, b"k", b"v1")  # 2: a creation has no previous value
    put(hub, b"k", b"v2")  # 3
    delete(hub, b"k")  # 4
    put(hub, b"k", b"v3")  # 5: created again
    got = s.take()
    assert events(got, no_put) == [(DELETE, b"k", 4)]
    assert events(got, no_delete) == [(PUT, b"k", 2), (PUT, b"k", 3), (PUT, b"k", 5)]
    assert [ev.prev_kv for r in got if r.watch_id == prev for ev in r.events] == [
        None,
        KeyValue(b"k", 2, 2, 1, b"v1"),
        KeyValue(b"k", 2, 3, 2, b"v2"),
        None,
    ]
    # a revision whose events are all filtered out sends nothing
    assert [r.revision for r in got if r.watch_id == no_put and not r.created] == [4]


def test_prev_kv_when_replaying_and_after_compaction(hub: WatchHub) -> None:
    put(hub, b"k", b"v1")  # 2
    put(hub, b"k", b"v2")  # 3
    put(hub, b"k", b"v3")  # 4
    hub.store.compact(3)
    s = hub.new_stream()
    wid = s.watch(b"k", start_revision=3, prev_kv=True)
    (got,) = sync_all(hub, s)
    evs = [ev for r in got if r.watch_id == wid for ev in r.events]
    # the value before 3 was compacted away: none, as etcd
    assert [(ev.kv.value, ev.prev_kv) for ev in evs] == [
        (b"v2", None),
        (b"v3", KeyValue(b"k", 2, 3, 2, b"v2")),
    ]


# -- start revisions ----------------------------------------------------------------------------


def test_start_zero_is_the_next_revision(hub: WatchHub) -> None:
    put(hub, b"k")  # 2
    s = hub.new_stream()
    wid = s.watch(b"k")
    assert s.take() == [WatchResponse(wid, 2, created=True)]
    assert hub.unsynced_count == 0
    put(hub, b"k")  # 3
    assert events(s.take()) == [(PUT, b"k", 3)]


def test_past_start_replays_then_goes_live(hub: WatchHub) -> None:
    for i in range(5):
        put(hub, b"k", b"%d" % i)  # 2..6
    s = hub.new_stream()
    wid = s.watch(b"k", start_revision=3)
    assert hub.unsynced_count == 1
    assert s.take() == [WatchResponse(wid, 6, created=True)]
    # writes before the catch-up are caught up too, never twice
    put(hub, b"k")  # 7
    put(hub, b"other")  # 8
    assert s.take() == []
    assert hub.sync_unsynced() == 0
    put(hub, b"k")  # 9, live
    got = s.take()
    assert events(got) == [(PUT, b"k", r) for r in (3, 4, 5, 6, 7, 9)]
    # the catch-up's response (everything to 8) was still queued: 9 joined it
    assert [r.revision for r in got] == [9]


def test_future_start_waits(hub: WatchHub) -> None:
    s = hub.new_stream()
    wid = s.watch(b"k", start_revision=4)
    assert s.take() == [WatchResponse(wid, 1, created=True)]
    put(hub, b"k")  # 2
    put(hub, b"k")  # 3
    put(hub, b"k")  # 4
    put(hub, b"k")  # 5
    assert events(s.take()) == [(PUT, b"k", 4), (PUT, b"k", 5)]


def test_compacted_start(hub: WatchHub) -> None:
    for _ in range(4):
        put(hub, b"k")  # 2..5
    hub.store.compact(4)
    s = hub.new_stream()
    wid = s.watch(b"k", start_revision=3)
    assert s.take() == [
        WatchResponse(wid, 5, created=True),
        WatchResponse(wid, 5, canceled=True, compact_revision=4),
    ]
    assert hub.watcher_count == 0
    assert not s.cancel(wid)
    # at the compact revision is fine: its history is kept
    wid = s.watch(b"k", start_revision=4)
    (got,) = sync_all(hub, s)
    assert events(got, wid) == [(PUT, b"k", 4), (PUT, b"k", 5)]


def test_compacted_while_behind(kv: KVStore) -> None:
    hub = WatchHub(kv, max_pending_events=1)
    s = hub.new_stream()
    wid = s.watch(b"k")
    s.take()
    put(hub, b"k")  # 2: queued
    put(hub, b"k")  # 3: the buffer is full -> behind
    put(hub, b"k")  # 4
    assert hub.unsynced_count == 1
    hub.store.compact(4)
    assert hub.sync_unsynced() == 0
    got = s.take()
    assert events(got) == [(PUT, b"k", 2)]
    assert got[-1] == WatchResponse(wid, 4, canceled=True, compact_revision=4)
    assert hub.watcher_count == 0


# -- slow streams and catch-up ------------------------------------------------------------------


def test_slow_stream_holds_back_neither_writers_nor_others(
    kv: KVStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pokes: list[int] = []
    hub = WatchHub(kv, max_pending_events=4, on_unsynced=lambda: pokes.append(1))
    slow, fast = hub.new_stream(), hub.new_stream()
    slow_ids = [slow.watch(b"k"), slow.watch(b"a", b"z")]
    fast_id = fast.watch(b"a", b"z")
    slow.take()
    fast.take()

    def no_history(*args: object, **kwargs: object) -> object:
        raise AssertionError("notify read the store's history")

    monkeypatch.setattr(kv, "changes", no_history)
    got_fast: list[WatchResponse] = []
    for i in range(50):
        put(hub, b"k", b"%d" % i)  # 2..51
        got_fast += fast.take()
    monkeypatch.undo()
    assert events(got_fast, fast_id) == [(PUT, b"k", r) for r in range(2, 52)]
    # the slow stream holds at most one response past its limit; its watchers fell behind
    assert slow.pending_events <= 4 + 1
    assert hub.unsynced_count == 2
    assert pokes
    # nothing to do while its output is full
    assert hub.sync_unsynced() == 2
    (got_slow,) = sync_all(hub, slow)
    for wid in slow_ids:
        assert events(got_slow, wid) == [(PUT, b"k", r) for r in range(2, 52)]


def test_a_stuck_stream_does_not_hold_back_catch_up_of_others(kv: KVStore) -> None:
    hub = WatchHub(kv, max_pending_events=1)
    for _ in range(50):
        put(hub, b"k")  # 2..51
    stuck, other = hub.new_stream(), hub.new_stream()
    stuck.watch(b"k", start_revision=2)  # far behind, and its reader never comes back
    wid = other.watch(b"k", start_revision=40)
    got: list[WatchResponse] = []
    for _ in range(5):
        hub.sync_unsynced(max_rows=5)
        got += other.take()
    assert hub.unsynced_count == 1
    assert events(got, wid) == [(PUT, b"k", r) for r in range(40, 52)]
    assert stuck.pending_events <= 5


def test_sync_reads_bounded_whole_revisions(hub: WatchHub) -> None:
    for _ in range(10):
        txn(hub, PutRequest(b"a"), PutRequest(b"b"), PutRequest(b"c"))  # 2..11, 3 rows each
    s = hub.new_stream()
    wid = s.watch(b"b", start_revision=2)
    s.take()
    calls = 0
    got: list[WatchResponse] = []
    while hub.unsynced_count:
        hub.sync_unsynced(max_rows=4)  # two revisions (6 rows) at a time
        got += s.take()
        calls += 1
    assert calls == 5
    assert [r.revision for r in got] == [3, 5, 7, 9, 11]
    assert events(got, wid) == [(PUT, b"b", r) for r in range(2, 12)]


def test_catch_up_splits_big_responses_between_revisions(kv: KVStore) -> None:
    hub = WatchHub(kv, max_response_bytes=1000)
    for _ in range(6):
        txn(hub, PutRequest(b"a", b"x" * 150), PutRequest(b"b", b"y" * 150))  # ~320 bytes each
    s = hub.new_stream()
    wid = s.watch(b"a", b"c", start_revision=2)
    (got,) = sync_all(hub, s)
    got = got[1:]
    assert len(got) > 1
    assert events(got, wid) == [(PUT, k, r) for r in range(2, 8) for k in (b"a", b"b")]
    for r in got:  # whole revisions, each header the last revision sent
        assert len(r.events) % 2 == 0 and not r.fragment
        assert r.revision == r.events[-1].kv.mod_revision


def test_fragments(kv: KVStore) -> None:
    hub = WatchHub(kv, max_response_bytes=500)
    s = hub.new_stream()
    whole = s.watch(b"a", b"z")
    frag = s.watch(b"a", b"z", fragment=True)
    s.take()
    rev = txn(hub, *(PutRequest(k, b"v" * 100) for k in (b"a", b"b", b"c", b"d", b"e")))
    got = s.take()
    assert [len(r.events) for r in got if r.watch_id == whole] == [5]
    parts = [r for r in got if r.watch_id == frag]
    assert len(parts) > 1
    assert [r.fragment for r in parts] == [True] * (len(parts) - 1) + [False]
    assert all(r.revision == rev for r in parts)
    assert events(parts) == events(got, whole)
    put(hub, b"a")  # small: not fragmented
    assert [r.fragment for r in s.take()] == [False, False]


def test_wake_fires_when_output_appears(hub: WatchHub) -> None:
    wakes: list[int] = []
    s = hub.new_stream(wake=lambda: wakes.append(1))
    s.watch(b"k")
    assert len(wakes) == 1
    put(hub, b"k")  # the queue was not empty: no new wake
    assert len(wakes) == 1
    assert len(s.take()) == 2
    put(hub, b"other")
    assert len(wakes) == 1
    put(hub, b"k")
    assert len(wakes) == 2
    assert s.take(max_responses=1) and s.pending == 0


def test_queued_responses_take_their_watchers_later_events(hub: WatchHub) -> None:
    s = hub.new_stream()
    a, b = s.watch(b"k"), s.watch(b"j")
    s.take()
    put(hub, b"k")  # 2
    put(hub, b"j")  # 3
    put(hub, b"k")  # 4
    txn(hub, PutRequest(b"k", b"x"), PutRequest(b"j", b"x"))  # 5
    assert s.pending == 2 and s.pending_events == 5
    got = s.take()
    # one response per watcher, whole revisions in order, each header its last revision
    assert [(r.watch_id, r.revision) for r in got] == [(a, 5), (b, 5)]
    assert events(got, a) == [(PUT, b"k", 2), (PUT, b"k", 4), (PUT, b"k", 5)]
    assert events(got, b) == [(PUT, b"j", 3), (PUT, b"j", 5)]
    assert s.pending_events == 0 and s.pending_bytes == 0
    put(hub, b"k")  # 6: what was taken is not joined
    assert [(r.watch_id, r.revision, len(r.events)) for r in s.take()] == [(a, 6, 1)]


def test_no_event_joins_a_response_queued_before_a_later_one(kv: KVStore) -> None:
    hub = WatchHub(kv)
    s = hub.new_stream()
    a = s.watch(b"k", progress_notify=True)
    s.take()
    put(hub, b"k")  # 2
    s.request_progress()  # the whole stream's: closes every open response
    put(hub, b"k")  # 3
    hub.progress_tick()  # a was sent an event since the last tick: none
    hub.progress_tick()  # a's own progress: closes a's open response
    put(hub, b"k")  # 4
    b = s.watch(b"j")
    put(hub, b"k")  # 5: a's created response above is b's, so this joins a's
    got = s.take()
    assert [(r.watch_id, r.revision, len(r.events), r.created) for r in got] == [
        (a, 2, 1, False),
        (INVALID_WATCH_ID, 2, 0, False),
        (a, 3, 1, False),
        (a, 3, 0, False),
        (a, 5, 2, False),
        (b, 4, 0, True),
    ]
    assert events(got, a) == [(PUT, b"k", r) for r in (2, 3, 4, 5)]


def test_a_joined_response_stays_under_the_response_limit(kv: KVStore) -> None:
    hub = WatchHub(kv, max_response_bytes=600)
    s = hub.new_stream()
    wid = s.watch(b"k")
    s.take()
    for _ in range(6):
        put(hub, b"k", b"x" * 150)  # 2..7, each event about 170 bytes
    got = s.take()
    assert events(got) == [(PUT, b"k", r) for r in range(2, 8)]
    assert [len(r.events) for r in got] == [3, 3]
    assert [r.revision for r in got] == [4, 7]
    for r in got:
        assert r.watch_id == wid
        assert 64 + sum(event_size(ev) for ev in r.events) < hub.max_response_bytes


# -- progress -----------------------------------------------------------------------------------


def test_progress_tick(kv: KVStore) -> None:
    hub = WatchHub(kv, max_pending_events=1, progress_interval=5.0)
    assert hub.progress_interval == 5.0
    s = hub.new_stream()
    wid = s.watch(b"k", progress_notify=True)
    plain = s.watch(b"k")
    s.take()
    put(hub, b"other")  # 2
    hub.progress_tick()
    assert s.take() == [WatchResponse(wid, 2)]
    assert s.take()[0:0] == []
    put(hub, b"k")  # 3: sent an event, so the next tick is elided
    s.take()
    hub.progress_tick()
    assert s.take() == []
    hub.progress_tick()
    assert s.take() == [WatchResponse(wid, 3)]
    # behind: no progress until caught up
    put(hub, b"k")  # 4 for wid: queued; plain falls behind
    put(hub, b"k")  # 5: wid falls behind too
    hub.progress_tick()
    hub.progress_tick()
    got = s.take()
    assert all(not r.is_progress_notify for r in got)
    sync_all(hub, s)
    hub.progress_tick()
    hub.progress_tick()
    assert s.take() == [WatchResponse(wid, 5)]
    assert plain not in [r.watch_id for r in got if r.is_progress_notify]


def test_request_progress(kv: KVStore) -> None:
    hub = WatchHub(kv, max_pending_events=1)
    s = hub.new_stream()
    s.request_progress()
    assert s.take() == []  # no watchers: nothing, as etcd
    a = s.watch(b"a")
    s.take()
    put(hub, b"x")  # 2
    s.request_progress()
    assert s.take() == [WatchResponse(INVALID_WATCH_ID, 2)]
    b = s.watch(b"b", start_revision=1)  # behind
    s.request_progress()
    s.request_progress()  # one answer for both
    assert [r.created for r in s.take()] == [True]
    assert hub.sync_unsynced() == 0
    assert s.take() == [WatchResponse(INVALID_WATCH_ID, 2)]
    # a progress answer waiting on a behind watcher that is canceled instead
    s.watch(b"c", start_revision=1)
    s.request_progress()
    c = s.watch_ids()[-1]
    s.take()
    s.cancel(c)
    assert s.take() == [WatchResponse(c, 2, canceled=True), WatchResponse(INVALID_WATCH_ID, 2)]
    assert {a, b} == set(s.watch_ids())


# -- revisions, restore -------------------------------------------------------------------------


def test_notify_ignores_repeats_and_catches_up_skipped_revisions(hub: WatchHub) -> None:
    s = hub.new_stream()
    s.watch(b"k")
    s.take()
    res = hub.store.put(b"k")  # 2
    hub.notify(2, res.changes)
    hub.notify(2, res.changes)  # again: ignored
    hub.notify(2, [])
    hub.store.put(b"k")  # 3: the member forgot to notify
    res = hub.store.put(b"k")  # 4
    hub.notify(4, res.changes)
    assert hub.unsynced_count == 1
    (got,) = sync_all(hub, s)
    assert events(got) == [(PUT, b"k", 2), (PUT, b"k", 3), (PUT, b"k", 4)]


def test_restore_replays_the_new_store(member: Member, hub: WatchHub) -> None:
    s = hub.new_stream()
    wid = s.watch(b"k")
    future = s.watch(b"k", start_revision=100)
    put(hub, b"k")  # 2
    put(hub, b"k")  # 3
    # another member's backend arrives: more history than was notified here
    new = member.restart()
    new.put(b"k")  # 4
    new.put(b"j")  # 5
    new.put(b"k")  # 6
    hub.restore(new)
    assert hub.store is new and hub.revision == 6
    assert hub.unsynced_count == 2
    (got,) = sync_all(hub, s)
    assert events(got, wid) == [(PUT, b"k", r) for r in (2, 3, 4, 6)]
    put(hub, b"k")  # 7
    assert events(s.take(), wid) == [(PUT, b"k", 7)]
    assert events(got, future) == []


# -- the interval index -------------------------------------------------------------------------


def test_intervals_against_brute_force() -> None:
    rng = random.Random(3)
    alphabet = [bytes([c]) for c in b"abcdef"] + [b"", b"b\x00", b"cc"]
    keys = sorted({a + b for a in alphabet for b in alphabet} - {b""})
    index = _Intervals()
    live: list[tuple[bytes, bytes]] = []
    for _ in range(2000):
        if live and rng.random() < 0.45:
            iv = live.pop(rng.randrange(len(live)))
            if iv not in live:
                index.remove(iv)
        else:
            start = rng.choice(keys)
            end = rng.choice([b"", *[k for k in keys if k > start]])
            iv = (start, end)
            if iv not in live:
                index.add(iv)
            live.append(iv)
        probe = rng.choice([*keys, b"\x00", b"zz"])
        want = {iv for iv in live if iv[0] <= probe and (not iv[1] or probe < iv[1])}
        assert set(index.stab(probe)) == want
    for iv in set(live):
        index.remove(iv)
    assert len(index) == 0


# -- the random model ---------------------------------------------------------------------------

KEYS = [b"a", b"b", b"c", b"d", b"e"]


@dataclass
class Spec:
    """One watcher of the model, and what it was sent."""

    stream: int
    watch_id: int
    key: bytes
    end: bytes  # as range_end
    start: int  # the first revision it may see
    prev_kv: bool
    no_put: bool
    no_delete: bool
    fragment: bool
    canceled: bool = False
    compacted: int = 0
    got: list[Event] = field(default_factory=list)
    checks: list[tuple[int, int]] = field(default_factory=list)  # (revision R, events got by then)
    open_fragment: int = 0  # the revision of an unfinished fragmented response

    def holds(self, key: bytes) -> bool:
        if not self.end:
            return key == self.key
        if self.end == b"\x00":
            return key >= self.key
        return self.key <= key < self.end


class Model:
    def __init__(self, hub: WatchHub, rng: random.Random, n_streams: int) -> None:
        self.hub = hub
        self.rng = rng
        self.streams = [hub.new_stream() for _ in range(n_streams)]
        self.specs: dict[tuple[int, int], Spec] = {}
        self.active: list[dict[int, Spec]] = [{} for _ in self.streams]
        self.history: list[KeyValue] = []

    # -- actions ---
    def write(self) -> None:
        kv, rng = self.hub.store, self.rng
        roll = rng.random()
        if roll < 0.5:
            res = kv.put(rng.choice(KEYS), b"%d" % rng.randrange(1000))
            changes = res.changes
        elif roll < 0.7:
            a, b = sorted(rng.sample(KEYS, 2))
            changes = kv.delete_range(a, rng.choice([b"", b, b"\x00"])).changes
        else:
            ops: list[PutRequest | DeleteRangeRequest | TxnRequest] = [
                PutRequest(k, b"t%d" % rng.randrange(100))
                if rng.random() < 0.6
                else DeleteRangeRequest(k)
                for k in rng.sample(KEYS, rng.randrange(1, 5))
            ]
            changes = kv.txn(success=ops).changes
        self.history += changes
        if changes:
            self.hub.notify(kv.current_revision, changes)

    def watch(self) -> None:
        rng, hub = self.rng, self.hub
        i = rng.randrange(len(self.streams))
        key = rng.choice(KEYS)
        end = rng.choice([b"", b"", b"\x00", *(k for k in KEYS if k > key)])
        cur, compact = hub.revision, hub.store.compact_revision
        roll = rng.random()
        if roll < 0.4:
            start_req = 0
        elif roll < 0.8:
            start_req = rng.randrange(max(compact, 1), cur + 1)
        elif roll < 0.95 or compact < 2:
            start_req = cur + rng.randrange(1, 4)
        else:
            start_req = rng.randrange(1, compact)  # compacted
        prev_kv, fragment = rng.random() < 0.3, rng.random() < 0.3
        no_put, no_delete = rng.random() < 0.1, rng.random() < 0.1
        wid = self.streams[i].watch(
            key,
            end,
            start_req,
            prev_kv=prev_kv,
            no_put=no_put,
            no_delete=no_delete,
            progress_notify=rng.random() < 0.5,
            fragment=fragment,
        )
        assert wid >= 0
        start = start_req if start_req else cur + 1
        self.specs[(i, wid)] = Spec(i, wid, key, end, start, prev_kv, no_put, no_delete, fragment)

    def cancel(self) -> None:
        live = [s for s in self.specs.values() if not s.canceled]
        if live:
            spec = self.rng.choice(live)
            self.streams[spec.stream].cancel(spec.watch_id)

    def drain(self, i: int) -> None:
        active = self.active[i]  # as the stream announced them, in its order
        for r in self.streams[i].take():
            if r.watch_id == INVALID_WATCH_ID:  # a progress answer for the whole stream
                assert r.is_progress_notify and active
                for spec in active.values():
                    assert not spec.open_fragment
                    spec.checks.append((r.revision, len(spec.got)))
                continue
            spec = self.specs[(i, r.watch_id)]
            assert not spec.canceled, "a response after the watcher's end"
            if r.created:
                assert r.watch_id not in active and not r.events
                active[r.watch_id] = spec
                continue
            assert r.watch_id in active, "a response before the created one"
            if r.canceled:
                spec.canceled = True
                spec.compacted = r.compact_revision
                del active[r.watch_id]
                continue
            if r.is_progress_notify:
                assert not spec.open_fragment
                spec.checks.append((r.revision, len(spec.got)))
                continue
            revs = [ev.kv.mod_revision for ev in r.events]
            assert revs == sorted(revs) and revs[-1] <= r.revision
            if spec.got:
                last = spec.got[-1].kv.mod_revision
                # a revision is never split, except by fragments of one response
                assert revs[0] > last or (spec.open_fragment and revs[0] == last)
            if r.fragment:
                assert spec.fragment and len(set(revs)) == 1
            if spec.open_fragment or r.fragment:
                assert revs[0] == revs[-1] == r.revision
            spec.open_fragment = r.revision if r.fragment else 0
            spec.got += r.events
            if not r.fragment:
                spec.checks.append((r.revision, len(spec.got)))

    # -- verification ---
    def expected(self, spec: Spec) -> list[KeyValue]:
        out = []
        for kv in self.history:
            if kv.mod_revision < spec.start or not spec.holds(kv.key):
                continue
            if (spec.no_put and kv.create_revision) or (spec.no_delete and not kv.create_revision):
                continue
            out.append(kv)
        return out

    def prev(self, kv: KeyValue) -> KeyValue | None:
        if kv.create_revision == kv.mod_revision:
            return None
        before = [c for c in self.history if c.key == kv.key and c.mod_revision < kv.mod_revision]
        return before[-1] if before and before[-1].create_revision else None

    def verify(self) -> None:
        compact = self.hub.store.compact_revision
        for spec in self.specs.values():
            want = self.expected(spec)
            got = [ev.kv for ev in spec.got]
            if spec.canceled:
                # a prefix, cut between revisions
                assert got == want[: len(got)], spec
                if len(got) < len(want) and got:
                    assert want[len(got)].mod_revision > got[-1].mod_revision
                if spec.compacted:
                    assert all(kv.mod_revision < spec.compacted for kv in got)
            else:
                assert got == want, spec
            for ev in spec.got:
                assert ev.type == (PUT if ev.kv.create_revision else DELETE)
                if spec.prev_kv:
                    prev = self.prev(ev.kv)
                    assert ev.prev_kv == prev or (
                        ev.prev_kv is None and ev.kv.mod_revision - 1 < compact
                    ), (ev, prev)
                else:
                    assert ev.prev_kv is None
            # a header (or progress) revision R: every event up to R was sent by then
            for rev, n in spec.checks:
                assert n == sum(1 for kv in want if kv.mod_revision <= rev), (spec, rev, n)


@pytest.mark.parametrize("seed", range(6))
def test_random_histories(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    member = Member(str(tmp_path / "member" / "snap" / "db"))
    try:
        hub = WatchHub(
            member.store,
            max_pending_events=rng.choice([1, 3, 8]),
            max_response_bytes=rng.choice([120, 300, 100000]),
        )
        model = Model(hub, rng, n_streams=4)
        slow = {2, 3}
        for _ in range(5):
            model.watch()
        for _ in range(600):
            roll = rng.random()
            if roll < 0.55:
                model.write()
            elif roll < 0.65:
                model.watch()
            elif roll < 0.68:
                model.cancel()
            elif roll < 0.8:
                hub.sync_unsynced(max_rows=rng.randrange(1, 40))
            elif roll < 0.81:
                cur, compact = hub.revision, hub.store.compact_revision
                if cur > max(compact, 1) + 80:
                    hub.store.compact(rng.randrange(max(compact, 1) + 1, cur - 60))
            elif roll < 0.87:
                hub.progress_tick()
            elif roll < 0.92:
                rng.choice(model.streams).request_progress()
            elif roll < 0.94:
                member.backend.commit()
            for i in range(len(model.streams)):
                if i not in slow or rng.random() < 0.1:
                    model.drain(i)
        for _ in range(10000):
            for i in range(len(model.streams)):
                model.drain(i)
            if hub.sync_unsynced(max_rows=50) == 0 and not any(s.pending for s in model.streams):
                break
        model.verify()
        specs = model.specs.values()
        assert sum(1 for s in specs if s.got and not s.canceled) >= 10
    finally:
        member.close()
