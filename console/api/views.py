"""The API's endpoints: keys, the key tree, leases, cluster members and status, the caller.

Key operations go through ``console.keys`` (the key-domain layer shared with the HTML pages)
where it has them, and straight to ``console.etcd.client()`` otherwise. Errors are raised as
``console.api.errors`` exceptions or ``cluster.client`` errors; the exception handler turns
them into the API's error body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import serializers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from cluster.client import Compare, GetResponse, KeyValue, LeaseNotFoundError, Op, prefix_range_end
from console import etcd, keys
from console.api import serializers as s
from console.api.codec import (
    ID_PATTERN,
    INT64_MAX,
    KEY_ID_PATTERN,
    MAX_REQUEST_BYTES,
    REQUEST_OVERHEAD,
    UINT64_MAX,
    decode_key_id,
    decode_value,
    kv_dict,
    parse_id,
    parse_int,
    text_or_base64,
)
from console.api.errors import BadRequest, Conflict, NotFound, PreconditionFailed
from console.api.permissions import IsEditorOrReadOnly
from console.roles import can_edit

MAX_PAGE = 1000
DEFAULT_PAGE = 100
# JSON escapes can make a 1.5 MiB value up to 6 times longer ("\u0000"); refuse beyond that.
MAX_BODY_BYTES = 6 * MAX_REQUEST_BYTES + 4096
PUT_ATTEMPTS = 8  # unconditional puts retry their guarded write this often under contention

# --- shared parameters and responses for the schema --------------------------------------

KEY_ID = OpenApiParameter(
    "key_id", str, OpenApiParameter.PATH, pattern=KEY_ID_PATTERN,
    description="The key's bytes in unpadded base64url (RFC 4648 §5), e.g. `L2NmZy9h` for "
    "`/cfg/a`: any bytes round-trip (`..`, `/`, `%2F`, spaces, non-UTF-8).",
)  # fmt: skip
LEASE_ID = OpenApiParameter(
    "lease_id", str, OpenApiParameter.PATH, pattern=ID_PATTERN,
    description="The lease id (int64): decimal, or hex with 0x (`0x` + its `id_hex`).",
)  # fmt: skip
MEMBER_ID = OpenApiParameter(
    "member_id", str, OpenApiParameter.PATH, pattern=ID_PATTERN,
    description="The member id (uint64): decimal, or hex with 0x (`0x` + its `id_hex`).",
)  # fmt: skip
REVISION = OpenApiParameter(
    "revision", {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
    description="Read at this store revision (0 or absent: the latest).",
)  # fmt: skip
ENCODING = OpenApiParameter(
    "encoding", str, enum=["auto", "base64"],
    description="`auto` (default): UTF-8 text where the bytes are valid UTF-8, else base64; "
    "`base64`: keys and values always base64.",
)  # fmt: skip
LIMIT = OpenApiParameter(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    description=f"Page size (default {DEFAULT_PAGE}).",
)  # fmt: skip
IF_MATCH = OpenApiParameter(
    "If-Match", str, OpenApiParameter.HEADER,
    description="Compare-and-swap: the mod revision the key must still have (its ETag, "
    '`"5"` or `5`), or `*` (the key must exist). 412 with the current `mod_revision` if not.',
)  # fmt: skip
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match", str, OpenApiParameter.HEADER, enum=["*"],
    description="`*`: create only; 412 if the key exists.",
)  # fmt: skip


def _errors(*codes: int) -> dict[int, Any]:
    """Schema responses for error statuses (401, 403 and 503 are always possible)."""
    out: dict[int, Any] = {}
    for code in (*codes, 401, 403, 503):
        serializer = s.PreconditionFailedSerializer if code == 412 else s.ErrorSerializer
        out[code] = OpenApiResponse(serializer)
    return out


# --- request parsing ----------------------------------------------------------------------


def _flag(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise BadRequest(f"{name} must be true or false, got {raw[:40]!r}")


def _int_param(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, name, minimum=minimum, maximum=maximum)


def _revision(request: Request) -> int:
    return _int_param(request, "revision", 0, 0, INT64_MAX)


def _force_base64(request: Request) -> bool:
    raw = request.query_params.get("encoding", "auto") or "auto"
    if raw not in {"auto", "base64"}:
        raise BadRequest(f"encoding must be auto or base64, got {raw[:40]!r}")
    return raw == "base64"


def _prefix(request: Request, text_name: str = "prefix") -> bytes:
    """``<text_name>_id`` (base64url bytes) or ``<text_name>`` (UTF-8 text); default empty."""
    key_id = request.query_params.get(f"{text_name}_id")
    if key_id:
        return decode_key_id(key_id, what=f"{text_name}_id")
    text = request.query_params.get(text_name, "")
    return decode_value(text, "utf-8", field=text_name)


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _key_ref(key: bytes, force_base64: bool = False) -> dict[str, str]:
    text, encoding = text_or_base64(key, force_base64)
    return {"key": text, "key_encoding": encoding, "key_id": keys.encode_key(key)}


@dataclass(frozen=True)
class Precondition:
    """What a write requires: ``mod_revision`` (If-Match: N), ``exists`` (If-Match: *),
    ``absent`` (If-None-Match: *) or nothing."""

    kind: Literal["none", "mod_revision", "exists", "absent"] = "none"
    mod_revision: int = 0


def _precondition(request: Request, *, allow_none_match: bool) -> Precondition:
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise BadRequest("give either If-Match or If-None-Match, not both")
    if if_none_match is not None:
        if not allow_none_match:
            raise BadRequest("If-None-Match applies to PUT only")
        if if_none_match.strip() != "*":
            raise BadRequest("If-None-Match supports only * (create the key only if absent)")
        return Precondition("absent")
    if if_match is None:
        return Precondition()
    value = if_match.strip()
    if value == "*":
        return Precondition("exists")
    if "," in value:
        raise BadRequest("If-Match takes one mod revision")
    value = value.removeprefix("W/").strip('"')
    return Precondition("mod_revision", parse_int(value, "If-Match", minimum=1))


def _check_body_size(request: Request) -> None:
    """Refuse a body too large to hold a value etcd would accept, before parsing it."""
    raw = request.META.get("CONTENT_LENGTH") or "0"
    length = int(raw) if raw.isdigit() else 0
    if length > MAX_BODY_BYTES:
        raise BadRequest(
            f"request body of {length} bytes is too large: a value may be at most 1.5 MiB"
        )


def _etag(kv: KeyValue) -> dict[str, str]:
    return {"ETag": f'"{kv.mod_revision}"'}


def _precondition_failed(exc: keys.ConflictError) -> PreconditionFailed:
    current = exc.current_mod_revision
    state = f"its mod revision is now {current}" if current else "the key does not exist"
    return PreconditionFailed(f"precondition failed: {state}", mod_revision=current)


# --- views --------------------------------------------------------------------------------


class ApiView(APIView):  # type: ignore[misc]  # DRF is untyped
    """JSON in, JSON out; viewers read, editors write."""

    renderer_classes: ClassVar[list[type]] = [JSONRenderer]
    parser_classes: ClassVar[list[type]] = [JSONParser]
    permission_classes: ClassVar[list[type]] = [IsEditorOrReadOnly]


class KeyListView(ApiView):
    """Keys under a prefix, a page at a time."""

    @extend_schema(
        operation_id="keys_list",
        summary="List keys by prefix, a page at a time",
        description="Keys in key order. Page with `start_after=<next of the previous page>` "
        "and `revision=<revision of the first page>` for a consistent snapshot.",
        parameters=[
            OpenApiParameter("prefix", str, description="Key prefix as UTF-8 text."),
            OpenApiParameter(
                "prefix_id",
                str,
                pattern=KEY_ID_PATTERN,
                description="Key prefix as unpadded base64url bytes (wins over prefix).",
            ),
            OpenApiParameter(
                "start_after",
                str,
                pattern=KEY_ID_PATTERN,
                description="Cursor: list keys after this key id (a page's `next`).",
            ),
            LIMIT,
            OpenApiParameter("keys_only", bool, description="Leave the values out."),
            REVISION,
            ENCODING,
        ],
        responses={200: s.KeyListSerializer, **_errors(400, 410)},
    )
    def get(self, request: Request) -> Response:
        prefix = _prefix(request)
        limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        keys_only = _flag(request, "keys_only")
        revision = _revision(request)
        force_base64 = _force_base64(request)
        start = prefix or b"\0"
        end = prefix_range_end(prefix) if prefix else b"\0"
        after = request.query_params.get("start_after")
        if after:
            start = max(start, decode_key_id(after, what="start_after") + b"\0")
        c = etcd.client()
        if end != b"\0" and start >= end:  # the cursor is past the prefix: nothing left
            rev = c.get(prefix or b"\0", count_only=True, revision=revision).header.revision
            return Response(
                {"revision": revision or rev, "count": 0, "more": False, "next": None, "items": []}
            )
        resp = c.get(start, range_end=end, limit=limit, keys_only=keys_only, revision=revision)
        items = [kv_dict(kv, keys_only=keys_only, force_base64=force_base64) for kv in resp.kvs]
        more = bool(resp.more and resp.kvs)
        return Response({
            "revision": revision or resp.header.revision,
            "count": resp.count,
            "more": more,
            "next": keys.encode_key(resp.kvs[-1].key) if more else None,
            "items": items,
        })  # fmt: skip


class KeyDetailView(ApiView):
    """One key: read, write, delete."""

    @extend_schema(
        operation_id="keys_retrieve",
        summary="Read a key (at any revision)",
        parameters=[KEY_ID, REVISION, ENCODING],
        responses={200: s.KeyDetailSerializer, **_errors(400, 404, 410)},
    )
    def get(self, request: Request, key_id: str) -> Response:
        key = decode_key_id(key_id)
        revision = _revision(request)
        force_base64 = _force_base64(request)
        resp = etcd.client().get(key, revision=revision)
        if resp.kv is None:
            at = f" at revision {revision}" if revision else ""
            raise NotFound(f"key not found{at}")
        read_at = revision or resp.header.revision
        body = {**kv_dict(resp.kv, force_base64=force_base64), "revision": read_at}
        return Response(body, headers=_etag(resp.kv))

    @extend_schema(
        operation_id="keys_put",
        summary="Write a key (optionally compare-and-swap or create-only)",
        description="The key keeps its lease unless `lease` (an existing lease id; 0 "
        "detaches) or `ttl` (grants a new lease) is given. 201 when the key was created, "
        "200 when replaced; the body is the key as written. Key plus value may not exceed "
        "etcd's request limit of 1.5 MiB.",
        parameters=[KEY_ID, IF_MATCH, IF_NONE_MATCH],
        request=s.KeyPutSerializer,
        responses={
            200: s.KeyPutResultSerializer,
            201: s.KeyPutResultSerializer,
            **_errors(400, 409, 412),
        },
    )
    def put(self, request: Request, key_id: str) -> Response:
        key = decode_key_id(key_id)
        _check_body_size(request)
        body = _validated(s.KeyPutSerializer, request.data)
        value = decode_value(body["value"], body["encoding"])
        if len(key) + len(value) + REQUEST_OVERHEAD > MAX_REQUEST_BYTES:
            raise BadRequest(
                f"key and value are {len(key) + len(value)} bytes: more than etcd's request "
                f"limit ({MAX_REQUEST_BYTES} bytes, 1.5 MiB) allows"
            )
        pre = _precondition(request, allow_none_match=True)
        lease, ttl = body.get("lease"), body.get("ttl")
        try:
            revision = _write(key, value, pre, lease, ttl)
        except keys.ConflictError as exc:
            raise _precondition_failed(exc) from None
        except LeaseNotFoundError as exc:
            raise BadRequest(
                f"lease {lease} does not exist", etcd_error=exc.message, code="NOT_FOUND"
            ) from None
        kv = etcd.client().get(key, revision=revision).kv
        if kv is None:  # deleted and compacted in between: report the write alone
            raise Conflict(f"written at revision {revision}, but changed again since")
        created = kv.create_revision == revision
        out = {**kv_dict(kv), "revision": revision, "created": created}
        headers = _etag(kv)
        if created:
            headers["Location"] = reverse("api-key", args=[keys.encode_key(key)])
        return Response(out, status=201 if created else 200, headers=headers)

    @extend_schema(
        operation_id="keys_destroy",
        summary="Delete a key, or every key under a prefix",
        description="`?prefix=true` deletes every key starting with this key's bytes and "
        "answers the count (0 included); otherwise 404 when the key does not exist.",
        parameters=[
            KEY_ID,
            OpenApiParameter("prefix", bool, description="Delete every key with this prefix."),
            IF_MATCH,
        ],
        responses={200: s.KeyDeleteSerializer, **_errors(400, 404, 412)},
    )
    def delete(self, request: Request, key_id: str) -> Response:
        key = decode_key_id(key_id)
        prefix = _flag(request, "prefix")
        pre = _precondition(request, allow_none_match=False)
        if prefix:
            if pre.kind != "none":
                raise BadRequest("If-Match applies to single keys, not to prefix deletes")
            return Response({"deleted": keys.delete_prefix(key)})
        if pre.kind == "mod_revision":
            try:
                revision = keys.delete_key(key, pre.mod_revision)
            except keys.ConflictError as exc:
                raise _precondition_failed(exc) from None
            return Response({"deleted": 1, "revision": revision})
        resp = etcd.client().delete(key)
        if resp.deleted == 0:
            if pre.kind == "exists":
                raise PreconditionFailed(
                    "precondition failed: the key does not exist", mod_revision=0
                )
            raise NotFound("key not found")
        return Response({"deleted": resp.deleted, "revision": resp.revision})


def _write(key: bytes, value: bytes, pre: Precondition, lease: int | None, ttl: int | None) -> int:
    """Write the key under ``pre``; the revision of the write, or ``keys.ConflictError``."""
    if lease is not None:
        return _put_with_lease(key, value, pre, lease)
    if pre.kind == "mod_revision":
        return keys.put_key(key, value, pre.mod_revision, ttl=ttl)
    if pre.kind == "absent":
        return keys.create_key(key, value, ttl=ttl)
    # No precondition (or "exists"): a guarded write from the current state, repeated while
    # other writers get in between, so the key keeps its lease as in the console's pages.
    for _ in range(PUT_ATTEMPTS):
        current = keys.get_key(key)
        if current is None and pre.kind == "exists":
            raise keys.ConflictError(key, None, 0)
        try:
            return keys.put_key(key, value, current.mod_revision if current else 0, ttl=ttl)
        except keys.ConflictError:
            continue
    raise Conflict("the key kept changing while being written; try again")


def _put_with_lease(key: bytes, value: bytes, pre: Precondition, lease: int) -> int:
    """A put attaching ``lease`` (0: none) under ``pre``, in one transaction."""
    guards = {
        "none": [],
        "mod_revision": [Compare.mod_revision(key) == pre.mod_revision],
        "exists": [Compare.create_revision(key) > 0],
        "absent": [Compare.create_revision(key) == 0],
    }[pre.kind]
    resp = etcd.client().txn(
        compare=guards, success=[Op.put(key, value, lease=lease)], failure=[Op.get(key)]
    )
    if not resp.succeeded:
        got = resp.responses[0] if resp.responses else None
        current = got.kv if isinstance(got, GetResponse) else None
        raise keys.ConflictError(key, current, pre.mod_revision)
    return resp.revision


class KeyHistoryView(ApiView):
    """A key's versions."""

    @extend_schema(
        operation_id="keys_history",
        summary="Versions of a key still inside the compaction window",
        description="The versions of the key's current life (since its create revision), "
        "newest first; each one can be read with `GET /api/v1/keys/<key_id>/?revision="
        "<mod_revision>`.",
        parameters=[KEY_ID, LIMIT, ENCODING],
        responses={200: s.KeyHistorySerializer, **_errors(400, 404)},
    )
    def get(self, request: Request, key_id: str) -> Response:
        key = decode_key_id(key_id)
        limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        force_base64 = _force_base64(request)
        current = keys.get_key(key)
        if current is None:
            raise NotFound("key not found")
        h = keys.history(key, limit=limit, current=current)
        return Response({
            "complete": h.complete,
            "compacted": h.compacted,
            "truncated": h.truncated,
            "items": [kv_dict(kv, force_base64=force_base64) for kv in h.versions],
        })  # fmt: skip


class TreeView(ApiView):
    """The key tree, one folder level at a time."""

    @extend_schema(
        operation_id="tree_list",
        summary="One level of the key tree (folders split at '/')",
        description="Child folders (with key counts) and keys directly under a folder, as the "
        "console's key browser shows them. `prefix` may end in a partial name to filter.",
        parameters=[
            OpenApiParameter("prefix", str, description="Folder (plus filter) as UTF-8 text."),
            OpenApiParameter(
                "prefix_id",
                str,
                pattern=KEY_ID_PATTERN,
                description="Folder (plus filter) as base64url bytes (wins over prefix).",
            ),
            OpenApiParameter(
                "after", str, pattern=KEY_ID_PATTERN, description="Cursor: a page's `next`."
            ),
            LIMIT,
            OpenApiParameter("counts", bool, description="Count keys per folder (default on)."),
        ],
        responses={200: s.TreeSerializer, **_errors(400, 410)},
    )
    def get(self, request: Request) -> Response:
        prefix = _prefix(request)
        limit = _int_param(request, "limit", keys.page_size(), 1, MAX_PAGE)
        counts = _flag(request, "counts", default=True)
        raw_after = request.query_params.get("after")
        after = decode_key_id(raw_after, what="after") if raw_after else None
        listing = keys.list_children(prefix, after=after, limit=limit, counts=counts)
        items = [
            {
                **_key_ref(e.name),
                "label": keys.display(e.label),
                "is_folder": e.is_folder,
                "count": e.count,
                "kv": kv_dict(e.kv, keys_only=True) if e.kv is not None else None,
            }
            for e in listing.entries
        ]
        nxt = keys.encode_key(listing.next_after) if listing.next_after is not None else None
        return Response({
            "revision": listing.revision,
            "folder": _key_ref(listing.folder),
            "next": nxt,
            "items": items,
        })  # fmt: skip


# --- leases -------------------------------------------------------------------------------


def _lease_id(raw: str) -> int:
    return parse_id(raw, "lease id")


def _lease(lease_id: int, ttl: int, granted_ttl: int) -> dict[str, Any]:
    return {"id": lease_id, "id_hex": f"{lease_id:x}", "ttl": ttl, "granted_ttl": granted_ttl}


class LeaseListView(ApiView):
    """Leases: list and grant."""

    @extend_schema(
        operation_id="leases_list",
        summary="Every live lease with its remaining TTL",
        responses={200: s.LeaseListSerializer, **_errors()},
    )
    def get(self, request: Request) -> Response:
        c = etcd.client()
        items = []
        for lease_id in sorted(c.leases()):
            try:
                r = c.time_to_live(lease_id)
            except LeaseNotFoundError:
                continue
            if r.ttl >= 0:  # expired between the two calls otherwise
                items.append(_lease(lease_id, r.ttl, r.granted_ttl))
        return Response({"items": items})

    @extend_schema(
        operation_id="leases_create",
        summary="Grant a lease",
        request=s.LeaseGrantSerializer,
        responses={201: s.LeaseSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request) -> Response:
        body = _validated(s.LeaseGrantSerializer, request.data)
        g = etcd.client().grant(body["ttl"], id=body["id"])
        headers = {"Location": reverse("api-lease", args=[g.id])}
        return Response(_lease(g.id, g.ttl, g.ttl), status=201, headers=headers)


class LeaseDetailView(ApiView):
    """One lease: time to live, revoke."""

    @extend_schema(
        operation_id="leases_retrieve",
        summary="A lease's time to live (and its keys)",
        parameters=[
            LEASE_ID,
            OpenApiParameter("keys", bool, description="List the keys attached to it."),
        ],
        responses={200: s.LeaseDetailSerializer, **_errors(400, 404)},
    )
    def get(self, request: Request, lease_id: str) -> Response:
        lid = _lease_id(lease_id)
        with_keys = _flag(request, "keys")
        r = etcd.client().time_to_live(lid, keys=with_keys)
        if r.ttl < 0:
            raise NotFound(f"lease {lid} not found (expired, revoked or never granted)")
        out = _lease(lid, r.ttl, r.granted_ttl)
        if with_keys:
            out["keys"] = [_key_ref(k) for k in r.keys]
        return Response(out)

    @extend_schema(
        operation_id="leases_destroy",
        summary="Revoke a lease (deleting its keys)",
        parameters=[LEASE_ID],
        responses={200: s.LeaseRevokeSerializer, **_errors(400, 404)},
    )
    def delete(self, request: Request, lease_id: str) -> Response:
        lid = _lease_id(lease_id)
        header = etcd.client().revoke(lid)
        return Response({"revoked": lid, "revision": header.revision})


# --- cluster ------------------------------------------------------------------------------


def _member(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "id_hex": f"{m.id:x}",
        "name": m.name,
        "peer_urls": list(m.peer_urls),
        "client_urls": list(m.client_urls),
        "is_learner": m.is_learner,
    }


def _status(member: Any) -> dict[str, Any]:
    """The member's Maintenance.Status at its first client URL (cluster errors propagate)."""
    if not member.client_urls:
        raise BadRequest(f"member {member.id:x} has not started: it has no client URLs")
    st = etcd.client().status(member.client_urls[0])
    return {
        "endpoint": st.endpoint,
        "member_id": st.member_id,
        "version": st.version,
        "db_size": st.db_size,
        "db_size_in_use": st.db_size_in_use,
        "leader": st.leader,
        "is_leader": st.is_leader,
        "raft_index": st.raft_index,
        "raft_term": st.raft_term,
        "raft_applied_index": st.raft_applied_index,
        "revision": st.header.revision,
        "errors": list(st.errors),
        "is_learner": st.is_learner,
    }


class MemberListView(ApiView):
    """The cluster's members."""

    @extend_schema(
        operation_id="cluster_members",
        summary="The cluster's members",
        responses={200: s.MemberListSerializer, **_errors()},
    )
    def get(self, request: Request) -> Response:
        return Response({"items": [_member(m) for m in etcd.client().member_list()]})


class MemberStatusView(ApiView):
    """One member's status."""

    @extend_schema(
        operation_id="cluster_member_status",
        summary="One member's status (asked of that member)",
        parameters=[MEMBER_ID],
        responses={200: s.StatusSerializer, **_errors(400, 404)},
    )
    def get(self, request: Request, member_id: str) -> Response:
        mid = parse_id(member_id, "member id", maximum=UINT64_MAX)
        for m in etcd.client().member_list():
            if m.id == mid:
                return Response(_status(m))
        raise NotFound(f"no member {mid} ({mid:x}) in the cluster")


class ClusterStatusView(ApiView):
    """Every member and its status."""

    @extend_schema(
        operation_id="cluster_status",
        summary="Every member with its status, or why it did not answer",
        responses={200: s.ClusterStatusSerializer, **_errors()},
    )
    def get(self, request: Request) -> Response:
        items = []
        for m in etcd.client().member_list():
            try:
                st, error = _status(m), None
            except (etcd.EtcdError, BadRequest) as exc:
                st, error = None, str(exc)
            items.append({**_member(m), "status": st, "error": error})
        return Response({"items": items})


class MeView(ApiView):
    """The caller."""

    @extend_schema(
        operation_id="me",
        summary="Who the caller is and whether they may write",
        responses={200: s.MeSerializer, **_errors()},
    )
    def get(self, request: Request) -> Response:
        return Response(
            {"username": request.user.get_username(), "can_edit": can_edit(request.user)}
        )


@extend_schema(exclude=True)
class NoSuchEndpointView(ApiView):
    """Any other path under /api/v1/: the API's 404 body rather than Django's HTML page."""

    def _missing(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise NotFound(
            f"no API endpoint at {request.path!r} (paths end with a slash; see /api/v1/docs/)"
        )

    get = post = put = patch = delete = _missing


class DocsView(SpectacularSwaggerSplitView):
    """Swagger UI for the schema; its script and styles come from a CDN, so a CSP of its own
    (the console's default policy allows our own origin only)."""

    CSP = (
        "default-src 'self'; script-src 'self' https://cdn.jsdelivr.net; "
        "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
        "https://cdn.jsdelivr.net; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        response["Content-Security-Policy"] = self.CSP
        return response


__all__ = [
    "ClusterStatusView",
    "DocsView",
    "KeyDetailView",
    "KeyHistoryView",
    "KeyListView",
    "LeaseDetailView",
    "LeaseListView",
    "MeView",
    "MemberListView",
    "MemberStatusView",
    "TreeView",
]


class ThrottledObtainAuthToken(ObtainAuthToken):  # type: ignore[misc]
    """DRF's token endpoint with bounded password guessing (the ``login`` throttle rate)."""

    throttle_classes: ClassVar = [ScopedRateThrottle]
    throttle_scope = "login"
