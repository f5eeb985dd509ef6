"""Websockets of the live pages: the watch viewer, the service registry, the cluster dashboard.

Every socket needs a logged-in user: an anonymous one is accepted and closed at once with code
4401 (so the page can tell "log in again" from a dropped connection and stops reconnecting).
The origin is checked before any consumer runs (``AllowedHostsOriginValidator`` in
``console/asgi.py``). Each consumer talks to the cluster through the event loop's
``console.etcd.async_client()``, and every etcd stream and task it starts ends with its socket
(:class:`LiveConsumer` cancels them however the consumer stops).

Messages are JSON objects with a ``type``; see each consumer for its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from cluster.client import (
    AsyncWatch,
    CompactedError,
    EtcdError,
    EventType,
    LeaseNotFoundError,
    Member,
    WatchResponse,
)
from cluster.registry import Instance
from console import etcd, live
from console.keys import InvalidKeyError, decode_key

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
"""Close code for a socket without a logged-in user (HTTP's 401, in the 4000 range)."""
CLOSE_BAD_REQUEST = 4400
RECENT_CHANGES = 500
"""Registry changes a :class:`RegistryMonitor` remembers (every service together)."""
FLUSH_INTERVAL = 0.05
"""Seconds a watch consumer gathers events before sending them in one message."""
WatchFilter = Literal["noput", "nodelete"]
RETRY_DELAY = 2.0
"""Seconds before a stream that failed with the whole cluster (not one member) starts again."""


class LiveConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    """Login required; tasks started with :meth:`spawn` are cancelled when the socket ends."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._send_lock = asyncio.Lock()
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the consumer ends (disconnect, server shutdown, error)
            await self.cancel_tasks()

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.authenticated = False
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.authenticated = True
        self.user_name = user.get_username()
        await self.started()

    async def started(self) -> None:
        """The socket is open for a logged-in user."""

    async def disconnect(self, code: int) -> None:
        await self.cancel_tasks()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` for as long as the socket lives; a failure is reported to the page."""
        task = asyncio.create_task(self._guard(coro), name=f"{type(self).__name__}.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("live consumer task failed")
            with contextlib.suppress(Exception):
                await self.send_message({"type": "error", "message": f"{exc}"})

    async def cancel_tasks(self) -> None:
        tasks = list(getattr(self, "_tasks", ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send_message(self, content: dict[str, Any]) -> None:
        """Send one JSON message; messages leave in the order this is called."""
        async with self._send_lock:
            await self.send_json(content)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if not getattr(self, "authenticated", False):
            return
        try:
            content = json.loads(text_data or bytes_data or b"")
        except ValueError:
            await self.send_message({"type": "error", "message": "expected JSON"})
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self.send_message({"type": "error", "message": "expected a JSON object"})
            return
        await self.command(content)

    async def command(self, content: dict[str, Any]) -> None:
        """A message from the page (none expected by default)."""
        await self.send_message({"type": "error", "message": "this socket takes no commands"})


# --- the watch viewer -----------------------------------------------------------------------


class BadRequest(ValueError):
    """A start message the consumer cannot use."""


def _int(content: dict[str, Any], name: str, default: int = 0) -> int:
    raw = content.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


class WatchSpec:
    """A watch the page asked for (``start`` message), validated."""

    FILTERS: ClassVar[dict[str, tuple[WatchFilter, ...]]] = {
        "all": (),
        "puts": ("nodelete",),
        "deletes": ("noput",),
    }

    def __init__(self, content: dict[str, Any]) -> None:
        self.id = _int(content, "watch")
        raw_key = content.get("key", "")
        if not isinstance(raw_key, str):
            raise BadRequest("key must be a string")
        if content.get("key_enc") == "base64url":
            try:
                self.key = decode_key(raw_key, allow_empty=True)
            except InvalidKeyError as exc:
                raise BadRequest(str(exc)) from None
        else:
            self.key = raw_key.encode("utf-8")
        self.prefix = bool(content.get("prefix"))
        if not self.key and not self.prefix:
            raise BadRequest("give a key, or watch a prefix (an empty prefix is every key)")
        self.start_revision = _int(content, "start_revision")
        self.filter = str(content.get("filter") or "all")
        if self.filter not in self.FILTERS:
            raise BadRequest("filter must be all, puts or deletes")
        self.prev_kv = bool(content.get("prev_kv"))

    def open(self) -> AsyncWatch:
        return self.reopen(self.start_revision)

    def reopen(self, start_revision: int) -> AsyncWatch:
        return etcd.async_client().watch(
            self.key,
            prefix=self.prefix,
            start_revision=start_revision,
            prev_kv=self.prev_kv,
            filters=self.FILTERS[self.filter],
            progress_notify=True,
        )


class WatchConsumer(LiveConsumer):
    """``/ws/watch/``: one etcd watch at a time, its events streamed to the page.

    Page → server: ``{"type": "start", "watch": <page's id>, "key", "key_enc"?: "base64url",
    "prefix", "start_revision" (0: from now), "filter": "all"|"puts"|"deletes", "prev_kv"}``
    (replaces any running watch); ``{"type": "stop"}``.

    Server → page, each tagged with the page's ``watch`` id: ``started`` (``start_revision``:
    the first revision the watch delivers), ``events`` (``events``: every event of whole
    revisions, in order, see ``console.live.encode_event``), ``progress`` (``revision``: all
    events up to it were sent), ``compacted`` (``compact_revision``: the earliest revision still
    available, ``requested``), ``error`` (``message``), ``stopped``.

    A page that reconnects resumes with ``start_revision`` = its last revision + 1: etcd replays
    what happened meanwhile, so nothing is missed or shown twice.
    """

    async def started(self) -> None:
        self._watch: AsyncWatch | None = None
        self._spec: WatchSpec | None = None
        self._pending: list[dict[str, Any]] = []
        self._progress = 0
        self._ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def watch(self) -> AsyncWatch | None:
        """The running etcd watch, if any (for tests)."""
        return self._watch

    async def command(self, content: dict[str, Any]) -> None:
        kind = content.get("type")
        if kind == "start":
            try:
                spec = WatchSpec(content)
            except BadRequest as exc:
                await self.send_message(
                    {"type": "error", "watch": content.get("watch"), "message": str(exc)}
                )
                return
            await self._stop()
            await self._start(spec)
        elif kind == "stop":
            current = self._spec
            await self._stop()
            await self.send_message({"type": "stopped", "watch": current.id if current else None})
        else:
            await self.send_message({"type": "error", "message": f"unknown command {kind!r}"})

    async def _start(self, spec: WatchSpec) -> None:
        watch = spec.open()
        try:
            await watch.start()
        except CompactedError as exc:
            await self._send_compacted(spec, exc)
            return
        except EtcdError as exc:
            await self.send_message({"type": "error", "watch": spec.id, "message": str(exc)})
            return
        self._spec, self._watch = spec, watch
        await self.send_message(
            {
                "type": "started",
                "watch": spec.id,
                "start_revision": watch.next_revision,
                "requested": spec.start_revision,
            }
        )
        self._pump = self.spawn(self._read(spec, watch), "read")
        self._flusher = self.spawn(self._flush_every(spec), "flush")

    async def _stop(self) -> None:
        watch, self._watch, self._spec = self._watch, None, None
        tasks = [t for t in (self._pump, self._flusher) if t is not None]
        self._pump = self._flusher = None
        if watch is not None:
            watch.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending = []
        self._progress = 0

    async def _read(self, spec: WatchSpec, watch: AsyncWatch) -> None:
        """Pass the watch's batches on. When the whole cluster fails it (the client already
        tried every member), say so and open it again where it stopped, until that works."""
        limit = settings.CONSOLE_WATCH_VALUE_BYTES
        while True:
            try:
                async for batch in watch:
                    self._collect(batch, limit)
                return  # cancelled
            except CompactedError as exc:
                await self._flush(spec)
                await self._send_compacted(spec, exc, watch.next_revision)
                return
            except EtcdError as exc:
                await self._flush(spec)
                await self._send_retrying(spec, exc)
            finally:
                watch.cancel()
            while True:
                await asyncio.sleep(RETRY_DELAY)
                watch = self._watch = spec.reopen(watch.next_revision)
                try:
                    await watch.start()
                except CompactedError as exc:
                    await self._send_compacted(spec, exc, watch.next_revision)
                    return
                except EtcdError as exc:
                    await self._send_retrying(spec, exc)
                    continue
                await self.send_message(
                    {"type": "started", "watch": spec.id, "start_revision": watch.next_revision,
                     "requested": spec.start_revision}
                )  # fmt: skip
                break

    async def _send_retrying(self, spec: WatchSpec, exc: EtcdError) -> None:
        await self.send_message(
            {"type": "error", "watch": spec.id, "message": str(exc), "retrying": RETRY_DELAY}
        )

    def _collect(self, batch: WatchResponse, limit: int) -> None:
        if batch.events:  # whole revisions only: a message never splits one
            self._pending.extend(live.encode_event(ev, limit) for ev in batch.events)
        else:
            self._progress = max(self._progress, batch.revision)
        self._ready.set()

    async def _flush_every(self, spec: WatchSpec) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            self._ready.clear()
            await self._flush(spec)

    async def _flush(self, spec: WatchSpec) -> None:
        async with self._send_lock:
            events, self._pending = self._pending, []
            progress, self._progress = self._progress, 0
            if events:
                await self.send_json({"type": "events", "watch": spec.id, "events": events})
            if progress and (not events or progress > events[-1]["rev"]):
                await self.send_json({"type": "progress", "watch": spec.id, "revision": progress})

    async def _send_compacted(
        self, spec: WatchSpec, exc: CompactedError, requested: int | None = None
    ) -> None:
        wanted = spec.start_revision if requested is None else requested
        await self.send_message(
            {
                "type": "compacted",
                "watch": spec.id,
                "requested": wanted,
                "compact_revision": exc.compact_revision,
                "message": (
                    f"revision {wanted} has been compacted: the earliest "
                    f"revision still available is {exc.compact_revision}"
                ),
            }
        )


# --- the service registry -------------------------------------------------------------------


class RegistryMonitor:
    """Follows the whole registry for one event loop (so one etcd watch per console process,
    however many pages show it) and remembers its recent changes, like Eureka's lists.

    It starts with its first subscriber and stops, watch and all, ``CONSOLE_SERVICES_LINGER``
    seconds after its last one leaves (so a page that reloads, or follows a redirect after an
    action, finds the change it caused in ``recent``). Subscribers get queues of messages
    (``change``, ``ttl``, ``snapshot`` after a cluster failure, ``error``) for every service.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RegistryMonitor]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.client = etcd.async_client()
        self.prefix = live.registry_prefix()
        self.instances: dict[bytes, Instance] = {}  # by key
        self.ttls: dict[int, tuple[int, int]] = {}  # lease -> (seconds left, granted)
        self.ends: dict[int, float] = {}  # lease -> loop time its TTL runs out, as last read
        self.revision = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_CHANGES)
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.ready = asyncio.Event()
        self.watch: AsyncWatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.last_error = ""

    @classmethod
    def current(cls) -> RegistryMonitor:
        """The running loop's monitor (a new one when the settings or client changed)."""
        loop = asyncio.get_running_loop()
        found = cls._by_loop.get(loop)
        if (
            found is None
            or found.client is not etcd.async_client()
            or found.prefix != live.registry_prefix()
        ):
            if found is not None:
                found.stop()
            found = cls._by_loop[loop] = cls()
        return found

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def subscribe(self) -> tuple[asyncio.Queue[dict[str, Any]], dict[str, Any]]:
        """A queue of what happens from now on, and the state now: ``instances`` (dicts),
        ``recent`` changes (oldest first), ``revision``. Waits for the first snapshot (see
        ``last_error`` meanwhile)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.subscribers.add(queue)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if not self.running:
            self.ready.clear()
            self._task = asyncio.create_task(self._run(), name="registry-monitor")
        try:
            await self.ready.wait()
        except asyncio.CancelledError:
            self.unsubscribe(queue)
            raise
        state = self.state()
        while not queue.empty():  # already in the state (no await since it was taken)
            queue.get_nowait()
        return queue, state

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers.discard(queue)
        if not self.subscribers and self.running and self._linger is None:
            linger = float(getattr(settings, "CONSOLE_SERVICES_LINGER", 60.0))
            self._linger = asyncio.get_running_loop().call_later(linger, self._idle)

    def _idle(self) -> None:
        self._linger = None
        if not self.subscribers:
            self.stop()

    def stop(self) -> None:
        """End the watch and the TTL reads now."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._task is not None:
            self._task.cancel()  # its watch ends with it (cancelling the watch first would
            # end the iteration quietly instead of cancelling the task)

    def state(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "instances": [self.describe(i) for i in self.instances.values()],
            "recent": list(self.recent),
        }

    def describe(self, inst: Instance, ttl: tuple[int, int] | None = None) -> dict[str, Any]:
        known = ttl or self.ttls.get(inst.lease)
        return live.instance_dict(inst, *known) if known else live.instance_dict(inst)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queue in self.subscribers:
            queue.put_nowait(message)

    async def _run(self) -> None:
        """Snapshot then watch; after a cluster failure, report it and start again."""
        try:
            while True:
                try:
                    await self._follow()
                    return  # its watch was closed: stopped
                except EtcdError as exc:
                    self.last_error = str(exc)
                    self._broadcast({"type": "error", "message": str(exc), "retrying": RETRY_DELAY})
                await asyncio.sleep(RETRY_DELAY)
        finally:
            self.ready.clear()
            if self.watch is not None:
                self.watch.cancel()

    async def _follow(self) -> None:
        r = await self.client.get(live.service_prefix(), prefix=True)
        self.instances = {
            kv.key: inst for kv in r.kvs if (inst := Instance.from_kv(self.prefix, kv)) is not None
        }
        self.revision = r.revision
        await self._read_ttls({i.lease for i in self.instances.values()})
        watch = self.watch = self.client.watch(
            live.service_prefix(), prefix=True, prev_kv=True, start_revision=r.revision + 1
        )
        await watch.start()
        if self.ready.is_set():  # again, after a failure: everyone starts over
            self._broadcast({"type": "snapshot", **self.state()})
        self.ready.set()
        self.last_error = ""
        refresher = asyncio.create_task(self._refresh_ttls(), name="registry-monitor-ttl")
        try:
            async for batch in watch:
                for ev in batch.events:
                    await self._change(ev)
                self.revision = batch.revision
        finally:
            watch.cancel()
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)

    async def _change(self, ev: Any) -> None:
        loop = asyncio.get_running_loop()
        message: dict[str, Any] = {"type": "change", "revision": ev.revision, "at": time.time()}
        if ev.type == EventType.PUT:
            inst = Instance.from_kv(self.prefix, ev.kv)
            if inst is None:
                return
            self.instances[ev.kv.key] = inst
            await self._read_ttls({inst.lease})
            message.update(
                kind="registered" if ev.kv.version == 1 else "updated",
                instance=self.describe(inst),
            )
        else:
            known = self.instances.pop(ev.kv.key, None)
            prev = ev.prev_kv
            gone = (Instance.from_kv(self.prefix, prev) if prev is not None else None) or known
            if gone is None:
                return
            by = live.console_revoker(gone.lease)
            end = self.ends.get(gone.lease)
            kind = live.classify_removal(gone.lease, end, loop.time(), bool(by))
            message.update(kind=kind, by=by, instance=self.describe(gone, (-1, 0)))
        self.recent.append(message)
        self._broadcast(message)

    async def _read_ttls(self, leases: set[int]) -> None:
        """Seconds left and granted per lease (-1: gone); remembers when each runs out."""
        loop = asyncio.get_running_loop()
        wanted = [lease for lease in leases if lease]

        async def one(lease: int) -> tuple[int, int]:
            try:
                r = await self.client.time_to_live(lease)
            except LeaseNotFoundError:
                return -1, 0
            return r.ttl, r.granted_ttl

        results = await asyncio.gather(*(one(lease) for lease in wanted), return_exceptions=True)
        now = loop.time()
        for lease, res in zip(wanted, results, strict=True):
            if isinstance(res, BaseException):
                continue
            self.ttls[lease] = res
            if res[0] >= 0:
                self.ends[lease] = now + res[0]

    async def _refresh_ttls(self) -> None:
        interval = float(settings.CONSOLE_SERVICES_TTL_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            leases = {i.lease for i in self.instances.values()}
            for table in (self.ttls, self.ends):
                for lease in [x for x in table if x not in leases]:
                    del table[lease]
            if not leases:
                continue
            try:
                await self._read_ttls(leases)
            except EtcdError:
                continue
            self._broadcast(
                {
                    "type": "ttl",
                    "leases": {live.hex_id(k): self.ttls[k][0] for k in leases if k in self.ttls},
                }
            )


def _for_service(message: dict[str, Any], service: str | None) -> dict[str, Any] | None:
    """``message`` as a page showing ``service`` (None: all) sees it; None to skip it."""
    if service is None:
        return message
    kind = message["type"]
    if kind == "change":
        return message if message["instance"]["service"] == service else None
    if kind == "snapshot":
        return {
            **message,
            "instances": [i for i in message["instances"] if i["service"] == service],
            "recent": [c for c in message["recent"] if c["instance"]["service"] == service],
        }
    return message


class ServicesConsumer(LiveConsumer):
    """``/ws/services/`` (every service) or ``/ws/services/?service=<name>``: the registry's
    instances, live, from the process's :class:`RegistryMonitor`.

    Server → page: ``snapshot`` (``instances``, ``recent``: the last changes, oldest first,
    ``revision``), then ``change`` (``kind``: ``registered``, ``updated``, ``deregistered``,
    ``expired``; ``instance``, ``revision``, ``at``, ``by``: the console user who deregistered
    it) as instances come and go, and ``ttl`` (``leases``: lease hex id -> seconds left, -1
    when gone) every ``CONSOLE_SERVICES_TTL_INTERVAL`` seconds; a new ``snapshot`` after the
    cluster failed (``error`` said so).
    """

    async def started(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("utf-8", "replace"))
        service = (query.get("service") or [""])[0] or None
        if service is not None and "/" in service:
            await self.send_message({"type": "error", "message": "bad service name"})
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.service = service
        self.spawn(self._relay(), "relay")

    async def _relay(self) -> None:
        monitor = RegistryMonitor.current()
        joining = asyncio.ensure_future(monitor.subscribe())
        try:
            while not (await asyncio.wait({joining}, timeout=RETRY_DELAY))[0]:
                await self.send_message(
                    {
                        "type": "error",
                        "message": monitor.last_error or "the cluster has not answered yet",
                        "retrying": RETRY_DELAY,
                    }
                )
        except BaseException:  # this consumer ended first
            joining.cancel()
            if joining.done() and not joining.cancelled() and joining.exception() is None:
                monitor.unsubscribe(joining.result()[0])
            raise
        queue, state = joining.result()
        try:
            snapshot = {"type": "snapshot", "service": self.service, **state}
            first = _for_service(snapshot, self.service)
            assert first is not None
            await self.send_message(first)
            while True:
                message = _for_service(await queue.get(), self.service)
                if message is not None:
                    await self.send_message(message)
        finally:
            monitor.unsubscribe(queue)


# --- the cluster dashboard ------------------------------------------------------------------


async def collect_sample(
    previous: dict[str, Any] | None, timeout: float, known: list[Member] | None = None
) -> tuple[dict[str, Any], list[Member]]:
    """One dashboard sample (``console.live.build_sample``) and the members it asked, every
    member at once; one that does not answer within ``timeout`` seconds is shown unhealthy.
    When the member list cannot be read (no leader yet), the ``known`` members are asked."""
    client = etcd.async_client()
    warning = ""
    try:
        members = await asyncio.wait_for(client.member_list(), timeout * 2)
    except (EtcdError, TimeoutError) as exc:
        reason = f"{exc}" or f"no answer within {timeout * 2:g} s"
        if not known:
            return live.build_sample([], previous=previous, error=reason), []
        members, warning = known, f"the member list could not be read ({reason})"

    async def probe(m: Any) -> live.MemberProbe:
        if not m.client_urls:
            return live.MemberProbe(m, error="not started yet (no client URLs)")
        try:
            st = await asyncio.wait_for(client.status(m.client_urls[0]), timeout)
        except TimeoutError:
            return live.MemberProbe(m, error=f"no answer within {timeout:g} s")
        except EtcdError as exc:
            return live.MemberProbe(m, error=exc.message or str(exc))
        return live.MemberProbe(m, st)

    probes = await asyncio.gather(*(probe(m) for m in members))
    try:
        alarms = await asyncio.wait_for(client.alarms(), timeout)
    except (EtcdError, TimeoutError):
        alarms = []
    sample = live.build_sample(probes, alarms, previous=previous)
    sample["warning"] = warning
    return sample, members


class ClusterConsumer(LiveConsumer):
    """``/ws/cluster/``: a ``sample`` (``console.live.build_sample``) every
    ``CONSOLE_DASHBOARD_INTERVAL`` seconds."""

    async def started(self) -> None:
        self.spawn(self._poll(), "poll")

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        interval = float(settings.CONSOLE_DASHBOARD_INTERVAL)
        previous: dict[str, Any] | None = None
        members: list[Member] = []
        while True:
            began = loop.time()
            timeout = max(0.2, min(interval, 2.0))
            sample, members = await collect_sample(previous, timeout, members)
            await self.send_message({"type": "sample", **sample})
            if not sample["error"]:
                previous = sample
            await asyncio.sleep(max(0.05, interval - (loop.time() - began)))
