"""The key browser: tree, key detail, history and diff, create / edit / delete, export / import.

All cluster work is in ``console.keys``; these views only parse requests and render. Keys travel
in URLs as base64url tokens (``console.keys.encode_key``): in the path for a key (the ``key``
path converter), in the ``p`` / ``after`` query parameters for folders and cursors. Every write
is guarded by the revision the user saw; a concurrent change renders the conflict page (409).
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from cluster.client import (
    DeadlineExceededError,
    KeyValue,
    LeaseNotFoundError,
    UnavailableError,
)
from console import keys
from console.etcd import EtcdError
from console.roles import editor_required

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])

ENCODINGS = [("utf-8", "Text (UTF-8)"), ("base64", "Base64 (any bytes)")]
PLAN_ROWS = 500  # rows per action shown on the import dry-run page
SESSION_IMPORTS = "console_import_plans"
PLAN_MAX_AGE = 24 * 3600.0  # seconds an unapplied dry run is kept


# --- plumbing -------------------------------------------------------------------------------


class KeyConverter:
    """Path converter ``<key:key>``: base64url token <-> raw key bytes."""

    regex = "[A-Za-z0-9_-]+"

    def to_python(self, value: str) -> bytes:
        try:
            return keys.decode_key(value)
        except keys.InvalidKeyError as exc:
            raise ValueError(str(exc)) from exc  # -> 404

    def to_url(self, value: bytes) -> str:
        return keys.encode_key(value)


def cluster_errors(view: _View) -> _View:
    """Render a clear 503 page (never a 500) when the cluster fails the request."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except EtcdError as exc:
            if isinstance(exc, UnavailableError | DeadlineExceededError):
                request.etcd_error = exc  # type: ignore[attr-defined]
            return render(
                request,
                "console/cluster_error.html",
                {"error": exc, "kind": type(exc).__name__},
                status=503,
            )

    return wrapped  # type: ignore[return-value]


def _folder_param(request: HttpRequest, name: str = "p") -> bytes:
    token = request.GET.get(name, "") or request.POST.get(name, "")
    if not token:
        return b""
    try:
        return keys.decode_key(token)
    except keys.InvalidKeyError as exc:
        raise Http404("bad folder token") from exc


def tree_url(folder: bytes = b"", **extra: str) -> str:
    """The tree page of ``folder`` (query parameters ``p`` and ``extra``)."""
    params = {"p": keys.encode_key(folder)} if folder else {}
    params.update({k: v for k, v in extra.items() if v})
    url = reverse("keys:tree")
    return f"{url}?{urlencode(params)}" if params else url


def _crumbs(folder: bytes) -> list[dict[str, str]]:
    return [
        {"label": keys.display(label), "url": tree_url(prefix)}
        for prefix, label in keys.parent_folders(folder)
    ]


def _editable_text(value: bytes) -> tuple[str, str]:
    """(text, encoding) for a form: UTF-8 when it round-trips through a textarea, else base64."""
    view = keys.describe_value(value)
    if view.format != "binary" and "\r" not in view.raw_text:
        return view.raw_text, "utf-8"
    return _b64(value), "base64"


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# --- forms ----------------------------------------------------------------------------------


class ValueField(forms.CharField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}))
        super().__init__(required=False, strip=False, **kwargs)


class _ValueForm(forms.Form):
    value = ValueField()
    value_encoding = forms.ChoiceField(choices=ENCODINGS, initial="utf-8", label="Value is")

    def clean_value_bytes(self) -> bytes:
        text = self.cleaned_data.get("value", "") or ""
        enc = self.cleaned_data.get("value_encoding", "utf-8")
        if enc == "utf-8":
            text = text.replace("\r\n", "\n")  # browsers send textarea lines with CRLF
        try:
            return keys.from_text(text, enc)
        except ValueError as exc:
            raise forms.ValidationError(f"Value: {exc}") from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.errors:
            try:
                data["value_bytes"] = self.clean_value_bytes()
            except forms.ValidationError as exc:
                self.add_error("value", exc)
        return data


class CreateForm(_ValueForm):
    key = forms.CharField(strip=False, max_length=1_000_000)
    key_encoding = forms.ChoiceField(choices=ENCODINGS, initial="utf-8", label="Key is")
    ttl = forms.IntegerField(
        required=False, min_value=1, max_value=10**9, label="TTL (seconds, optional)"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order_fields(["key", "key_encoding", "value", "value_encoding", "ttl"])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "key" in data:
            try:
                key = keys.from_text(data["key"], data.get("key_encoding", "utf-8"))
            except ValueError as exc:
                self.add_error("key", str(exc))
                return data
            if not key:
                self.add_error("key", "The key is empty.")
            data["key_bytes"] = key
        return data


class EditForm(_ValueForm):
    seen = forms.IntegerField(min_value=0, widget=forms.HiddenInput)


class ImportForm(forms.Form):
    file = forms.FileField(label="Export file (JSON)")
    target_prefix = forms.CharField(
        required=False,
        strip=False,
        label="Import into prefix",
        help_text="Leave empty to use the prefix recorded in the file; "
        "otherwise its keys are moved under this prefix.",
    )
    replace = forms.BooleanField(
        required=False,
        label="Replace prefix: delete existing keys under the prefix that the file does not hold",
    )


# --- tree -----------------------------------------------------------------------------------


@login_required
@require_GET
@cluster_errors
def tree(request: HttpRequest) -> HttpResponse:
    """One folder level: child folders (with key counts) and keys, paged with a cursor."""
    folder = _folder_param(request)
    q = request.GET.get("q", "")
    sep = keys.separator()
    if q and sep.decode(errors="replace") in q:  # typed a path: open that folder
        target = keys.folder_of(folder + q.encode())
        rest = (folder + q.encode())[len(target) :]
        return redirect(tree_url(target, q=rest.decode(errors="replace")))
    after = _folder_param(request, "after") if request.GET.get("after") else None
    listing = keys.list_children(folder + q.encode(), after=after)
    next_url = (
        tree_url(folder, q=q, after=keys.encode_key(listing.next_after))
        if listing.next_after is not None
        else ""
    )
    rows = []
    for e in listing.entries:
        rows.append(
            {
                "entry": e,
                "label": keys.display(e.label) if e.label else "",
                "url": tree_url(e.name) if e.is_folder else reverse("keys:detail", args=[e.name]),
                "binary": keys.to_text(e.name)[1] == "base64",
            }
        )
    return render(
        request,
        "console/keys/tree.html",
        {
            "folder": folder,
            "folder_label": keys.display(folder),
            "folder_token": keys.encode_key(folder) if folder else "",
            "crumbs": _crumbs(folder),
            "q": q,
            "rows": rows,
            "listing": listing,
            "next_url": next_url,
            "first_url": tree_url(folder, q=q) if after is not None else "",
            "page_size": keys.page_size(),
        },
    )


# --- key detail, history, diff ------------------------------------------------------------


def _key_context(key: bytes) -> dict[str, Any]:
    folder = keys.folder_of(key)
    enc = keys.to_text(key)[1]
    return {
        "key": key,
        "key_label": keys.display(key),
        "key_b64": _b64(key),
        "key_is_binary": enc == "base64",
        "key_name": keys.display(key[len(folder) :]),
        "folder_url": tree_url(folder),
        "crumbs": _crumbs(folder),
    }


@login_required
@require_GET
@cluster_errors
def detail(request: HttpRequest, key: bytes) -> HttpResponse:
    """A key (or, with ``?rev=N``, its version written at revision N): value and metadata."""
    current = keys.get_key(key)
    ctx = _key_context(key)
    rev_param = request.GET.get("rev", "")
    shown: KeyValue | None = current
    old_version = False
    if rev_param:
        if not rev_param.isdigit():
            return HttpResponseBadRequest("rev must be a revision number")
        try:
            shown = keys.get_version(key, int(rev_param))
        except keys.VersionNotFoundError as exc:
            return render(
                request, "console/keys/missing.html", {**ctx, "reason": str(exc)}, status=404
            )
        old_version = current is None or shown.mod_revision != current.mod_revision
    if shown is None:
        return render(
            request,
            "console/keys/missing.html",
            {**ctx, "reason": "This key does not exist (it may have been deleted)."},
            status=404,
        )
    lease = None
    if current is not None and current.lease and not old_version:
        try:
            lease = keys.lease_info(current.lease)
        except LeaseNotFoundError:
            lease = keys.LeaseInfo(current.lease, -1, 0)
    ctx.update(
        {
            "kv": shown,
            "current": current,
            "old_version": old_version,
            "value": keys.describe_value(shown.value),
            "lease": lease,
            "lease_data": {
                "ttl": lease.ttl,
                "url": reverse("keys:lease", args=[lease.id]),
            }
            if lease is not None
            else None,
        }
    )
    return render(request, "console/keys/detail.html", ctx)


@login_required
@require_GET
@cluster_errors
def history(request: HttpRequest, key: bytes) -> HttpResponse:
    """Every version of the key still inside the compaction window, newest first."""
    h = keys.history(key)
    if not h.versions:
        return render(
            request,
            "console/keys/missing.html",
            {**_key_context(key), "reason": "This key does not exist (it may have been deleted)."},
            status=404,
        )
    versions = [{"kv": kv, "value": keys.describe_value(kv.value)} for kv in h.versions]
    return render(
        request,
        "console/keys/history.html",
        {**_key_context(key), "history": h, "versions": versions, "current": h.versions[0]},
    )


@login_required
@require_GET
@cluster_errors
def diff(request: HttpRequest, key: bytes) -> HttpResponse:
    """The diff between two versions (``?a=REV&b=REV``; 0 or missing: the current value)."""
    ctx = _key_context(key)
    current = keys.get_key(key)
    sides: list[KeyValue] = []
    for name in ("a", "b"):
        raw = request.GET.get(name, "0") or "0"
        if not raw.isdigit():
            return HttpResponseBadRequest(f"{name} must be a revision number")
        rev = int(raw)
        if rev == 0 or (current is not None and rev == current.mod_revision):
            if current is None:
                return render(
                    request,
                    "console/keys/missing.html",
                    {**ctx, "reason": "This key does not exist now."},
                    status=404,
                )
            sides.append(current)
            continue
        try:
            sides.append(keys.get_version(key, rev))
        except keys.VersionNotFoundError as exc:
            return render(
                request, "console/keys/missing.html", {**ctx, "reason": str(exc)}, status=404
            )
    a, b = sorted(sides, key=lambda kv: kv.mod_revision)
    lines = keys.diff_lines(
        a.value, b.value, f"revision {a.mod_revision}", f"revision {b.mod_revision}"
    )
    ctx.update({"a": a, "b": b, "lines": lines, "current": current})
    return render(request, "console/keys/diff.html", ctx)


@login_required
@require_GET
@cluster_errors
def lease_ttl(request: HttpRequest, lease_id: int) -> JsonResponse:
    """Seconds left on a lease, for the detail page's countdown (-1: gone)."""
    try:
        info = keys.lease_info(lease_id)
    except LeaseNotFoundError:
        info = None
    if info is None:
        return JsonResponse({"id": f"{lease_id:x}", "ttl": -1, "granted_ttl": 0})
    return JsonResponse({"id": info.hex_id, "ttl": info.ttl, "granted_ttl": info.granted_ttl})


# --- writes ---------------------------------------------------------------------------------


def _conflict(
    request: HttpRequest,
    key: bytes,
    exc: keys.ConflictError,
    *,
    mine: bytes | None,
    action: str,
    ttl: int | None = None,
) -> HttpResponse:
    """The conflict page: their (current) value, mine, a diff, and what to do next."""
    current = exc.current
    ctx = _key_context(key)
    ctx.update(
        {
            "action": action,  # "create" | "edit" | "delete" | "restore"
            "current": current,
            "current_value": keys.describe_value(current.value) if current is not None else None,
            "mine_value": keys.describe_value(mine) if mine is not None else None,
            "mine_b64": _b64(mine) if mine is not None else "",
            "expected": exc.expected_mod_revision,
            "seen_now": exc.current_mod_revision,
            "lines": keys.diff_lines(
                current.value if current is not None else b"",
                mine,
                "current value",
                "your value",
            )
            if mine is not None
            else [],
            "ttl": ttl or "",
        }
    )
    return render(request, "console/keys/conflict.html", ctx, status=409)


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def create(request: HttpRequest) -> HttpResponse:
    """A new key (guard: it must not exist), with an optional TTL (a new lease)."""
    folder = _folder_param(request)
    if request.method == "POST":
        form = CreateForm(request.POST)
        if form.is_valid():
            key: bytes = form.cleaned_data["key_bytes"]
            value: bytes = form.cleaned_data["value_bytes"]
            ttl = form.cleaned_data.get("ttl")
            try:
                keys.create_key(key, value, ttl=ttl)
            except keys.ConflictError as exc:
                return _conflict(request, key, exc, mine=value, action="create", ttl=ttl)
            messages.success(request, f"Created {keys.display(key)}.")
            return redirect("keys:detail", key)
    else:
        text, enc = keys.to_text(folder)
        form = CreateForm(initial={"key": text, "key_encoding": enc})
    return render(
        request,
        "console/keys/create.html",
        {"form": form, "folder": folder, "crumbs": _crumbs(folder), "folder_url": tree_url(folder)},
    )


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def edit(request: HttpRequest, key: bytes) -> HttpResponse:
    """Edit a value; the write requires the mod revision the form was loaded at.

    POST with ``edit_again`` re-renders the form (after a conflict) without writing.
    """
    ctx = _key_context(key)
    if request.method == "POST":
        form = EditForm(request.POST)
        if form.is_valid() and not request.POST.get("edit_again"):
            value: bytes = form.cleaned_data["value_bytes"]
            seen: int = form.cleaned_data["seen"]
            try:
                keys.put_key(key, value, seen)
            except keys.ConflictError as exc:
                return _conflict(request, key, exc, mine=value, action="edit")
            messages.success(request, f"Saved {keys.display(key)}.")
            return redirect("keys:detail", key)
        if request.POST.get("edit_again") and form.is_valid():
            text, enc = _editable_text(form.cleaned_data["value_bytes"])
            form = EditForm(
                initial={"value": text, "value_encoding": enc, "seen": form.cleaned_data["seen"]}
            )
            ctx["again"] = True
    else:
        current = keys.get_key(key)
        if current is None:
            return render(
                request,
                "console/keys/missing.html",
                {**ctx, "reason": "This key does not exist (it may have been deleted)."},
                status=404,
            )
        text, enc = _editable_text(current.value)
        form = EditForm(
            initial={"value": text, "value_encoding": enc, "seen": current.mod_revision}
        )
    ctx["form"] = form
    ctx["seen"] = form["seen"].value()
    return render(request, "console/keys/edit.html", ctx)


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def delete(request: HttpRequest, key: bytes) -> HttpResponse:
    """Confirm, then delete the key if it is still at the mod revision the user saw."""
    ctx = _key_context(key)
    if request.method == "POST":
        seen = request.POST.get("seen", "")
        if not seen.isdigit():
            return HttpResponseBadRequest("seen must be a revision number")
        try:
            keys.delete_key(key, int(seen))
        except keys.ConflictError as exc:
            return _conflict(request, key, exc, mine=None, action="delete")
        messages.success(request, f"Deleted {keys.display(key)}.")
        return redirect(tree_url(keys.folder_of(key)))
    current = keys.get_key(key)
    if current is None:
        return render(
            request,
            "console/keys/missing.html",
            {**ctx, "reason": "This key does not exist (it may have been deleted)."},
            status=404,
        )
    ctx.update({"current": current, "value": keys.describe_value(current.value)})
    return render(request, "console/keys/delete.html", ctx)


@login_required
@editor_required
@require_POST
@cluster_errors
def restore(request: HttpRequest, key: bytes) -> HttpResponse:
    """Write back the value of an earlier version (guarded by the current mod revision seen)."""
    rev, seen = request.POST.get("rev", ""), request.POST.get("seen", "")
    if not rev.isdigit() or not seen.isdigit():
        return HttpResponseBadRequest("rev and seen must be revision numbers")
    try:
        old = keys.get_version(key, int(rev))
    except keys.VersionNotFoundError as exc:
        return render(
            request,
            "console/keys/missing.html",
            {**_key_context(key), "reason": str(exc)},
            status=404,
        )
    try:
        keys.put_key(key, old.value, int(seen))
    except keys.ConflictError as exc:
        return _conflict(request, key, exc, mine=old.value, action="restore")
    messages.success(request, f"Restored the version of revision {rev}.")
    return redirect("keys:detail", key)


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def delete_folder(request: HttpRequest) -> HttpResponse:
    """Confirm with the number of keys, then one prefix delete (refused if keys changed)."""
    folder = _folder_param(request)
    if not folder:
        raise Http404("the root folder cannot be deleted")
    ctx: dict[str, Any] = {
        "folder": folder,
        "folder_label": keys.display(folder),
        "folder_token": keys.encode_key(folder),
        "crumbs": _crumbs(folder),
        "folder_url": tree_url(folder),
    }
    if request.method == "POST":
        seen = request.POST.get("seen", "")
        if not seen.isdigit():
            return HttpResponseBadRequest("seen must be a revision number")
        try:
            n = keys.delete_prefix(folder, seen_revision=int(seen))
        except keys.PrefixChangedError as exc:
            ctx.update({"count": exc.count, "revision": exc.revision, "changed": True})
            return render(request, "console/keys/delete_folder.html", ctx, status=409)
        messages.success(request, f"Deleted {n} keys under {keys.display(folder)}.")
        return redirect(tree_url(keys.folder_of(folder[: -len(keys.separator())])))
    count, revision = keys.count_prefix_at(folder)
    ctx.update({"count": count, "revision": revision})
    return render(request, "console/keys/delete_folder.html", ctx)


# --- export / import ------------------------------------------------------------------------


def _filename(prefix: bytes) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", keys.display(prefix)).strip("_") or "all"
    return f"etcd-export-{name[:80]}.json"


@login_required
@require_GET
@cluster_errors
def export(request: HttpRequest) -> HttpResponseBase:
    """Download the keys under ``p`` as JSON (streamed; values utf-8 or base64)."""
    folder = _folder_param(request)
    chunks = keys.export_chunks(folder)
    first = next(chunks)  # contact the cluster before the response starts (errors -> 503)
    response = StreamingHttpResponse(
        _prepend(first, chunks), content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{_filename(folder)}"'
    return response


def _prepend(first: str, rest: Any) -> Any:
    yield first
    yield from rest


def _import_url(folder: bytes) -> str:
    url = reverse("keys:import")
    return f"{url}?{urlencode({'p': keys.encode_key(folder)})}" if folder else url


def _plan_path(token: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{32}", token):
        raise Http404("no such dry run")
    return Path(settings.CONSOLE_IMPORT_DIR) / f"{token}.json"


@login_required
@editor_required
@require_http_methods(["GET", "POST"])
@cluster_errors
def import_keys(request: HttpRequest) -> HttpResponse:
    """Upload an export file: a dry run lists what would be created, changed and deleted."""
    folder = _folder_param(request)
    if request.method == "POST":
        form = ImportForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > settings.CONSOLE_IMPORT_MAX_BYTES:
                form.add_error("file", "The file is too large.")
            else:
                try:
                    doc = keys.parse_export(upload.read())
                    prefix_text = form.cleaned_data.get("target_prefix") or ""
                    prefix = prefix_text.encode() if prefix_text else None
                    plan = keys.plan_import(
                        doc, prefix=prefix, replace=form.cleaned_data["replace"]
                    )
                except (keys.ImportFormatError, keys.InvalidKeyError) as exc:
                    form.add_error(None, str(exc))
                else:
                    return _dry_run(request, plan, doc)
    else:
        text = keys.to_text(folder)[0] if folder else ""
        form = ImportForm(initial={"target_prefix": text})
    return render(
        request,
        "console/keys/import.html",
        {"form": form, "folder": folder, "crumbs": _crumbs(folder), "folder_url": tree_url(folder)},
    )


def _forget_old_plans(directory: Path, max_age: float = PLAN_MAX_AGE) -> None:
    """Remove dry runs nobody applied within ``max_age`` seconds."""
    cutoff = time.time() - max_age
    for old in directory.glob("*.json"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


def _dry_run(
    request: HttpRequest, plan: keys.ImportPlan, doc: keys.ExportDocument | None
) -> HttpResponse:
    token = secrets.token_hex(16)
    path = _plan_path(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    _forget_old_plans(path.parent)
    path.write_text(plan.to_json(), encoding="utf-8")
    owned = [t for t in request.session.get(SESSION_IMPORTS, []) if _plan_path(t).exists()]
    request.session[SESSION_IMPORTS] = [*owned[-9:], token]

    def rows(changes: list[keys.PlannedChange]) -> list[dict[str, Any]]:
        return [
            {
                "key": keys.display(c.key),
                "url": reverse("keys:detail", args=[c.key]),
                "old_size": len(c.old_value),
                "new_size": len(c.value),
            }
            for c in changes[:PLAN_ROWS]
        ]

    groups = [
        ("create", "Created", plan.creates),
        ("change", "Changed", plan.updates),
        ("delete", "Deleted", plan.deletes),
    ]
    return render(
        request,
        "console/keys/import_plan.html",
        {
            "plan": plan,
            "token": token,
            "prefix_label": keys.display(plan.prefix),
            "source_prefix": keys.display(doc.prefix) if doc is not None else "",
            "groups": [
                {
                    "action": a,
                    "title": t,
                    "rows": rows(ch),
                    "count": len(ch),
                    "hidden": max(0, len(ch) - PLAN_ROWS),
                }
                for a, t, ch in groups
            ],
            "crumbs": _crumbs(keys.folder_of(plan.prefix)),
            "folder_url": tree_url(keys.folder_of(plan.prefix)),
        },
    )


@login_required
@editor_required
@require_POST
@cluster_errors
def import_apply(request: HttpRequest) -> HttpResponse:
    """Apply a dry run of this session; stops (409) if keys changed since the dry run."""
    token = request.POST.get("token", "")
    path = _plan_path(token)
    if token not in request.session.get(SESSION_IMPORTS, []) or not path.exists():
        raise Http404("no such dry run (it may have been applied already)")
    plan = keys.ImportPlan.from_json(path.read_text(encoding="utf-8"))
    try:
        keys.apply_import(plan)
    except keys.ImportConflictError as exc:
        path.unlink(missing_ok=True)
        return render(
            request,
            "console/keys/import_conflict.html",
            {
                "error": exc,
                "conflicting": [keys.display(k) for k in exc.conflicting[:PLAN_ROWS]],
                "prefix_label": keys.display(plan.prefix),
                "import_url": _import_url(keys.folder_of(plan.prefix)),
            },
            status=409,
        )
    path.unlink(missing_ok=True)
    request.session[SESSION_IMPORTS] = [
        t for t in request.session.get(SESSION_IMPORTS, []) if t != token
    ]
    messages.success(
        request,
        f"Imported into {keys.display(plan.prefix) or 'the root'}: {len(plan.creates)} created, "
        f"{len(plan.updates)} changed, {len(plan.deletes)} deleted.",
    )
    return redirect(tree_url(keys.folder_of(plan.prefix)))
