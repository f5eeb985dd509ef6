"""The console's one gateway to the cluster: a shared ``cluster.client.Client`` built from settings.

Every view, API endpoint and consumer gets its client here (``client()``), never by building
one itself, so the console works the same against our cluster and against a real etcd, and
tests can point it elsewhere (``reset()`` after changing the settings). Settings:

- ``CONSOLE_ETCD_ENDPOINTS``: ``host:port`` list (env: comma-separated);
- ``CONSOLE_ETCD_USER`` / ``CONSOLE_ETCD_PASSWORD``: etcd authentication, optional;
- ``CONSOLE_ETCD_CA_FILE``, ``CONSOLE_ETCD_CERT_FILE``, ``CONSOLE_ETCD_KEY_FILE``: TLS, optional;
- ``CONSOLE_ETCD_TIMEOUT``: seconds per call (default 5).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from django.conf import settings

from cluster.client import Client, EtcdError

__all__ = ["ClusterSummary", "EtcdError", "client", "reset", "summary"]

_lock = threading.Lock()
_client: Client | None = None


def _build() -> Client:
    return Client(
        list(settings.CONSOLE_ETCD_ENDPOINTS),
        timeout=float(getattr(settings, "CONSOLE_ETCD_TIMEOUT", 5.0)),
        user=getattr(settings, "CONSOLE_ETCD_USER", None) or None,
        password=getattr(settings, "CONSOLE_ETCD_PASSWORD", None) or None,
        ca_file=getattr(settings, "CONSOLE_ETCD_CA_FILE", None) or None,
        cert_file=getattr(settings, "CONSOLE_ETCD_CERT_FILE", None) or None,
        key_file=getattr(settings, "CONSOLE_ETCD_KEY_FILE", None) or None,
    )


def client() -> Client:
    """The process-wide client (thread-safe; created on first use)."""
    global _client
    with _lock:
        if _client is None:
            _client = _build()
        return _client


def reset() -> None:
    """Close the client; the next ``client()`` builds one from the current settings."""
    global _client
    with _lock:
        old, _client = _client, None
    if old is not None:
        old.close()


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
