"""Watchers: etcd's watchableStore (mvcc/watchable_store.go, watcher_group.go, watcher.go).

A ``WatchHub`` sits beside a ``KVStore``. The member's apply step calls
``hub.notify(revision, changes)`` after every write that changed something;
each gRPC Watch stream is a ``WatchStream`` (``hub.new_stream()``) holding
many watchers, whose output, ``WatchResponse`` records in order, its servicer
drains with ``take()`` when the stream's wake callback says there is some.

Every watcher is in one of two groups, as in etcd:

- synced: it has been given every event up to the hub's revision (the last
  one notified). ``notify`` hands the new revision's events to the synced
  watchers whose range holds their keys (a dict for single keys, a stabbing
  index for ranges), so it costs O(log + matching watchers), never a store
  read (except for the previous values of ``prev_kv`` watchers).
- unsynced: it is behind. ``sync_unsynced`` catches such watchers up from the
  store's history (``KVStore.changes``), a bounded number of rows per call,
  then moves them to synced. A watcher starts here when it asks for a past
  revision; it lands here when its stream's output buffer is full at a
  notify (etcd's victims: a slow reader never slows writers or other
  streams, and its events are read back from the store, not held in
  memory); all synced watchers land here when the store is replaced
  (``restore``) or a notified revision was skipped. A watcher whose history
  was compacted away meanwhile gets etcd's compacted response and is gone.

What each watcher receives: every event of its key range from its start
revision on, in revision order, exactly once, all of a revision's events in
one response (unless it asked for ``fragment`` and they are bigger than the
response limit). Events for a watcher whose last response is still queued join it,
within the response limit, so a stream drained slower than events come sends several
whole revisions per response, as etcd does for a watcher that fell behind, rather than
falling further behind one message per revision. A response's ``revision`` (its header
revision) means the watcher has been sent every event up to it, except in a ``created``
response, which carries the revision at creation as etcd does.

A pure library: no threads, clocks or I/O; call it from the one thread that
applies to the store (store reads need the batch's thread).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from cluster.mvcc.errors import CompactedError
from cluster.mvcc.kv import KeyValue
from cluster.mvcc.store import KVStore

AUTO_WATCH_ID = 0  # a create request's watch_id 0: the stream picks one (etcd's AutoWatchID)
INVALID_WATCH_ID = -1  # refused creates; progress answers for a whole stream

DEFAULT_PROGRESS_INTERVAL = 600.0  # seconds between progress_tick calls (etcd: 10 minutes)
DEFAULT_MAX_PENDING_EVENTS = 4096  # a stream's output buffer, in events ...
DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024  # ... and in encoded bytes
DEFAULT_MAX_RESPONSE_BYTES = 2 * 1024 * 1024  # etcd's --max-request-bytes + gRPC overhead
DEFAULT_SYNC_ROWS = 1000  # history rows read per sync_unsynced call

ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"

# A WatchResponse's bytes besides its events: header (4 int64), watch_id, flags, compact_revision.
_RESPONSE_OVERHEAD = 64


class EventType(IntEnum):
    """mvccpb.Event.EventType."""

    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """mvccpb.Event. A deletion's ``kv`` is ``KeyValue(key, mod_revision=<revision>)``."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(slots=True)
class WatchResponse:
    """etcdserverpb.WatchResponse less the header's cluster fields; ``revision`` is the header's."""

    watch_id: int
    revision: int
    events: list[Event] = field(default_factory=list)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False

    @property
    def is_progress_notify(self) -> bool:
        return not (
            self.events or self.created or self.canceled or self.compact_revision or self.fragment
        )


# -- sizes (protobuf encoding, for limits) --------------------------------------------------


def _vlen(n: int) -> int:
    """Bytes of ``n`` as a protobuf varint (negative int64s take ten)."""
    if n < 0:
        return 10
    return max(1, (n.bit_length() + 6) // 7)


def _kv_size(kv: KeyValue) -> int:
    n = 0
    if kv.key:
        n += 1 + _vlen(len(kv.key)) + len(kv.key)
    for v in (kv.create_revision, kv.mod_revision, kv.version, kv.lease):
        if v:
            n += 1 + _vlen(v)
    if kv.value:
        n += 1 + _vlen(len(kv.value)) + len(kv.value)
    return n


def event_size(ev: Event) -> int:
    """Bytes ``ev`` adds to an encoded WatchResponse (its field 11 entry)."""
    n = 2 if ev.type == EventType.DELETE else 0
    s = _kv_size(ev.kv)
    n += 1 + _vlen(s) + s
    if ev.prev_kv is not None:
        s = _kv_size(ev.prev_kv)
        n += 1 + _vlen(s) + s
    return 1 + _vlen(n) + n


# -- matching ---------------------------------------------------------------------------------

_Interval = tuple[bytes, bytes]  # [start, end); end b"": no upper bound


class _Intervals:
    """Which of a set of key intervals hold a key: a stab in O(log n + hits).

    The intervals' bounds cut the key space into segments, each keyed by its
    first key and knowing the intervals that cover it. Adding or removing an
    interval touches only the segments it spans. Dicts serve as ordered
    sets, so iteration order (and thus output order) is deterministic.
    """

    __slots__ = ("_cover", "_points", "_refs")

    def __init__(self) -> None:
        self._points = SortedList()
        self._refs: dict[bytes, int] = {}  # bound -> how many intervals start or end there
        self._cover: dict[bytes, dict[_Interval, None]] = {}

    def __len__(self) -> int:
        return len(self._points)

    def add(self, iv: _Interval) -> None:
        start, end = iv
        self._ref(start)
        if end:
            self._ref(end)
        for p in self._points.irange(start, end or None, inclusive=(True, False)):
            self._cover[p][iv] = None

    def remove(self, iv: _Interval) -> None:
        start, end = iv
        for p in self._points.irange(start, end or None, inclusive=(True, False)):
            del self._cover[p][iv]
        self._unref(start)
        if end:
            self._unref(end)

    def stab(self, key: bytes) -> Iterable[_Interval]:
        i = self._points.bisect_right(key)
        return self._cover[self._points[i - 1]] if i else ()

    def _ref(self, p: bytes) -> None:
        n = self._refs.get(p, 0)
        self._refs[p] = n + 1
        if n:
            return
        i = self._points.bisect_left(p)
        # the new segment [p, next) is covered by what covered [prev, next)
        self._cover[p] = dict(self._cover[self._points[i - 1]]) if i else {}
        self._points.add(p)

    def _unref(self, p: bytes) -> None:
        n = self._refs[p] - 1
        if n:
            self._refs[p] = n
            return
        # no interval starts or ends at p: its segment and the previous one are covered alike
        del self._refs[p]
        del self._cover[p]
        self._points.remove(p)


class _Watcher:
    __slots__ = (
        "end",
        "fragment",
        "group",
        "id",
        "key",
        "min_rev",
        "no_delete",
        "no_put",
        "prev_kv",
        "progress_notify",
        "sent_events",
        "stream",
    )

    def __init__(
        self,
        stream: WatchStream,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        *,
        prev_kv: bool,
        no_put: bool,
        no_delete: bool,
        progress_notify: bool,
        fragment: bool,
    ) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = key
        self.end = end  # None: the key alone; b"": every key from it; else [key, end)
        self.min_rev = 0  # the first revision it has not been sent
        self.prev_kv = prev_kv
        self.no_put = no_put
        self.no_delete = no_delete
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.group: _Group | None = None
        self.sent_events = False  # since the last progress tick (etcd elides the next one)

    def wants(self, ev: Event) -> bool:
        return not (self.no_put if ev.type == EventType.PUT else self.no_delete)


class _Group:
    """A set of watchers, found by the keys they watch (etcd's watcherGroup)."""

    __slots__ = ("_intervals", "_keys", "_ranges", "watchers")

    def __init__(self) -> None:
        self.watchers: dict[_Watcher, None] = {}
        self._keys: dict[bytes, dict[_Watcher, None]] = {}
        self._ranges: dict[_Interval, dict[_Watcher, None]] = {}
        self._intervals = _Intervals()

    def __len__(self) -> int:
        return len(self.watchers)

    def add(self, w: _Watcher) -> None:
        self.watchers[w] = None
        w.group = self
        if w.end is None:
            self._keys.setdefault(w.key, {})[w] = None
            return
        iv = (w.key, w.end)
        ws = self._ranges.get(iv)
        if ws is None:
            ws = self._ranges[iv] = {}
            self._intervals.add(iv)
        ws[w] = None

    def remove(self, w: _Watcher) -> None:
        del self.watchers[w]
        w.group = None
        if w.end is None:
            ws = self._keys[w.key]
            del ws[w]
            if not ws:
                del self._keys[w.key]
            return
        iv = (w.key, w.end)
        ws = self._ranges[iv]
        del ws[w]
        if not ws:
            del self._ranges[iv]
            self._intervals.remove(iv)

    def matching(self, key: bytes) -> Iterator[_Watcher]:
        ws = self._keys.get(key)
        if ws:
            yield from ws
        for iv in self._intervals.stab(key):
            yield from self._ranges[iv]


# -- the hub ------------------------------------------------------------------------------------


class WatchHub:
    """Every watcher of one store; see the module docstring.

    ``max_pending_events`` / ``max_pending_bytes`` bound each stream's
    undrained output: while either is reached the stream takes no more
    events (its watchers fall behind, to be caught up from the store later);
    below them it takes a whole response, so it may pass them by one.
    ``max_response_bytes`` is the size above which a catch-up response is
    split between revisions, and a revision's events fragmented for
    watchers that asked for it. ``progress_interval`` is for the caller's
    timer that calls ``progress_tick``. ``on_unsynced`` is called when
    ``sync_unsynced`` has work: a watcher fell behind or started in the
    past, or a stream with such watchers was drained.
    """

    def __init__(
        self,
        store: KVStore,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        on_unsynced: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._rev = store.current_revision
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.max_response_bytes = max_response_bytes
        self.progress_interval = progress_interval
        self.on_unsynced = on_unsynced
        self._synced = _Group()
        self._unsynced = _Group()
        self._progress: dict[_Watcher, None] = {}  # watchers with progress_notify

    # -- state -------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The last revision notified (or the store's when attached)."""
        return self._rev

    @property
    def store(self) -> KVStore:
        return self._store

    @property
    def watcher_count(self) -> int:
        return len(self._synced) + len(self._unsynced)

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def new_stream(self, wake: Callable[[], None] | None = None) -> WatchStream:
        """A stream of watchers (one gRPC Watch call); ``wake`` is called when output appears.

        ``wake`` (like ``on_unsynced``) runs inside hub calls: it must only
        schedule work (set an asyncio event), never call back into the hub.
        """
        return WatchStream(self, wake)

    # -- driven by the member ----------------------------------------------------------------
    def notify(self, revision: int, changes: Sequence[KeyValue]) -> None:
        """The write at ``revision`` changed ``changes`` (a write result's ``changes``).

        Call once per revision, in order, after the store applied it. A
        revision at or below the last one notified is ignored; one that skips
        revisions sends every synced watcher back to catch up from the store.
        """
        if revision <= self._rev:
            return
        if revision != self._rev + 1:
            self._all_fall_behind()
            self._rev = revision
            return
        self._rev = revision
        if not changes or not self._synced.watchers:
            return
        batches: dict[_Watcher, list[int]] = {}
        for i, kv in enumerate(changes):
            for w in self._synced.matching(kv.key):
                if w.min_rev <= revision:  # else it starts at a future revision
                    batches.setdefault(w, []).append(i)
        if not batches:
            return
        events = _Events(self._store, changes)
        for w, idxs in batches.items():
            evs = [sized for i in idxs if w.wants((sized := events.get(i, w.prev_kv))[0])]
            if not evs:
                continue  # all filtered out: nothing to send, and nothing missed
            if not w.stream._has_room():
                self._fall_behind(w, revision)
                continue
            w.min_rev = revision + 1
            w.stream._send_events(w, evs, revision)

    def sync_unsynced(self, max_rows: int = DEFAULT_SYNC_ROWS) -> int:
        """Catch unsynced watchers up from the store; how many are still behind.

        Reads at most about ``max_rows`` rows of history (whole revisions),
        from the oldest revision a watcher whose stream has room still needs;
        watchers of streams whose output is full wait, without holding the
        others back. Watchers whose history was compacted get the compacted
        response and are removed. Call it periodically while the result (or
        ``unsynced_count``) is not 0, and soon after ``on_unsynced`` fires.
        """
        group = self._unsynced
        if not group.watchers:
            return 0
        cur = self._rev
        compact = self._store.compact_revision
        ready: dict[_Watcher, None] = {}
        lo = cur + 1
        for w in list(group.watchers):
            if w.min_rev < compact:
                self._compacted(w, compact)
            elif w.min_rev > cur:
                self._catch_up(w)  # nothing to read (a future start, or after a restore)
            elif w.stream._has_room():
                ready[w] = None
                lo = min(lo, w.min_rev)
        if not ready:
            return len(group)
        changes, through = self._store.changes(lo, cur, limit=max_rows)
        batches: dict[_Watcher, list[int]] = {w: [] for w in ready if w.min_rev <= through}
        for i, kv in enumerate(changes):
            for w in group.matching(kv.key):
                idxs = batches.get(w)
                if idxs is not None and kv.mod_revision >= w.min_rev:
                    idxs.append(i)
        events = _Events(self._store, changes)
        for w, idxs in batches.items():
            evs = [sized for i in idxs if w.wants((sized := events.get(i, w.prev_kv))[0])]
            if evs:
                if not w.stream._has_room():
                    continue  # another watcher of its stream filled it: next time
                w.stream._send_events(w, evs, through)
            w.min_rev = through + 1
            if through == cur:
                self._catch_up(w)
        return len(group)

    def progress_tick(self) -> None:
        """Progress notifications, every ``progress_interval`` (etcd's progress ticker).

        Each ``progress_notify`` watcher that is synced and was sent no event
        since the previous tick gets an empty response at the hub's revision.
        """
        for w in list(self._progress):
            if w.sent_events:
                w.sent_events = False
            elif w.group is self._synced:
                w.stream._push(WatchResponse(w.id, self._rev), 0, 0)

    def restore(self, store: KVStore) -> None:
        """Attach to ``store`` in place of the current one (a leader's backend was installed).

        Every synced watcher is sent back to catch up from the new store's
        history (etcd's watchableStore.Restore). Call it with the same store
        after it rebuilt itself (``BackendQuotaError``): the hub's revision
        becomes the store's again.
        """
        self._all_fall_behind()
        self._store = store
        self._rev = store.current_revision

    # -- internals ------------------------------------------------------------------------
    def _add(self, w: _Watcher, start_revision: int) -> None:
        if start_revision == 0 or start_revision > self._rev:
            w.min_rev = max(start_revision, self._rev + 1)
            self._synced.add(w)
        else:
            w.min_rev = start_revision
            self._unsynced.add(w)
            w.stream._behind += 1
            compact = self._store.compact_revision
            if start_revision < compact:
                self._compacted(w, compact)
            else:
                self._poke()
        if w.progress_notify and w.group is not None:
            self._progress[w] = None

    def _remove(self, w: _Watcher) -> None:
        group = w.group
        if group is None:
            return
        group.remove(w)
        if group is self._unsynced:
            w.stream._behind -= 1
        self._progress.pop(w, None)

    def _fall_behind(self, w: _Watcher, min_rev: int, poke: bool = True) -> None:
        """synced -> unsynced: it has been sent everything before ``min_rev``."""
        self._synced.remove(w)
        w.min_rev = min_rev
        self._unsynced.add(w)
        w.stream._behind += 1
        if poke:
            self._poke()

    def _all_fall_behind(self) -> None:
        """Every synced watcher, having been sent everything to the hub's revision."""
        if not self._synced.watchers:
            return
        for w in list(self._synced.watchers):
            self._fall_behind(w, max(w.min_rev, self._rev + 1), poke=False)
        self._poke()

    def _catch_up(self, w: _Watcher) -> None:
        """unsynced -> synced."""
        self._unsynced.remove(w)
        self._synced.add(w)
        w.stream._behind -= 1
        w.stream._answer_deferred_progress()

    def _compacted(self, w: _Watcher, compact: int) -> None:
        """etcd's compacted response: the watcher is canceled, its history gone."""
        stream = w.stream
        self._remove(w)
        del stream._watchers[w.id]
        stream._push(WatchResponse(w.id, self._rev, canceled=True, compact_revision=compact), 0, 0)
        stream._answer_deferred_progress()

    def _poke(self) -> None:
        if self.on_unsynced is not None:
            self.on_unsynced()


@dataclass(slots=True)
class _Queued:
    """A response in a stream's output, with its event count and encoded event bytes."""

    resp: WatchResponse
    events: int
    size: int


class _Events:
    """The events of a list of changes (and their sizes), each built and looked up once."""

    __slots__ = ("_changes", "_plain", "_store", "_with_prev")

    def __init__(self, store: KVStore, changes: Sequence[KeyValue]) -> None:
        self._store = store
        self._changes = changes
        self._plain: dict[int, tuple[Event, int]] = {}
        self._with_prev: dict[int, tuple[Event, int]] = {}

    def get(self, i: int, prev_kv: bool) -> tuple[Event, int]:
        """The event of change ``i`` (with its previous value if ``prev_kv``) and its size."""
        cache = self._with_prev if prev_kv else self._plain
        got = cache.get(i)
        if got is None:
            kv = self._changes[i]
            kind = EventType.PUT if kv.create_revision else EventType.DELETE
            ev = Event(kind, kv, self._prev(kv, kind) if prev_kv else None)
            got = cache[i] = (ev, event_size(ev))
        return got

    def _prev(self, kv: KeyValue, kind: EventType) -> KeyValue | None:
        """The key at the revision before (etcd's sendLoop); None for a creation or if compacted."""
        rev = kv.mod_revision - 1
        if rev < 1 or (kind == EventType.PUT and kv.create_revision == kv.mod_revision):
            return None
        try:
            kvs = self._store.range(kv.key, revision=rev).kvs
        except CompactedError:
            return None
        return kvs[0] if kvs else None


# -- streams ------------------------------------------------------------------------------------


class WatchStream:
    """One gRPC Watch stream: its watchers and their output, in order (etcd's watchStream).

    Created by ``WatchHub.new_stream``. Every call queues its answer (the
    created / canceled / progress responses) behind the events already
    queued, so a watcher's responses always come in order.
    """

    def __init__(self, hub: WatchHub, wake: Callable[[], None] | None) -> None:
        self._hub = hub
        self._wake = wake
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0
        self._out: deque[_Queued] = deque()
        # Queued responses that later events of the same watcher may join (by watch id).
        self._open: dict[int, _Queued] = {}
        self._pending_events = 0
        self._pending_bytes = 0
        self._behind = 0  # watchers in the unsynced group
        self._deferred_progress = False
        self._closed = False

    # -- requests ----------------------------------------------------------------------------
    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        start_revision: int = 0,
        *,
        watch_id: int = AUTO_WATCH_ID,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        fragment: bool = False,
    ) -> int:
        """A WatchCreateRequest: the new watcher's id, or ``INVALID_WATCH_ID`` if refused.

        Queues the ``created`` response (refused: ``created`` and ``canceled``
        with ``cancel_reason``, as etcd). ``range_end`` as in a range; an
        empty ``key`` is ``b"\\0"``. ``start_revision`` 0 watches from the
        next revision; a past one replays history from it (compacted: a
        compacted response follows); a future one waits for it. ``watch_id``
        ``AUTO_WATCH_ID`` takes the stream's next id counting from 0, skipping
        ids in use (etcd 3.5); an id in use is refused.
        """
        if self._closed:
            raise RuntimeError("watch stream is closed")
        hub = self._hub
        if start_revision < 0:
            return self._refuse(CompactedError().grpc_message)
        key = key or b"\x00"
        end = None if not range_end else b"" if range_end == b"\x00" else range_end
        if end and key >= end:
            return self._refuse(ERR_EMPTY_RANGE)
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self._watchers:
            return self._refuse(ERR_DUPLICATE_ID)
        w = _Watcher(
            self,
            watch_id,
            key,
            end,
            prev_kv=prev_kv,
            no_put=no_put,
            no_delete=no_delete,
            progress_notify=progress_notify,
            fragment=fragment,
        )
        self._watchers[watch_id] = w
        self._push(WatchResponse(watch_id, hub._rev, created=True), 0, 0)
        hub._add(w, start_revision)
        return watch_id

    def cancel(self, watch_id: int) -> bool:
        """A WatchCancelRequest: queue the canceled response; False (and nothing) if unknown."""
        w = self._watchers.pop(watch_id, None)
        if w is None:
            return False
        self._hub._remove(w)
        self._push(WatchResponse(watch_id, self._hub._rev, canceled=True), 0, 0)
        self._answer_deferred_progress()
        return True

    def request_progress(self) -> None:
        """A WatchProgressRequest: a response with ``INVALID_WATCH_ID`` at the hub's revision.

        Sent only once every watcher of the stream is synced (etcd's
        RequestProgressAll); until then the request waits (one at most).
        With no watchers nothing is sent, as etcd.
        """
        if self._closed:
            return
        self._deferred_progress = True
        self._answer_deferred_progress()

    def close(self) -> None:
        """The stream ended: remove its watchers and drop its output."""
        if self._closed:
            return
        self._closed = True
        for w in self._watchers.values():
            self._hub._remove(w)
        self._watchers.clear()
        self._out.clear()
        self._open.clear()
        self._pending_events = self._pending_bytes = 0

    # -- output -----------------------------------------------------------------------------
    def take(self, max_responses: int = 0) -> list[WatchResponse]:
        """Drain the queued responses (at most ``max_responses`` if > 0), oldest first.

        ``wake`` fires only when the queue goes from empty to not empty, so
        keep taking until it is empty.
        """
        out, open_ = self._out, self._open
        n = len(out) if max_responses <= 0 else min(max_responses, len(out))
        got: list[WatchResponse] = []
        for _ in range(n):
            queued = out.popleft()
            resp = queued.resp
            if open_.get(resp.watch_id) is queued:
                del open_[resp.watch_id]
            self._pending_events -= queued.events
            self._pending_bytes -= queued.size
            got.append(resp)
        if got and self._behind and self._has_room():
            self._hub._poke()
        return got

    @property
    def pending(self) -> int:
        """Responses queued."""
        return len(self._out)

    @property
    def pending_events(self) -> int:
        return self._pending_events

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def watch_ids(self) -> list[int]:
        return list(self._watchers)

    # -- internals ------------------------------------------------------------------------
    def _refuse(self, reason: str) -> int:
        self._push(
            WatchResponse(
                INVALID_WATCH_ID,
                self._hub._rev,
                created=True,
                canceled=True,
                cancel_reason=reason,
            ),
            0,
            0,
        )
        return INVALID_WATCH_ID

    def _has_room(self) -> bool:
        hub = self._hub
        return (
            self._pending_events < hub.max_pending_events
            and self._pending_bytes < hub.max_pending_bytes
        )

    def _push(self, resp: WatchResponse, events: int, size: int, *, open_: bool = False) -> None:
        """Queue ``resp``; ``open_``: later events of its watcher may join it (``_join``).

        Anything else queued for a watcher closes its open response, and a stream-wide
        response closes them all, so no event ever moves past a response queued after it.
        """
        if self._closed:
            return
        was_empty = not self._out
        queued = _Queued(resp, events, size)
        self._out.append(queued)
        if open_:
            self._open[resp.watch_id] = queued
        elif resp.watch_id == INVALID_WATCH_ID:
            self._open.clear()
        else:
            self._open.pop(resp.watch_id, None)
        self._pending_events += events
        self._pending_bytes += size
        if was_empty and self._wake is not None:
            self._wake()

    def _join(self, w: _Watcher, evs: list[Event], size: int, revision: int) -> bool:
        """Add ``evs`` (``size`` bytes, through ``revision``) to ``w``'s response still
        queued, if it has one open and they fit; whether they were added.

        A watcher whose stream is not drained as fast as events come then gets several
        revisions in one response, as etcd sends a watcher that fell behind: the events
        are the same, in the same order, and a slow stream costs a message per watcher
        per drain instead of one per watcher per revision.
        """
        queued = self._open.get(w.id)
        limit = self._hub.max_response_bytes
        if queued is None or _RESPONSE_OVERHEAD + queued.size + size >= limit:
            return False
        queued.resp.events.extend(evs)
        queued.resp.revision = revision
        queued.events += len(evs)
        queued.size += size
        self._pending_events += len(evs)
        self._pending_bytes += size
        return True

    def _send_events(self, w: _Watcher, sized: list[tuple[Event, int]], revision: int) -> None:
        """Queue (event, size)s, in revision order, for ``w``: sent everything to ``revision``.

        Responses over the size limit are split between revisions (each
        part's header is its last revision), and a single revision's events
        fragmented if the watcher asked for it (etcd's sendFragments).
        """
        w.sent_events = True
        limit = self._hub.max_response_bytes
        evs = [ev for ev, _ in sized]
        sizes = [n for _, n in sized]
        total = _RESPONSE_OVERHEAD + sum(sizes)
        if total < limit:
            size = total - _RESPONSE_OVERHEAD
            if not self._join(w, evs, size, revision):
                self._push(WatchResponse(w.id, revision, evs), len(evs), size, open_=True)
            return
        # cut into whole revisions that fit (one alone may not)
        parts: list[tuple[int, int]] = []  # [start, stop) into evs
        start = 0
        size = _RESPONSE_OVERHEAD
        i = 0
        while i < len(evs):
            j = i
            run = 0
            rev = evs[i].kv.mod_revision
            while j < len(evs) and evs[j].kv.mod_revision == rev:
                run += sizes[j]
                j += 1
            if i > start and size + run >= limit:
                parts.append((start, i))
                start, size = i, _RESPONSE_OVERHEAD
            size += run
            i = j
        parts.append((start, len(evs)))
        for n, (a, b) in enumerate(parts):
            header = revision if n == len(parts) - 1 else evs[b - 1].kv.mod_revision
            self._push_part(w, evs[a:b], sizes[a:b], header)

    def _push_part(self, w: _Watcher, evs: list[Event], sizes: list[int], revision: int) -> None:
        total = sum(sizes)
        if (
            not w.fragment
            or len(evs) < 2
            or _RESPONSE_OVERHEAD + total < self._hub.max_response_bytes
        ):
            self._push(WatchResponse(w.id, revision, evs), len(evs), total)
            return
        limit = self._hub.max_response_bytes
        i = 0
        while i < len(evs):
            j = i + 1  # at least one event per fragment
            size = _RESPONSE_OVERHEAD + sizes[i]
            while j < len(evs) and size + sizes[j] < limit:
                size += sizes[j]
                j += 1
            resp = WatchResponse(w.id, revision, evs[i:j], fragment=j < len(evs))
            self._push(resp, j - i, size - _RESPONSE_OVERHEAD)
            i = j

    def _answer_deferred_progress(self) -> None:
        if not self._deferred_progress or self._behind:
            return
        self._deferred_progress = False
        if self._watchers:
            self._push(WatchResponse(INVALID_WATCH_ID, self._hub._rev), 0, 0)
