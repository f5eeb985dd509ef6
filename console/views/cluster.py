"""The cluster dashboard (``/cluster/``) and its admin actions.

The page is rendered with one sample of every member's status (``console.live.build_sample``)
and then refreshed about once a second by ``console.consumers.ClusterConsumer`` over
``/ws/cluster/`` (static/console/cluster.js draws the tables and charts).

Actions, each confirmed on a page of its own and sent as a POST: editors compact the keyspace,
defragment a member, download a snapshot and move the leader; superusers add, remove and
promote members (they change the cluster itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from cluster.client import (
    CompactedError,
    DeadlineExceededError,
    EtcdError,
    FutureRevisionError,
    Member,
    UnavailableError,
)
from console import etcd, live
from console.roles import can_edit, editor_required
from console.views.keys import cluster_errors

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])


def superuser_required(view: _View) -> _View:
    """403 unless the user is a superuser (use under ``login_required``)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not getattr(request.user, "is_superuser", False):
            raise PermissionDenied(
                "superusers only: adding, removing and promoting members changes the cluster"
            )
        return view(request, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def sample() -> dict[str, Any]:
    """One dashboard sample read with the blocking client (the page's first view)."""
    c = etcd.client()
    probes = []
    for m in c.member_list():
        if not m.client_urls:
            probes.append(live.MemberProbe(m, error="not started yet (no client URLs)"))
            continue
        try:
            probes.append(live.MemberProbe(m, c.status(m.client_urls[0])))
        except EtcdError as exc:
            probes.append(live.MemberProbe(m, error=exc.message or str(exc)))
    try:
        alarms = c.alarms()
    except EtcdError:
        alarms = []
    return live.build_sample(probes, alarms)


def _member(member_id: str) -> Member:
    try:
        wanted = int(member_id, 16)
    except ValueError:
        raise Http404("member ids are hex") from None
    for m in etcd.client().member_list():
        if m.id == wanted:
            return m
    raise Http404(f"no member {member_id} in the cluster")


def _member_row(member_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = sample()["members"]
    for row in rows:
        if row["id"] == member_id.lower():
            return row
    raise Http404(f"no member {member_id} in the cluster")


def _back() -> HttpResponse:
    return redirect("cluster:dashboard")


@login_required
@require_GET
@cluster_errors
def dashboard(request: HttpRequest) -> HttpResponse:
    """Members, their status and alarms; charts and actions."""
    first = sample()
    is_superuser = bool(getattr(request.user, "is_superuser", False))
    config = {
        "ws": "/ws/cluster/",
        "can_edit": can_edit(request.user),
        "is_superuser": is_superuser,
        "urls": {
            "defragment": reverse("cluster:defragment", args=["__id__"]),
            "remove": reverse("cluster:member_remove", args=["__id__"]),
            "promote": reverse("cluster:member_promote", args=["__id__"]),
        },
    }
    return render(
        request,
        "console/cluster/dashboard.html",
        {"sample": first, "config": config, "initial": first, "is_superuser": is_superuser},
    )


# --- compaction -----------------------------------------------------------------------------


class CompactForm(forms.Form):
    revision = forms.IntegerField(min_value=1, label="Compact up to revision")
    physical = forms.BooleanField(
        required=False,
        label="Physical: answer only once the old revisions are removed from the backend",
    )


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def compact(request: HttpRequest) -> HttpResponse:
    """Compact the keyspace: every revision before the chosen one is forgotten."""
    current = etcd.client().status().header.revision
    form = CompactForm(request.POST or None, initial={"revision": current})
    if request.method == "POST" and form.is_valid():
        rev = form.cleaned_data["revision"]
        try:
            etcd.client().compact(rev, physical=form.cleaned_data["physical"])
        except CompactedError:
            form.add_error("revision", f"Revision {rev} is already compacted.")
        except FutureRevisionError:
            form.add_error("revision", f"Revision {rev} is beyond the current one ({current}).")
        else:
            messages.success(request, f"Compacted the keyspace up to revision {rev}.")
            return _back()
    return render(request, "console/cluster/compact.html", {"form": form, "current": current})


# --- one member -----------------------------------------------------------------------------


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def defragment(request: HttpRequest, member_id: str) -> HttpResponse:
    """Defragment one member's backend (it stops serving while it does)."""
    row = _member_row(member_id)
    if request.method == "POST":
        if not row["client_urls"]:
            messages.error(request, f"{row['name'] or row['id']} has not started.")
            return _back()
        c = etcd.client()
        c.defragment(row["client_urls"][0])
        after = c.status(row["client_urls"][0])
        messages.success(
            request,
            f"Defragmented {row['name'] or row['id']}: the backend is {after.db_size} bytes "
            f"({after.db_size_in_use} in use; it was {row.get('db_size', '?')}).",
        )
        return _back()
    return render(request, "console/cluster/defragment.html", {"member": row})


class MoveLeaderForm(forms.Form):
    target = forms.ChoiceField(label="New leader")


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def move_leader(request: HttpRequest) -> HttpResponse:
    """Hand leadership to another voting member (asked of the current leader)."""
    now = sample()
    leader = next((m for m in now["members"] if m["is_leader"]), None)
    choices = [
        (m["id"], f"{m['name'] or '(unnamed)'} ({m['id']})")
        for m in now["members"]
        if not m["is_leader"] and not m["is_learner"] and m["healthy"]
    ]
    form = MoveLeaderForm(request.POST or None)
    target_field = form.fields["target"]
    assert isinstance(target_field, forms.ChoiceField)
    target_field.choices = choices
    if request.method == "POST" and form.is_valid() and leader is not None:
        target = int(form.cleaned_data["target"], 16)
        try:
            etcd.client().move_leader(target, leader["client_urls"][0])
        except EtcdError as exc:
            form.add_error("target", f"The leader refused: {exc.message or exc}")
        else:
            name = dict(choices).get(form.cleaned_data["target"], "")
            messages.success(request, f"Leadership moved to {name}.")
            return _back()
    return render(
        request,
        "console/cluster/move_leader.html",
        {"form": form, "leader": leader, "has_choices": bool(choices)},
    )


# --- snapshot -------------------------------------------------------------------------------


@login_required
@editor_required
@require_GET
@cluster_errors
def snapshot(request: HttpRequest) -> HttpResponse:
    """Confirm a snapshot download and choose the member to take it from."""
    now = sample()
    members = [m for m in now["members"] if m["healthy"]]
    return render(request, "console/cluster/snapshot.html", {"members": members})


@require_POST
async def snapshot_download(request: HttpRequest) -> HttpResponseBase:
    """Stream the chosen member's Maintenance.Snapshot to the browser as a file (what
    ``etcdctl snapshot save`` writes: ``etcdctl snapshot restore`` takes it)."""
    user = await request.auser()
    if not user.is_authenticated:
        return redirect_to_login(reverse("cluster:snapshot"))
    if not await sync_to_async(can_edit)(user):
        raise PermissionDenied("editors only: your account may only read")
    client = etcd.async_client()
    wanted = request.POST.get("member", "")
    try:
        members = await client.member_list()
        member = next((m for m in members if f"{m.id:x}" == wanted), None)
        if member is None or not member.client_urls:
            raise Http404(f"no started member {wanted} in the cluster")
        stream = client.snapshot(member.client_urls[0])
        first = await anext(stream, b"")
    except EtcdError as exc:
        return await sync_to_async(render)(
            request,
            "console/cluster_error.html",
            {"error": exc, "kind": type(exc).__name__},
            status=503,
        )

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = "".join(ch for ch in (member.name or f"{member.id:x}") if ch.isalnum() or ch in "-_")
    response = StreamingHttpResponse(body(), content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="snapshot-{name}-{stamp}.db"'
    response["Cache-Control"] = "no-store"
    return response


# --- membership (superusers) ----------------------------------------------------------------


class MemberAddForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="The new member's --name (used in the lines to start it)."
    )
    peer_urls = forms.CharField(
        max_length=1000,
        label="Peer URLs",
        help_text="Comma-separated, e.g. http://10.0.0.4:2380",
    )
    learner = forms.BooleanField(
        required=False, label="As a learner (a non-voting member, promoted once it caught up)"
    )

    def clean_peer_urls(self) -> list[str]:
        urls = [u.strip() for u in self.cleaned_data["peer_urls"].split(",") if u.strip()]
        if not urls:
            raise forms.ValidationError("Give at least one peer URL.")
        for u in urls:
            if not (u.startswith("http://") or u.startswith("https://")):
                raise forms.ValidationError(f"“{u}” is not an http:// or https:// URL.")
        return urls


def start_lines(name: str, new: Member, members: list[Member]) -> list[str]:
    """The ETCD_* settings to start the new member with, as ``etcdctl member add`` prints."""
    initial = [
        f"{name if m.id == new.id else m.name}={url}" for m in members for url in m.peer_urls
    ]
    return [
        f'ETCD_NAME="{name}"',
        f'ETCD_INITIAL_CLUSTER="{",".join(initial)}"',
        f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(new.peer_urls)}"',
        'ETCD_INITIAL_CLUSTER_STATE="existing"',
    ]


@login_required
@superuser_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def member_add(request: HttpRequest) -> HttpResponse:
    """Add a member (or learner); shows how to start it."""
    form = MemberAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            new, members = etcd.client().member_add(d["peer_urls"], is_learner=d["learner"])
        except EtcdError as exc:
            if isinstance(exc, UnavailableError | DeadlineExceededError):
                raise
            form.add_error(None, f"The cluster refused: {exc.message or exc}")
        else:
            return render(
                request,
                "console/cluster/member_added.html",
                {"name": d["name"], "new": new, "lines": start_lines(d["name"], new, members)},
            )
    return render(request, "console/cluster/member_add.html", {"form": form})


def _membership_action(
    request: HttpRequest,
    member_id: str,
    template: str,
    act: Callable[[Member], object],
    done: str,
) -> HttpResponse:
    member = _member(member_id)
    if request.method == "POST":
        try:
            act(member)
        except EtcdError as exc:
            if isinstance(exc, UnavailableError | DeadlineExceededError):
                raise
            messages.error(request, f"The cluster refused: {exc.message or exc}")
        else:
            messages.success(request, done.format(name=member.name or f"{member.id:x}"))
        return _back()
    return render(request, template, {"member": member, "member_hex": f"{member.id:x}"})


@login_required
@superuser_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def member_remove(request: HttpRequest, member_id: str) -> HttpResponse:
    """Remove a member from the cluster (stop its process afterwards)."""
    return _membership_action(
        request,
        member_id,
        "console/cluster/member_remove.html",
        lambda m: etcd.client().member_remove(m.id),
        "Removed {name} from the cluster.",
    )


@login_required
@superuser_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def member_promote(request: HttpRequest, member_id: str) -> HttpResponse:
    """Promote a learner to a voting member."""
    return _membership_action(
        request,
        member_id,
        "console/cluster/member_promote.html",
        lambda m: etcd.client().member_promote(m.id),
        "Promoted {name} to a voting member.",
    )
