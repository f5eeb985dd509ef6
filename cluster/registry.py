"""Service registration and discovery on etcd.

An instance is the key ``<prefix>/<service>/<instance-id>`` (prefix ``/services`` by default)
holding JSON ``{"address", "port", "metadata", "registered_at"}`` and attached to a lease that
the registering process keeps alive. When the process dies, the lease expires and the key
goes: a killed instance disappears within its TTL. If the lease is lost while the process
lives (a long partition, a revoke), the instance is registered again under a new lease.

>>> reg = register(client, "api", "api-1", "10.0.0.5", 8080, {"zone": "a"}, ttl=10)
>>> [i.endpoint for i in discover(client, "api")]
['10.0.0.5:8080']
>>> for change in watch_service(client, "api"): print(change.type, change.instance.instance_id)

Command line: ``python -m cluster.registry [--endpoints E] register|list|watch ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Literal

from cluster.client import (
    AsyncClient,
    AsyncLease,
    AsyncWatch,
    Client,
    EtcdError,
    EventType,
    KeyValue,
    Lease,
    Watch,
)

__all__ = [
    "DEFAULT_PREFIX",
    "AsyncRegistration",
    "AsyncRegistry",
    "AsyncServiceWatch",
    "Instance",
    "Registration",
    "Registry",
    "ServiceEvent",
    "ServiceWatch",
    "discover",
    "main",
    "register",
    "watch_service",
]

DEFAULT_PREFIX = "/services"
log = logging.getLogger(__name__)
ChangeType = Literal["added", "updated", "removed"]


@dataclass(frozen=True)
class Instance:
    """One registered instance of a service; ``lease`` and ``revision`` (its key's mod
    revision) are filled in when read from etcd."""

    service: str
    instance_id: str
    address: str
    port: int
    metadata: dict[str, Any] = field(default_factory=dict)
    registered_at: str = ""
    lease: int = 0
    revision: int = 0

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def key(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix.rstrip('/')}/{self.service}/{self.instance_id}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "address": self.address,
                "port": self.port,
                "metadata": self.metadata,
                "registered_at": self.registered_at,
            },
            sort_keys=True,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_kv(cls, prefix: str, kv: KeyValue) -> Instance | None:
        """Parse an instance key-value; None for keys that are not ``<service>/<id>`` JSON."""
        service, instance_id = _split_key(prefix, kv.key)
        if not service or not instance_id:
            return None
        try:
            data = json.loads(kv.value)
            return cls(
                service, instance_id, str(data["address"]), int(data["port"]),
                dict(data.get("metadata") or {}), str(data.get("registered_at", "")),
                kv.lease, kv.mod_revision,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed registry entry %r", kv.key)
            return None


@dataclass(frozen=True)
class ServiceEvent:
    """A change to a service: ``added``, ``updated`` or ``removed`` (with the last known
    instance), at ``revision``."""

    type: ChangeType
    instance: Instance
    revision: int


def _base(prefix: str) -> str:
    base = prefix.rstrip("/")
    if not base:
        raise ValueError("the registry prefix must not be empty")
    return base


def _split_key(prefix: str, key: bytes) -> tuple[str, str]:
    rest = key.decode(errors="replace")[len(_base(prefix)) + 1 :]
    service, _, instance_id = rest.partition("/")
    return service, instance_id


def _check_name(kind: str, name: str, slash_ok: bool = False) -> None:
    if not name or (not slash_ok and "/" in name):
        raise ValueError(f"invalid {kind} {name!r} (non-empty, no '/')")


def _watch_prefix(prefix: str, service: str | None) -> str:
    if service is None:
        return _base(prefix) + "/"
    _check_name("service", service)
    return f"{_base(prefix)}/{service}/"


def _to_event(prefix: str, ev: Any) -> ServiceEvent | None:
    if ev.type == EventType.PUT:
        inst = Instance.from_kv(prefix, ev.kv)
        if inst is None:
            return None
        return ServiceEvent("added" if ev.kv.version == 1 else "updated", inst, ev.revision)
    source = ev.prev_kv if ev.prev_kv is not None else ev.kv
    inst = Instance.from_kv(prefix, source) if ev.prev_kv is not None else None
    if inst is None:
        service, instance_id = _split_key(prefix, source.key)
        if not service or not instance_id:
            return None
        inst = Instance(service, instance_id, "", 0)
    return ServiceEvent("removed", inst, ev.revision)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _new_instance(
    service: str,
    instance_id: str,
    address: str,
    port: int,
    metadata: Mapping[str, Any] | None,
) -> Instance:
    """A checked instance to register now (sync and async registries alike)."""
    _check_name("service", service)
    _check_name("instance id", instance_id, slash_ok=True)
    return Instance(service, instance_id, address, int(port), dict(metadata or {}), _now())


# --- sync -------------------------------------------------------------------------------


class Registration:
    """A registered instance, kept alive by a lease refreshed in the background and
    registered again (new lease) whenever that lease is lost. ``deregister()`` (or leaving
    the ``with``) removes it at once."""

    def __init__(self, client: Client, instance: Instance, ttl: int, prefix: str) -> None:
        self.client = client
        self.instance = instance
        self.ttl = ttl
        self.prefix = _base(prefix)
        self.key = instance.key(self.prefix)
        self.lease: Lease | None = None
        self.registrations = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._register_once()
        self._thread = threading.Thread(
            target=self._supervise, name=f"registry-{self.key}", daemon=True
        )
        self._thread.start()

    def _register_once(self) -> None:
        lease = self.client.lease(self.ttl, on_lost=lambda _lease: self._wake.set())
        try:
            self.client.put(self.key, self.instance.to_json(), lease=lease)
        except BaseException:
            lease.close()
            raise
        self.lease = lease
        self.registrations += 1

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            delay = 0.1
            while not self._stop.is_set():
                log.warning("registration %s lost its lease; registering again", self.key)
                try:
                    self._register_once()
                    break
                except EtcdError as e:
                    log.warning("re-registering %s failed: %s", self.key, e)
                    self._stop.wait(delay)
                    delay = min(delay * 2, max(1.0, self.ttl / 3))

    @property
    def alive(self) -> bool:
        return self.lease is not None and self.lease.alive

    def deregister(self) -> None:
        """Stop keeping the instance alive and remove it (revoking its lease)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.lease is not None:
            self.lease.revoke()

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deregister()


class ServiceWatch:
    """Iterator of :class:`ServiceEvent`; ``cancel()`` ends it."""

    def __init__(self, client: Client, prefix: str, service: str | None, initial: bool) -> None:
        self.prefix = _base(prefix)
        self._pending: list[ServiceEvent] = []
        start = 0
        if initial:
            r = client.get(_watch_prefix(prefix, service), prefix=True)
            for kv in r.kvs:
                inst = Instance.from_kv(self.prefix, kv)
                if inst is not None:
                    self._pending.append(ServiceEvent("added", inst, kv.mod_revision))
            start = r.revision + 1
        self._watch: Watch = client.watch(
            _watch_prefix(prefix, service), prefix=True, prev_kv=True, start_revision=start
        )

    def __iter__(self) -> Iterator[ServiceEvent]:
        return self

    def __next__(self) -> ServiceEvent:
        while not self._pending:
            batch = next(self._watch)
            self._pending = [e for ev in batch.events if (e := _to_event(self.prefix, ev))]
        return self._pending.pop(0)

    def cancel(self) -> None:
        self._watch.cancel()

    def __enter__(self) -> ServiceWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Registry:
    """Register and discover services under ``prefix`` with a blocking :class:`Client`."""

    def __init__(self, client: Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = _base(prefix)

    def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: int = 10,
    ) -> Registration:
        """Register an instance and keep it alive until ``deregister()``."""
        inst = _new_instance(service, instance_id, address, port, metadata)
        return Registration(self.client, inst, ttl, self.prefix)

    def discover(self, service: str) -> list[Instance]:
        """The live instances of ``service``, by instance id."""
        r = self.client.get(_watch_prefix(self.prefix, service), prefix=True)
        return [i for kv in r.kvs if (i := Instance.from_kv(self.prefix, kv))]

    def services(self) -> dict[str, list[Instance]]:
        """Every service with its live instances."""
        r = self.client.get(_watch_prefix(self.prefix, None), prefix=True)
        out: dict[str, list[Instance]] = {}
        for kv in r.kvs:
            inst = Instance.from_kv(self.prefix, kv)
            if inst is not None:
                out.setdefault(inst.service, []).append(inst)
        return out

    def watch_service(self, service: str | None = None, *, initial: bool = False) -> ServiceWatch:
        """Changes to ``service`` (every service when None) from now on; with ``initial``
        the current instances come first as ``added``."""
        return ServiceWatch(self.client, self.prefix, service, initial)


def register(
    client: Client,
    service: str,
    instance_id: str,
    address: str,
    port: int,
    metadata: Mapping[str, Any] | None = None,
    ttl: int = 10,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> Registration:
    """``Registry(client, prefix).register(...)``."""
    return Registry(client, prefix).register(service, instance_id, address, port, metadata, ttl)


def discover(client: Client, service: str, *, prefix: str = DEFAULT_PREFIX) -> list[Instance]:
    """``Registry(client, prefix).discover(service)``."""
    return Registry(client, prefix).discover(service)


def watch_service(
    client: Client, service: str | None = None, *, prefix: str = DEFAULT_PREFIX,
    initial: bool = False,
) -> ServiceWatch:  # fmt: skip
    """``Registry(client, prefix).watch_service(service)``."""
    return Registry(client, prefix).watch_service(service, initial=initial)


# --- asyncio ----------------------------------------------------------------------------


class AsyncRegistration:
    """:class:`Registration` for the asyncio client (``await registry.register(...)``)."""

    def __init__(self, client: AsyncClient, instance: Instance, ttl: int, prefix: str) -> None:
        self.client = client
        self.instance = instance
        self.ttl = ttl
        self.prefix = _base(prefix)
        self.key = instance.key(self.prefix)
        self.lease: AsyncLease | None = None
        self.registrations = 0
        self._wake = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> AsyncRegistration:
        await self._register_once()
        self._task = asyncio.create_task(self._supervise(), name=f"registry-{self.key}")
        return self

    async def _register_once(self) -> None:
        lease = await self.client.lease(self.ttl, on_lost=lambda _lease: self._wake.set())
        try:
            await self.client.put(self.key, self.instance.to_json(), lease=lease)
        except BaseException:
            await lease.close()
            raise
        self.lease = lease
        self.registrations += 1

    async def _supervise(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            delay = 0.1
            while not self._stopped:
                log.warning("registration %s lost its lease; registering again", self.key)
                try:
                    await self._register_once()
                    break
                except EtcdError as e:
                    log.warning("re-registering %s failed: %s", self.key, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max(1.0, self.ttl / 3))

    @property
    def alive(self) -> bool:
        return self.lease is not None and self.lease.alive

    async def deregister(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lease is not None:
            await self.lease.revoke()

    async def __aenter__(self) -> AsyncRegistration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.deregister()


class AsyncServiceWatch:
    """Async iterator of :class:`ServiceEvent`; ``cancel()`` ends it."""

    def __init__(
        self, client: AsyncClient, prefix: str, service: str | None, initial: bool
    ) -> None:
        self.client = client
        self.prefix = _base(prefix)
        self.service = service
        self.initial = initial
        self._pending: list[ServiceEvent] = []
        self._watch: AsyncWatch | None = None
        self._closed = False

    async def start(self) -> AsyncServiceWatch:
        if self._watch is not None:
            return self
        start = 0
        if self.initial:
            r = await self.client.get(_watch_prefix(self.prefix, self.service), prefix=True)
            for kv in r.kvs:
                inst = Instance.from_kv(self.prefix, kv)
                if inst is not None:
                    self._pending.append(ServiceEvent("added", inst, kv.mod_revision))
            start = r.revision + 1
        self._watch = self.client.watch(
            _watch_prefix(self.prefix, self.service), prefix=True, prev_kv=True,
            start_revision=start,
        )  # fmt: skip
        if self._closed:
            self._watch.cancel()
        await self._watch.start()
        return self

    def __aiter__(self) -> AsyncIterator[ServiceEvent]:
        return self

    async def __anext__(self) -> ServiceEvent:
        await self.start()
        assert self._watch is not None
        while not self._pending:
            batch = await self._watch.__anext__()
            self._pending = [e for ev in batch.events if (e := _to_event(self.prefix, ev))]
        return self._pending.pop(0)

    def cancel(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()

    async def __aenter__(self) -> AsyncServiceWatch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncRegistry:
    """:class:`Registry` for the asyncio client."""

    def __init__(self, client: AsyncClient, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = _base(prefix)

    async def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: int = 10,
    ) -> AsyncRegistration:
        inst = _new_instance(service, instance_id, address, port, metadata)
        return await AsyncRegistration(self.client, inst, ttl, self.prefix).start()

    async def discover(self, service: str) -> list[Instance]:
        r = await self.client.get(_watch_prefix(self.prefix, service), prefix=True)
        return [i for kv in r.kvs if (i := Instance.from_kv(self.prefix, kv))]

    async def services(self) -> dict[str, list[Instance]]:
        r = await self.client.get(_watch_prefix(self.prefix, None), prefix=True)
        out: dict[str, list[Instance]] = {}
        for kv in r.kvs:
            inst = Instance.from_kv(self.prefix, kv)
            if inst is not None:
                out.setdefault(inst.service, []).append(inst)
        return out

    def watch_service(
        self, service: str | None = None, *, initial: bool = False
    ) -> AsyncServiceWatch:
        """``async for change in registry.watch_service("api"):`` (see ``Registry``)."""
        return AsyncServiceWatch(self.client, self.prefix, service, initial)


# --- command line -----------------------------------------------------------------------


def _parse_metadata(items: list[str], raw_json: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(raw_json) if raw_json else {}
    if not isinstance(meta, dict):
        raise SystemExit("--metadata-json must be a JSON object")
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"--meta expects key=value, got {item!r}")
        meta[k] = v
    return meta


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cluster.registry", description="Service registration and discovery."
    )
    p.add_argument(
        "--endpoints",
        default=os.environ.get("ETCDCTL_ENDPOINTS", "127.0.0.1:2379"),
        help="comma-separated host:port list (default $ETCDCTL_ENDPOINTS or 127.0.0.1:2379)",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix (default /services)")
    p.add_argument("--user", help="user for etcd auth (password from $ETCD_PASSWORD)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="register an instance and keep it alive until Ctrl-C")
    r.add_argument("service")
    r.add_argument("instance_id")
    r.add_argument("--address", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--metadata-json", help="metadata as a JSON object")
    r.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds (default 10)")

    ls = sub.add_parser("list", help="list live instances")
    ls.add_argument("service", nargs="?")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    w = sub.add_parser("watch", help="print changes until Ctrl-C")
    w.add_argument("service", nargs="?")
    w.add_argument("--initial", action="store_true", help="start with the current instances")
    return p


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client = Client(
        args.endpoints, user=args.user, password=os.environ.get("ETCD_PASSWORD"),
    )  # fmt: skip
    registry = Registry(client, args.prefix)
    try:
        if args.command == "register":
            return _cmd_register(registry, args)
        if args.command == "list":
            if args.service:
                found = {args.service: registry.discover(args.service)}
            else:
                found = registry.services()
            for service in sorted(found):
                for inst in found[service]:
                    if args.json:
                        _print_json(inst.as_dict())
                    else:
                        meta = json.dumps(inst.metadata, sort_keys=True) if inst.metadata else ""
                        print(f"{service}\t{inst.instance_id}\t{inst.endpoint}\t{meta}".rstrip())
            return 0
        with registry.watch_service(args.service, initial=args.initial) as changes:
            try:
                for change in changes:
                    _print_json(
                        {"type": change.type, "revision": change.revision,
                         **change.instance.as_dict()}
                    )  # fmt: skip
            except KeyboardInterrupt:
                pass
        return 0
    except EtcdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _cmd_register(registry: Registry, args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    meta = _parse_metadata(args.meta, args.metadata_json)
    reg = registry.register(args.service, args.instance_id, args.address, args.port, meta, args.ttl)
    lease = reg.lease.id if reg.lease is not None else 0
    _print_json({"registered": reg.key, "lease": lease, "ttl": args.ttl, "pid": os.getpid()})
    while not stop.wait(0.5):
        pass
    reg.deregister()
    _print_json({"deregistered": reg.key})
    return 0


if __name__ == "__main__":
    sys.exit(main())
