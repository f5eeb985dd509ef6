"""The console's one gateway to the cluster: a shared ``cluster.client.Client`` built from settings.

Every view, API endpoint and consumer gets its client here (``client()``), never by building
one itself, so the console works the same against our cluster and against a real etcd, and
tests can point it elsewhere (``reset()`` after changing the settings). Async code (the
websocket consumers) uses ``async_client()``: an ``AsyncClient`` built the same way, one per
event loop. Settings:

- ``CONSOLE_ETCD_ENDPOINTS``: ``host:port`` list (env: comma-separated);
- ``CONSOLE_ETCD_USER`` / ``CONSOLE_ETCD_PASSWORD``: etcd authentication, optional;
- ``CONSOLE_ETCD_CA_FILE``, ``CONSOLE_ETCD_CERT_FILE``, ``CONSOLE_ETCD_KEY_FILE``: TLS, optional;
- ``CONSOLE_ETCD_TIMEOUT``: seconds per call (default 5);
- ``CONSOLE_ETCD_RETRY_TIMEOUT``: seconds a call keeps retrying other endpoints when one is
  unavailable (default 5; lower it so pages fail faster while the whole cluster is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from cluster.client import AsyncClient, Client, EtcdError

__all__ = ["ClusterSummary", "EtcdError", "async_client", "client", "reset", "summary"]

_lock = threading.Lock()
_client: Client | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_closing: set[asyncio.Task[None]] = set()  # async clients being closed (kept referenced)


def _options() -> dict[str, Any]:
    return {
        "timeout": float(getattr(settings, "CONSOLE_ETCD_TIMEOUT", 5.0)),
        "retry_timeout": float(getattr(settings, "CONSOLE_ETCD_RETRY_TIMEOUT", 5.0)),
        "user": getattr(settings, "CONSOLE_ETCD_USER", None) or None,
        "password": getattr(settings, "CONSOLE_ETCD_PASSWORD", None) or None,
        "ca_file": getattr(settings, "CONSOLE_ETCD_CA_FILE", None) or None,
        "cert_file": getattr(settings, "CONSOLE_ETCD_CERT_FILE", None) or None,
        "key_file": getattr(settings, "CONSOLE_ETCD_KEY_FILE", None) or None,
    }


def _build() -> Client:
    return Client(list(settings.CONSOLE_ETCD_ENDPOINTS), **_options())


def client() -> Client:
    """The process-wide client (thread-safe; created on first use)."""
    global _client
    with _lock:
        if _client is None:
            _client = _build()
        return _client


def async_client() -> AsyncClient:
    """The running event loop's ``AsyncClient`` (created on first use in that loop)."""
    loop = asyncio.get_running_loop()
    with _lock:
        found = _async_clients.get(loop)
        if found is None:
            found = AsyncClient(list(settings.CONSOLE_ETCD_ENDPOINTS), **_options())
            _async_clients[loop] = found
        return found


def reset() -> None:
    """Close the clients; the next ``client()`` / ``async_client()`` build new ones from the
    current settings. An async client is closed in its own loop (dropped if that has ended)."""
    global _client
    with _lock:
        old, _client = _client, None
        olds = list(_async_clients.items())
        _async_clients.clear()
    if old is not None:
        old.close()
    for loop, aclient in olds:
        _close_in(loop, aclient)


def _close_in(loop: asyncio.AbstractEventLoop, aclient: AsyncClient) -> None:
    def close() -> None:
        task = loop.create_task(aclient.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(close)


@dataclass(frozen=True)
class ClusterSummary:
    """What the page header shows: which cluster, its leader, its revision."""

    cluster_id: int
    leader_id: int
    leader_name: str
    revision: int
    endpoint: str
    error: str = ""


def summary() -> ClusterSummary:
    """The header's cluster line; a summary carrying ``error`` when the cluster is unreachable."""
    c = client()
    try:
        status = c.status()
        members = {m.id: m.name for m in c.member_list()}
    except EtcdError as exc:
        return ClusterSummary(0, 0, "", 0, c.current_endpoint, error=str(exc))
    return ClusterSummary(
        cluster_id=status.header.cluster_id,
        leader_id=status.leader,
        leader_name=members.get(status.leader, ""),
        revision=status.header.revision,
        endpoint=c.current_endpoint,
    )
