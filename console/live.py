"""What the live pages show, as plain JSON-ready data: watch events, registry instances and
their changes, cluster dashboard samples.

The websocket consumers (``console/consumers.py``) and the server-rendered first views
(``console/views/{watch,services,cluster}.py``) share these pure functions, so a page looks the
same before and after its socket connects. 64-bit ids (leases, members, the cluster) travel as
hex strings, as etcdctl prints them: JavaScript numbers cannot hold them exactly.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings

from cluster.client import Alarm, Event, EventType, KeyValue, Member, Status
from cluster.registry import DEFAULT_PREFIX, Instance
from console.keys import encode_key

__all__ = [
    "EXPIRY_SLACK",
    "RemovalKind",
    "build_sample",
    "classify_removal",
    "console_revoker",
    "encode_event",
    "hex_id",
    "instance_dict",
    "note_console_revoke",
    "registry_prefix",
    "service_prefix",
    "text_or_b64",
]

RemovalKind = Literal["deregistered", "expired"]
EXPIRY_SLACK = 0.25
"""Seconds before a lease's expected end at which a delete already counts as its expiry."""


def hex_id(value: int) -> str:
    """A 64-bit id as etcdctl prints it (``""`` for 0: none)."""
    return f"{value:x}" if value else ""


def text_or_b64(data: bytes, limit: int | None = None) -> tuple[str, str, bool]:
    """``(text, encoding, truncated)``: UTF-8 text when ``data`` (cut to ``limit`` bytes) is
    valid UTF-8, else base64."""
    cut = data if limit is None or len(data) <= limit else data[:limit]
    truncated = len(cut) < len(data)
    # a cut may split the last multi-byte character: drop up to 3 bytes of it
    for drop in range(4 if truncated else 1):
        try:
            return cut[: len(cut) - drop].decode("utf-8"), "utf-8", truncated
        except UnicodeDecodeError:
            continue
    return base64.b64encode(cut).decode("ascii"), "base64", truncated


# --- watch ----------------------------------------------------------------------------------


def _kv_dict(kv: KeyValue, limit: int) -> dict[str, Any]:
    value, enc, truncated = text_or_b64(kv.value, limit)
    return {
        "value": value,
        "value_enc": enc,
        "truncated": truncated,
        "size": len(kv.value),
        "lease": hex_id(kv.lease),
        "version": kv.version,
        "create_rev": kv.create_revision,
        "mod_rev": kv.mod_revision,
    }


def encode_event(ev: Event, value_limit: int | None = None) -> dict[str, Any]:
    """One watch event for the browser: revision, type, key (text or base64, and its URL
    token), value (cut to ``value_limit`` bytes), lease; ``prev`` with the previous value."""
    limit = value_limit if value_limit is not None else settings.CONSOLE_WATCH_VALUE_BYTES
    key, key_enc, _ = text_or_b64(ev.kv.key)
    out: dict[str, Any] = {
        "rev": ev.revision,
        "type": "PUT" if ev.type == EventType.PUT else "DELETE",
        "key": key,
        "key_enc": key_enc,
        "token": encode_key(ev.kv.key),
        **_kv_dict(ev.kv, limit),
    }
    if ev.prev_kv is not None:
        out["prev"] = _kv_dict(ev.prev_kv, limit)
    return out


# --- service registry -----------------------------------------------------------------------


def registry_prefix() -> str:
    """``CONSOLE_REGISTRY_PREFIX`` without its trailing slash (cluster.registry's default)."""
    return str(getattr(settings, "CONSOLE_REGISTRY_PREFIX", DEFAULT_PREFIX)).rstrip("/")


def service_prefix(service: str | None = None) -> str:
    """The key prefix of one service's instances (every service's when None)."""
    base = registry_prefix()
    return f"{base}/{service}/" if service else f"{base}/"


def instance_dict(
    inst: Instance, ttl: int | None = None, granted_ttl: int | None = None
) -> dict[str, Any]:
    """One instance for the browser; ``ttl`` seconds left on its lease (-1: gone; None:
    unknown or no lease)."""
    return {
        "service": inst.service,
        "id": inst.instance_id,
        "address": inst.address,
        "port": inst.port,
        "endpoint": inst.endpoint,
        "metadata": inst.metadata,
        "registered_at": inst.registered_at,
        "lease": hex_id(inst.lease),
        "ttl": ttl,
        "granted_ttl": granted_ttl,
        "revision": inst.revision,
        "token": encode_key(inst.key(registry_prefix()).encode()),
    }


_revoked_lock = threading.Lock()
_revoked: dict[int, tuple[str, float]] = {}  # lease -> (console user, when)
REVOKE_MEMORY = 60.0


def note_console_revoke(lease: int, user: str) -> None:
    """A console user is about to revoke ``lease`` (the services pages name them)."""
    now = time.monotonic()
    with _revoked_lock:
        for old, (_, at) in list(_revoked.items()):
            if now - at > REVOKE_MEMORY:
                del _revoked[old]
        _revoked[lease] = (user, now)


def console_revoker(lease: int) -> str:
    """The console user who revoked ``lease`` in the last minute, or ``""``."""
    with _revoked_lock:
        found = _revoked.get(lease)
    return found[0] if found and time.monotonic() - found[1] <= REVOKE_MEMORY else ""


def classify_removal(
    lease: int, expected_end: float | None, now: float, revoked_by_console: bool
) -> RemovalKind:
    """Why an instance's key went: ``expired`` when its lease ran out, else ``deregistered``.

    etcd does not say why a key was deleted. A delete that came when the lease's last known
    remaining TTL (``expected_end``, a monotonic time) had run out is its expiry; one that came
    earlier, or from a console user's revoke, or of a key without a lease, was a deregistration
    (the process revoking its lease on the way out, or someone deleting the key). TTLs read
    every second make this reliable for leases of 4 s and more.
    """
    if revoked_by_console or not lease:
        return "deregistered"
    if expected_end is not None and now >= expected_end - EXPIRY_SLACK:
        return "expired"
    return "deregistered"


# --- cluster dashboard ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemberProbe:
    """A member's Status, or why it did not answer."""

    member: Member
    status: Status | None = None
    error: str = ""


def build_sample(
    members: Iterable[MemberProbe],
    alarms: Iterable[Alarm] = (),
    *,
    at: float | None = None,
    previous: Mapping[str, Any] | None = None,
    error: str = "",
) -> dict[str, Any]:
    """One dashboard sample: every member with its status, the leader, the revision, alarms.

    With ``previous`` (the sample before), ``writes_per_s`` (revision delta over time) and
    ``leader_changed`` (against ``last_leader``, the last leader any sample saw) are filled
    in. ``error`` (the cluster did not answer) makes an empty sample that says so.
    """
    now = time.time() if at is None else at
    probes = list(members)
    statuses = [p.status for p in probes if p.status is not None]
    leader = 0
    for st in statuses:  # the leader as its own status says, else as most members see it
        if st.is_leader:
            leader = st.member_id
            break
    else:
        seen = [st.leader for st in statuses if st.leader]
        leader = max(set(seen), key=seen.count) if seen else 0
    leader_status = next((st for st in statuses if st.member_id == leader), None)
    leader_index = leader_status.raft_index if leader_status is not None else None
    alarm_list = list(alarms)
    by_member: dict[int, list[str]] = {}
    for a in alarm_list:
        by_member.setdefault(a.member_id, []).append(a.alarm)
    rows = []
    for p in probes:
        m, status = p.member, p.status
        row: dict[str, Any] = {
            "id": hex_id(m.id),
            "name": m.name,
            "client_urls": m.client_urls,
            "peer_urls": m.peer_urls,
            "is_learner": m.is_learner,
            "is_leader": bool(leader) and m.id == leader,
            "started": bool(m.client_urls),
            "healthy": status is not None and not status.errors,
            "error": p.error,
            "alarms": by_member.get(m.id, []),
        }
        if status is not None:
            row.update(
                raft_term=status.raft_term,
                raft_index=status.raft_index,
                applied_index=status.raft_applied_index,
                commit_lag=(leader_index - status.raft_index) if leader_index is not None else None,
                apply_lag=status.raft_index - status.raft_applied_index,
                db_size=status.db_size,
                db_size_in_use=status.db_size_in_use,
                version=status.version,
                revision=status.header.revision,
                errors=status.errors,
                sees_leader=hex_id(status.leader),
            )
        rows.append(row)
    revision = max((st.header.revision for st in statuses), default=0)
    cluster_id = next((st.header.cluster_id for st in statuses), 0)
    sample: dict[str, Any] = {
        "time": now,
        "error": error,
        "cluster_id": hex_id(cluster_id),
        "leader": hex_id(leader),
        "leader_name": next((m.member.name for m in probes if m.member.id == leader), ""),
        "raft_term": leader_status.raft_term if leader_status is not None else None,
        "revision": revision,
        "members": rows,
        "alarms": [{"member": hex_id(a.member_id), "alarm": a.alarm} for a in alarm_list],
        "writes_per_s": None,
        "leader_changed": False,
    }
    # The leader before this sample, across samples that saw none (an election under way,
    # or the cluster not answering): a change through a leaderless sample is still one.
    before = (previous or {}).get("last_leader") or (previous or {}).get("leader") or ""
    sample["last_leader"] = sample["leader"] or before
    if previous is not None and not error:
        dt = now - float(previous.get("time") or now)
        prev_rev = int(previous.get("revision") or 0)
        if dt > 0 and prev_rev and revision >= prev_rev:
            sample["writes_per_s"] = round((revision - prev_rev) / dt, 1)
        sample["leader_changed"] = bool(before and sample["leader"] and before != sample["leader"])
        sample["previous_leader"] = before
    return sample
