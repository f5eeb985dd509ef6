"""Watches on a single member: events, ranges, filters, history, compaction, cancel."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.client import (
    AsyncClient,
    Client,
    CompactedError,
    EventType,
    Watch,
    WatchResponse,
)


def collect(w: Watch, n: int, timeout: float = 10) -> list[WatchResponse]:
    """The next batches of ``w`` until ``n`` events arrived (cancels ``w`` on timeout)."""
    timer = threading.Timer(timeout, w.cancel)
    timer.start()
    out: list[WatchResponse] = []
    try:
        for batch in w:
            out.append(batch)
            if sum(len(b) for b in out) >= n:
                break
    finally:
        timer.cancel()
    assert sum(len(b) for b in out) >= n, f"only {out} before the timeout"
    return out


def test_watch_key_events_in_order(client: Client, ns: str) -> None:
    k = ns + "k"
    with client.watch(k, prev_kv=True) as w:
        p1 = client.put(k, "1").revision
        p2 = client.put(k, "2").revision
        client.put(ns + "other", "x")
        d = client.delete(k).revision
        events = [e for b in collect(w, 3) for e in b]
    assert [(e.type, e.revision) for e in events] == [
        (EventType.PUT, p1), (EventType.PUT, p2), (EventType.DELETE, d),
    ]  # fmt: skip
    assert events[0].prev_kv is None
    assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
    assert events[2].prev_kv is not None and events[2].prev_kv.value == b"2"
    assert events[2].kv.value == b"" and events[2].key == k.encode()


def test_watch_prefix_filters_and_history(client: Client, ns: str) -> None:
    start = client.put(ns + "a", "1").revision
    client.put(ns + "b", "2")
    client.delete(ns + "a")
    client.put(ns[:-1], "not under the prefix")
    with client.watch(ns, prefix=True, start_revision=start) as w:
        history = [(e.type, e.key) for b in collect(w, 3) for e in b]
    assert history == [
        (EventType.PUT, (ns + "a").encode()),
        (EventType.PUT, (ns + "b").encode()),
        (EventType.DELETE, (ns + "a").encode()),
    ]
    with client.watch(ns, prefix=True, start_revision=start, filters=["noput"]) as w:
        assert [e.type for b in collect(w, 1) for e in b] == [EventType.DELETE]
    with client.watch(
        ns + "a", range_end=ns + "b", start_revision=start, filters=["nodelete"]
    ) as w:
        only = [e for b in collect(w, 1) for e in b]
    assert [(e.type, e.key) for e in only] == [(EventType.PUT, (ns + "a").encode())]


def test_watch_txn_events_share_a_batch(client: Client, ns: str) -> None:
    from cluster.client import Op

    with client.watch(ns, prefix=True) as w:
        r = client.txn([], [Op.put(ns + "x", "1"), Op.put(ns + "y", "2")])
        batch = collect(w, 2)[0]
    assert [e.revision for e in batch] == [r.revision, r.revision]
    assert w.next_revision == r.revision + 1


def test_compacted_start_revision_raises(client: Client, ns: str) -> None:
    old = client.put(ns + "k", "1").revision
    now = client.put(ns + "k", "2").revision
    client.compact(now)
    w = client.watch(ns + "k", start_revision=old)
    with pytest.raises(CompactedError) as e:
        next(w)
    assert e.value.compact_revision == now
    assert f"compact revision {now}" in str(e.value)
    assert list(w) == []  # the watch is over


def test_cancel_from_another_thread_ends_iteration(client: Client, ns: str) -> None:
    w = client.watch(ns + "quiet")
    threading.Timer(0.3, w.cancel).start()
    t0 = time.monotonic()
    assert list(w) == []
    assert time.monotonic() - t0 < 5


def test_progress_notification(client: Client, ns: str) -> None:
    with client.watch(ns + "quiet") as w:
        rev = client.put(ns + "elsewhere", "x").revision
        w.request_progress()
        batch = collect_progress(w)
    assert batch.is_progress_notify and batch.revision >= rev


def collect_progress(w: Watch) -> WatchResponse:
    timer = threading.Timer(10, w.cancel)
    timer.start()
    try:
        return next(iter(w))
    finally:
        timer.cancel()


async def test_async_watch(aclient: AsyncClient, ns: str) -> None:
    async with aclient.watch(ns, prefix=True, prev_kv=True) as w:
        r1 = await aclient.put(ns + "a", "1")
        r2 = await aclient.put(ns + "a", "2")
        seen = []
        async with asyncio.timeout(10):
            async for batch in w:
                seen.extend(batch.events)
                if len(seen) >= 2:
                    break
    assert [e.revision for e in seen] == [r1.revision, r2.revision]
    assert seen[1].prev_kv is not None and seen[1].prev_kv.value == b"1"

    # awaiting registers it; iterating alone starts it too; cancel ends a pending read
    w2 = await aclient.watch(ns + "b", start_revision=r1.revision)
    task = asyncio.ensure_future(anext(w2, None))
    await asyncio.sleep(0.2)
    w2.cancel()
    assert await asyncio.wait_for(task, 5) is None

    await aclient.compact(r2.revision)
    w3 = aclient.watch(ns + "a", start_revision=r1.revision)
    with pytest.raises(CompactedError) as e:
        async with asyncio.timeout(10):
            await anext(w3)
    assert e.value.compact_revision == r2.revision
