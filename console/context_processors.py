"""Template context for every page: the cluster line of the header (``console.etcd.summary``).

The summary is lazy (only pages that show it contact the cluster) and only for logged-in
users. When a view already found the cluster unreachable it records the error on the request
(``request.etcd_error``), and the header shows that error instead of trying again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from console import etcd
from console.roles import can_edit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeaderSummary:
    """What base.html shows: ids in hex (as etcdctl prints them), or ``error``."""

    cluster_id: str = ""
    leader_id: str = ""
    leader_name: str = ""
    revision: int = 0
    endpoint: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def header_summary(request: HttpRequest | None = None) -> HeaderSummary:
    """The header's cluster summary; never raises (an error becomes ``error``)."""
    failed = getattr(request, "etcd_error", None) if request is not None else None
    if failed is not None:
        return HeaderSummary(error=str(failed))
    try:
        probe = _probe()
        if probe:
            return HeaderSummary(error=probe)
        s = etcd.summary()
    except Exception as exc:  # the header must never turn a page into a 500
        log.exception("cluster summary failed")
        return HeaderSummary(error=f"{type(exc).__name__}: {exc}")
    if s.error:
        return HeaderSummary(endpoint=s.endpoint, error=s.error)
    return HeaderSummary(
        cluster_id=f"{s.cluster_id:x}",
        leader_id=f"{s.leader_id:x}" if s.leader_id else "",
        leader_name=s.leader_name,
        revision=s.revision,
        endpoint=s.endpoint,
    )


def _probe() -> str:
    """ "" when some endpoint answers Status; else the last error (each endpoint tried once).

    ``etcd.summary()`` retries an unreachable cluster for the client's whole retry budget;
    this one pinned call per endpoint makes a down cluster cost milliseconds instead.
    """
    c = etcd.client()
    error = "no endpoints configured"
    for endpoint in c.endpoints:
        try:
            c.status(endpoint=endpoint)
        except etcd.EtcdError as exc:
            error = str(exc)
            continue
        return ""
    return error


def cluster(request: HttpRequest) -> dict[str, object]:
    """``cluster``: a lazy :class:`HeaderSummary` (None for anonymous users); ``can_edit``."""
    if not request.user.is_authenticated:
        return {"cluster": None, "can_edit": False}
    return {
        "cluster": SimpleLazyObject(lambda: header_summary(request)),
        "can_edit": SimpleLazyObject(lambda: can_edit(request.user)),
    }
