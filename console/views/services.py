"""The service registry pages: every service with its instance count (``/services/``), one
service's instances and recent changes (``/services/<name>/``), and the editors' actions:
register an instance by hand (a lease nobody keeps alive: it expires) and deregister one
(revoke its lease).

Instances are what ``cluster.registry`` writes under ``CONSOLE_REGISTRY_PREFIX``. The pages
are rendered with the current state, then kept live by ``console.consumers.ServicesConsumer``
(``/ws/services/``, static/console/services.js).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from cluster.client import Compare, LeaseNotFoundError, Op
from cluster.registry import Instance, Registry
from console import etcd, live
from console.roles import can_edit, editor_required
from console.views.keys import cluster_errors

MAX_TTL_READS = 200
"""Instances whose lease TTL a server-rendered page reads (the websocket reads them all)."""


def _check_service(service: str) -> None:
    if not service or "/" in service:
        raise Http404("no such service name")


def _ttls(leases: set[int]) -> dict[int, tuple[int, int]]:
    c = etcd.client()
    out: dict[int, tuple[int, int]] = {}
    for lease in sorted(x for x in leases if x)[:MAX_TTL_READS]:
        try:
            r = c.time_to_live(lease)
        except LeaseNotFoundError:
            out[lease] = (-1, 0)
            continue
        out[lease] = (r.ttl, r.granted_ttl)
    return out


def _registry() -> Registry:
    return Registry(etcd.client(), live.registry_prefix())


@login_required
@require_GET
@cluster_errors
def service_list(request: HttpRequest) -> HttpResponse:
    """Every registered service with its number of live instances."""
    services = _registry().services()
    rows = [{"name": name, "count": len(found)} for name, found in sorted(services.items())]
    config = {
        "ws": "/ws/services/",
        "service": None,
        "service_url": reverse("services:list"),
        "key_url": reverse("keys:tree") + "k/",
    }
    return render(
        request,
        "console/services/list.html",
        {"rows": rows, "config": config, "prefix": live.service_prefix()},
    )


@login_required
@require_GET
@cluster_errors
def service_detail(request: HttpRequest, service: str) -> HttpResponse:
    """One service: its instances (address, port, metadata, lease TTL, registered since) and
    a feed of recent changes."""
    _check_service(service)
    found = _registry().discover(service)
    ttls = _ttls({i.lease for i in found})
    instances = [live.instance_dict(i, *ttls.get(i.lease, (None, None))) for i in found]
    config = {
        "ws": "/ws/services/?" + urlencode({"service": service}),
        "service": service,
        "service_url": reverse("services:list"),
        "key_url": reverse("keys:tree") + "k/",
        "deregister_url": reverse("services:deregister", args=[service]),
        "can_edit": can_edit(request.user),
    }
    return render(
        request,
        "console/services/detail.html",
        {
            "service": service,
            "instances": instances,
            "config": config,
            "prefix": live.service_prefix(service),
        },
    )


# --- register by hand -----------------------------------------------------------------------


def _no_slash(value: str) -> None:
    if "/" in value:
        raise forms.ValidationError("No “/” here.")


class RegisterForm(forms.Form):
    service = forms.CharField(max_length=200, validators=[_no_slash])
    instance_id = forms.CharField(max_length=200, label="Instance id")
    address = forms.CharField(max_length=255)
    port = forms.IntegerField(min_value=1, max_value=65535)
    metadata = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One key=value per line, or a JSON object.",
    )
    ttl = forms.IntegerField(
        min_value=1,
        max_value=7 * 24 * 3600,
        initial=60,
        label="TTL (seconds)",
        help_text="Nobody keeps this lease alive: the instance disappears when it runs out.",
    )

    def clean_metadata(self) -> dict[str, Any]:
        text = (self.cleaned_data.get("metadata") or "").strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise forms.ValidationError("The JSON must be an object.")
            return data
        out: dict[str, Any] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise forms.ValidationError(f"Expected key=value, got “{line}”.")
            out[key.strip()] = value.strip()
        return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def register(request: HttpRequest) -> HttpResponse:
    """Register an instance under a new lease with the given TTL (never kept alive)."""
    initial = {"service": request.GET.get("service", "")}
    form = RegisterForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        inst = Instance(
            d["service"], d["instance_id"], d["address"], d["port"], d["metadata"], _now()
        )
        key = inst.key(live.registry_prefix())
        c = etcd.client()
        lease = c.grant(d["ttl"])
        r = c.txn(
            compare=[Compare.create_revision(key) == 0],
            success=[Op.put(key, inst.to_json(), lease=lease.id)],
        )
        if r.succeeded:
            messages.success(
                request,
                f"Registered {inst.instance_id} ({inst.endpoint}) with a {lease.ttl} s lease "
                f"({lease.id:x}) that nobody keeps alive.",
            )
            return redirect("services:detail", service=inst.service)
        c.revoke(lease.id)
        form.add_error("instance_id", "This instance is already registered.")
    return render(request, "console/services/register.html", {"form": form})


# --- deregister -----------------------------------------------------------------------------


def _instance(service: str, instance_id: str) -> Instance | None:
    prefix = live.registry_prefix()
    kv = etcd.client().get(f"{prefix}/{service}/{instance_id}").kv
    return Instance.from_kv(prefix, kv) if kv is not None else None


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def deregister(request: HttpRequest, service: str) -> HttpResponse:
    """Confirm, then revoke the instance's lease (every key attached to it goes), or delete
    its key when it has no lease. ``id``: the instance id (query or form)."""
    _check_service(service)
    instance_id = request.POST.get("id") or request.GET.get("id", "")
    inst = _instance(service, instance_id) if instance_id else None
    detail_url = reverse("services:detail", args=[service])
    if inst is None:
        messages.error(request, f"No instance “{instance_id}” of {service} (it may be gone).")
        return redirect(detail_url)
    c = etcd.client()
    if request.method == "POST":
        seen = request.POST.get("lease", "")
        if seen != live.hex_id(inst.lease):
            messages.error(request, "The instance was registered again meanwhile: check it.")
            return redirect(f"{request.path}?{urlencode({'id': instance_id})}")
        if inst.lease:
            live.note_console_revoke(inst.lease, request.user.get_username())
            with contextlib.suppress(LeaseNotFoundError):  # expired meanwhile: gone all the same
                c.revoke(inst.lease)
        else:
            key = inst.key(live.registry_prefix())
            c.txn(compare=[Compare.mod_revision(key) == inst.revision], success=[Op.delete(key)])
        messages.success(request, f"Deregistered {inst.instance_id} ({inst.endpoint}).")
        return redirect(detail_url)
    attached: list[str] = []
    ttl: tuple[int, int] | None = None
    if inst.lease:
        try:
            r = c.time_to_live(inst.lease, keys=True)
            attached = [k.decode("utf-8", "replace") for k in r.keys]
            ttl = (r.ttl, r.granted_ttl)
        except LeaseNotFoundError:
            ttl = (-1, 0)
    return render(
        request,
        "console/services/deregister.html",
        {
            "service": service,
            "inst": live.instance_dict(inst, *(ttl or (None, None))),
            "attached": attached,
            "detail_url": detail_url,
        },
    )
