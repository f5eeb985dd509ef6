"""A member's HTTP side, as etcd 3.5's: health, version, metrics and the JSON gateway.

Two kinds of listener (``MemberHttp``):

- ``--listen-metrics-urls``: ``/metrics``, ``/health``, ``/livez``, ``/readyz``. Up as soon
  as the member has started, so a probe sees "RAFT NO LEADER" before the first election.
- ``--listen-client-http-urls``: the same, plus ``/version`` and etcd's grpc-gateway JSON
  API under ``/v3/`` (``POST /v3/kv/range`` ...). Up once the gRPC server serves clients.

``/health`` is etcd's: ``{"health":"true","reason":""}``; false (503) with "ALARM NOSPACE",
"ALARM CORRUPT", "RAFT NO LEADER" or "RANGE ERROR:<error>" (``?exclude=NOSPACE`` ignores
an alarm; ``?serializable=true`` skips the leader and reads locally). ``/livez`` and
``/readyz`` run etcd's named checks (livez: serializable_read; readyz: data_corruption,
serializable_read, linearizable_read) and answer ``ok`` or 503 with one ``[+]``/``[-]``
line per check; ``?verbose`` lists them when passing, ``?exclude=<check>`` skips one and
``/readyz/<check>`` runs one.

The gateway (``Gateway``) calls this member's own gRPC server, as etcd's grpc-gateway
dials its own client port: every validation, auth check and forwarding is the gRPC
service's. It dials a Unix socket the gRPC server also listens on
(``<data-dir>/member/gateway/grpc.sock``, in a 0700 directory), so it needs no client
certificate with https client URLs, and, as in etcd, a certificate's common name never
authenticates a gateway request: the ``Authorization`` header's token (from
``/v3/auth/authenticate``) does. A stream still open when the member stops ends with
an "etcdserver: server stopped" error line. JSON follows
grpc-gateway's (gogo jsonpb, ``OrigName``): proto field names, bytes in base64, 64-bit
integers as strings, enums by name, default values left out; both field name styles and
numbers or strings are accepted in requests, unknown fields ignored. Errors:
``{"error": msg, "message": msg, "code": <grpc code>}`` with grpc-gateway 1.16's HTTP
status (``HTTP_STATUS``). Streams (watch, lease/keepalive, maintenance/snapshot,
election/observe) answer chunked JSON lines ``{"result": <response>}``; an error after
the first line is a last line ``{"error": {"grpc_code", "http_code", "message",
"http_status"}}``. A streaming request body may hold several JSON objects (sent in
order; the stream is half-closed at its end, after which watches keep streaming).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cluster.config import URL
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.v3electionpb import v3election_pb2
from cluster.proto.v3lockpb import v3lock_pb2
from cluster.tls import peer_server_context

from .metrics import CLUSTER_VERSION, SERVER_VERSION
from .sockets import private_socket, remove_private_socket

if TYPE_CHECKING:
    from .member import Member

log = logging.getLogger(__name__)

# grpc-gateway 1.16's HTTPStatusFromCode (etcd 3.5's gateway).
HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# etcd's gateway paths (after /v3/) and the gRPC method each calls.
GATEWAY_PATHS: Final[dict[str, str]] = {
    "kv/range": "etcdserverpb.KV/Range",
    "kv/put": "etcdserverpb.KV/Put",
    "kv/deleterange": "etcdserverpb.KV/DeleteRange",
    "kv/txn": "etcdserverpb.KV/Txn",
    "kv/compaction": "etcdserverpb.KV/Compact",
    "watch": "etcdserverpb.Watch/Watch",
    "lease/grant": "etcdserverpb.Lease/LeaseGrant",
    "lease/revoke": "etcdserverpb.Lease/LeaseRevoke",
    "kv/lease/revoke": "etcdserverpb.Lease/LeaseRevoke",
    "lease/keepalive": "etcdserverpb.Lease/LeaseKeepAlive",
    "lease/timetolive": "etcdserverpb.Lease/LeaseTimeToLive",
    "kv/lease/timetolive": "etcdserverpb.Lease/LeaseTimeToLive",
    "lease/leases": "etcdserverpb.Lease/LeaseLeases",
    "kv/lease/leases": "etcdserverpb.Lease/LeaseLeases",
    "cluster/member/add": "etcdserverpb.Cluster/MemberAdd",
    "cluster/member/remove": "etcdserverpb.Cluster/MemberRemove",
    "cluster/member/update": "etcdserverpb.Cluster/MemberUpdate",
    "cluster/member/list": "etcdserverpb.Cluster/MemberList",
    "cluster/member/promote": "etcdserverpb.Cluster/MemberPromote",
    "maintenance/alarm": "etcdserverpb.Maintenance/Alarm",
    "maintenance/status": "etcdserverpb.Maintenance/Status",
    "maintenance/defragment": "etcdserverpb.Maintenance/Defragment",
    "maintenance/hash": "etcdserverpb.Maintenance/Hash",
    "maintenance/hashkv": "etcdserverpb.Maintenance/HashKV",
    "maintenance/snapshot": "etcdserverpb.Maintenance/Snapshot",
    "maintenance/transfer-leadership": "etcdserverpb.Maintenance/MoveLeader",
    "maintenance/downgrade": "etcdserverpb.Maintenance/Downgrade",
    "auth/enable": "etcdserverpb.Auth/AuthEnable",
    "auth/disable": "etcdserverpb.Auth/AuthDisable",
    "auth/status": "etcdserverpb.Auth/AuthStatus",
    "auth/authenticate": "etcdserverpb.Auth/Authenticate",
    "auth/user/add": "etcdserverpb.Auth/UserAdd",
    "auth/user/get": "etcdserverpb.Auth/UserGet",
    "auth/user/list": "etcdserverpb.Auth/UserList",
    "auth/user/delete": "etcdserverpb.Auth/UserDelete",
    "auth/user/changepw": "etcdserverpb.Auth/UserChangePassword",
    "auth/user/grant": "etcdserverpb.Auth/UserGrantRole",
    "auth/user/revoke": "etcdserverpb.Auth/UserRevokeRole",
    "auth/role/add": "etcdserverpb.Auth/RoleAdd",
    "auth/role/get": "etcdserverpb.Auth/RoleGet",
    "auth/role/list": "etcdserverpb.Auth/RoleList",
    "auth/role/delete": "etcdserverpb.Auth/RoleDelete",
    "auth/role/grant": "etcdserverpb.Auth/RoleGrantPermission",
    "auth/role/revoke": "etcdserverpb.Auth/RoleRevokePermission",
    "lock/lock": "v3lockpb.Lock/Lock",
    "lock/unlock": "v3lockpb.Lock/Unlock",
    "election/campaign": "v3electionpb.Election/Campaign",
    "election/proclaim": "v3electionpb.Election/Proclaim",
    "election/leader": "v3electionpb.Election/Leader",
    "election/observe": "v3electionpb.Election/Observe",
    "election/resign": "v3electionpb.Election/Resign",
}

_TEXT: Final = "text/plain; charset=utf-8"
_STOPPED: Final = (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
_JSON: Final = "application/json"


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def _plain_error(status: int, text: str, **headers: str) -> web.Response:
    """Go's http.Error: the text and a newline, as text/plain."""
    return web.Response(
        status=status,
        text=text + "\n",
        headers={"Content-Type": _TEXT, "X-Content-Type-Options": "nosniff", **headers},
    )


def _method_not_allowed(allow: str) -> web.Response:
    return _plain_error(405, "Method Not Allowed", Allow=allow)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def to_json(message: Message) -> dict[str, Any]:
    """A message as grpc-gateway writes it (proto names, int64 strings, base64 bytes)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# -- health -------------------------------------------------------------------------------------


class Health:
    """etcd's /health, /livez and /readyz over a member (read directly, not through gRPC)."""

    LIVEZ: Final = ("serializable_read",)
    READYZ: Final = ("data_corruption", "serializable_read", "linearizable_read")

    def __init__(self, member: Member) -> None:
        self._member = member

    async def health(self, exclude: set[str], serializable: bool) -> tuple[bool, str]:
        """(healthy, reason) with etcd's reasons."""
        for alarm in self._member.alarms.active():
            name = pb.AlarmType.Name(alarm.alarm)
            if name in exclude:
                continue
            return False, f"ALARM {name}" if name in ("NOSPACE", "CORRUPT") else "ALARM UNKNOWN"
        if not serializable and not self._member.leader:
            return False, "RAFT NO LEADER"
        error = await self._read(serializable)
        if error is not None:
            return False, f"RANGE ERROR:{error}"
        return True, ""

    async def check(self, name: str) -> str | None:
        """Run one named check: None if it passes, else why it failed."""
        if name == "data_corruption":
            if self._member.alarms.active(pb.CORRUPT):
                return "alarm activated: CORRUPT"
            return None
        return await self._read(serializable=name == "serializable_read")

    async def _read(self, serializable: bool) -> str | None:
        """etcd's probe: a keys-only range of one key; None, or the error's message."""
        request = pb.RangeRequest(key=b"health", keys_only=True, limit=1, serializable=serializable)
        try:
            await self._member.read(request)
        except Exception as exc:
            return str(getattr(exc, "message", "") or exc)
        return None


def _query_set(request: web.Request, name: str) -> set[str]:
    return {v for v in request.query.getall(name, []) if v}


def health_routes(member: Member) -> list[web.RouteDef]:
    """/health, /livez[/<check>], /readyz[/<check>] and /metrics."""
    health = Health(member)
    metrics = member.metrics

    async def get_health(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _method_not_allowed("GET")
        serializable = request.query.get("serializable") == "true"
        ok, reason = await health.health(_query_set(request, "exclude"), serializable)
        metrics.record_health(ok)
        body = _dumps({"health": "true" if ok else "false", "reason": reason})
        if not ok:
            log.warning("/health error", extra={"output": body, "status-code": 503})
            return _plain_error(503, body)
        return web.Response(text=body, headers={"Content-Type": _TEXT})

    def checks(kind: str, names: tuple[str, ...]) -> list[web.RouteDef]:
        async def run(request: web.Request, selected: list[str]) -> web.StreamResponse:
            if request.method != "GET":
                return _method_not_allowed("GET")
            lines, failed = [], False
            for name in selected:
                error = await health.check(name)
                metrics.record_check(kind, name, error is None)
                if error is None:
                    lines.append(f"[+]{name} ok\n")
                else:
                    failed = True
                    lines.append(f"[-]{name} failed: {error}\n")
            if failed:
                log.error("health check error", extra={"path": request.path})
                return _plain_error(503, "".join(lines))
            verbose = "verbose" in request.query
            text = ("".join(lines) if verbose else "") + "ok\n"
            headers = {"Content-Type": _TEXT, "X-Content-Type-Options": "nosniff"}
            return web.Response(text=text, headers=headers)

        async def all_checks(request: web.Request) -> web.StreamResponse:
            excluded = _query_set(request, "exclude")
            return await run(request, [n for n in names if n not in excluded])

        def one(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def handler(request: web.Request) -> web.StreamResponse:
                return await run(request, [name])

            return handler

        return [
            web.route("*", f"/{kind}", all_checks),
            *(web.route("*", f"/{kind}/{name}", one(name)) for name in names),
        ]

    async def get_metrics(request: web.Request) -> web.StreamResponse:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        web.route("*", "/health", get_health),
        *checks("livez", Health.LIVEZ),
        *checks("readyz", Health.READYZ),
        web.get("/metrics", get_metrics),
    ]


async def _version(request: web.Request) -> web.StreamResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    body = _dumps({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION})
    return web.Response(body=body.encode(), headers={"Content-Type": _JSON})


# -- the JSON gateway -------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One gateway path: the gRPC method, its message classes and stream shape."""

    method: str  # /package.Service/Method
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


def _routes() -> dict[str, Route]:
    files = (pb.DESCRIPTOR, v3lock_pb2.DESCRIPTOR, v3election_pb2.DESCRIPTOR)
    services = {s.full_name: s for f in files for s in f.services_by_name.values()}
    out = {}
    for path, target in GATEWAY_PATHS.items():
        service, _, name = target.partition("/")
        m = services[service].methods_by_name[name]
        out[path] = Route(
            f"/{target}",
            GetMessageClass(m.input_type),
            GetMessageClass(m.output_type),
            m.client_streaming,
            m.server_streaming,
        )
    return out


class BadRequest(Exception):
    """A request body that is not a JSON request message."""


def parse(obj: object, cls: type[Message]) -> Message:
    """One decoded JSON value as a ``cls`` message (null: the empty message)."""
    message = cls()
    if obj is None:
        return message
    if not isinstance(obj, dict):
        raise BadRequest(f"a {cls.DESCRIPTOR.name} must be a JSON object, not {obj!r:.40}")
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from exc
    return message


def first_value(raw: bytes) -> tuple[bool, object]:
    """(True, the first JSON value of ``raw``), or (False, None) for an empty body."""
    try:
        text = raw.decode().lstrip()
    except UnicodeDecodeError as exc:
        raise BadRequest(str(exc)) from exc
    if not text:
        return False, None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(str(exc)) from exc
    return True, value


class _BodyReader:
    """The JSON values of a request body in order, read as they arrive."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self._limit = limit
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._eof = False

    async def next(self) -> tuple[bool, object]:
        """(True, value), or (False, None) at the end; BadRequest if it is not JSON."""
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    value, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError as exc:
                    if self._eof or len(text) > self._limit:
                        raise BadRequest(str(exc)) from exc
                else:
                    self._buf = text[end:]
                    return True, value
            elif self._eof:
                return False, None
            chunk = await self._content.readany()
            try:
                if chunk:
                    self._buf = text + self._utf8.decode(chunk)
                else:
                    self._eof = True
                    self._buf = text + self._utf8.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise BadRequest(str(exc)) from exc


def _error_body(code: grpc.StatusCode, message: str) -> web.Response:
    """grpc-gateway's error response."""
    body = _dumps({"error": message, "message": message, "code": code.value[0]})
    return web.Response(
        status=http_status(code), body=body.encode(), headers={"Content-Type": _JSON}
    )


def _stream_error_line(code: grpc.StatusCode, message: str) -> bytes:
    status = http_status(code)
    chunk = {
        "error": {
            "grpc_code": code.value[0],
            "http_code": status,
            "message": message,
            "http_status": HTTPStatus(status).phrase,
        }
    }
    return (_dumps(chunk) + "\n").encode()


class Gateway:
    """etcd's JSON gateway: ``/v3/...`` POSTs as calls on a gRPC channel to this member."""

    def __init__(self, target: str, *, max_body: int) -> None:
        self._target = target
        self._max_body = max_body
        self._routes = _routes()
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = [
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ]
            self._channel = grpc.aio.insecure_channel(self._target, options=options)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._calls.clear()

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/v3/{path:.*}", self.handle)]

    def _callable(self, route: Route) -> Any:
        call = self._calls.get(route.method)
        if call is None:
            kind = (
                self.channel.stream_stream
                if route.client_streaming
                else self.channel.unary_stream
                if route.server_streaming
                else self.channel.unary_unary
            )
            call = self._calls[route.method] = kind(
                route.method,
                request_serializer=route.request.SerializeToString,
                response_deserializer=route.response.FromString,
            )
        return call

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self._routes.get(request.match_info["path"])
        if route is None:
            return _plain_error(404, "Not Found")
        if request.method != "POST":
            return _method_not_allowed("POST")
        metadata: tuple[tuple[str, str], ...] = ()
        token = request.headers.get("Authorization", "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if token:
            metadata = (("token", token),)  # what etcd's clients send after Authenticate
        body = _BodyReader(request, self._max_body)
        try:
            if route.client_streaming:
                has_first, first = await body.next()
            else:  # one request: the body's first JSON value, as grpc-gateway decodes it
                has_first, first = first_value(await request.read())
            message = parse(first, route.request)
        except BadRequest as exc:
            return _error_body(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        call = self._callable(route)
        if not route.client_streaming and not route.server_streaming:
            try:
                response = await call(message, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                return _error_body(exc.code(), exc.details() or "")
            answer = _dumps(to_json(response)).encode()
            return web.Response(body=answer, headers={"Content-Type": _JSON})
        if route.client_streaming:
            stream = call(self._requests(message, has_first, body, route), metadata=metadata)
        else:
            stream = call(message, metadata=metadata)
        return await self._forward_stream(request, stream)

    async def _requests(
        self, first: Message, has_first: bool, body: _BodyReader, route: Route
    ) -> AsyncIterator[Message]:
        """A client stream: the body's JSON values in order; its end half-closes."""
        if not has_first:
            return
        yield first
        while True:
            try:
                more, value = await body.next()
                if not more:
                    return
                yield parse(value, route.request)
            except BadRequest as exc:
                log.debug("gateway: stopped reading a %s stream: %s", route.method, exc)
                return

    async def _forward_stream(self, request: web.Request, stream: Any) -> web.StreamResponse:
        out: web.StreamResponse | None = None
        error: tuple[grpc.StatusCode, str] | None = None
        try:
            async for item in stream:
                if out is None:
                    out = web.StreamResponse(headers={"Content-Type": _JSON})
                    out.enable_chunked_encoding()
                    await out.prepare(request)
                await out.write((_dumps({"result": to_json(item)}) + "\n").encode())
        except grpc.aio.AioRpcError as exc:
            error = exc.code(), exc.details() or ""
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the client went away
            error = _STOPPED  # the call, not this handler, was cancelled: the gateway closes
        finally:
            stream.cancel()
        if error is not None:
            if out is None:
                return _error_body(*error)
            with contextlib.suppress(ConnectionError):
                await out.write(_stream_error_line(*error))
        if out is None:
            out = web.StreamResponse(headers={"Content-Type": _JSON})
            await out.prepare(request)
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out


# -- the listeners --------------------------------------------------------------------------------


class MemberHttp:
    """The member's HTTP listeners; see the module docstring for what each serves.

    ``start_metrics`` after ``Member.start``; ``add_gateway_port`` on the gRPC server before
    it starts; ``start_clients`` once it serves; ``stop`` before the gRPC server stops.
    """

    def __init__(self, member: Member) -> None:
        self._member = member
        self._runners: list[web.AppRunner] = []
        self._gateway: Gateway | None = None
        self._socket: str | None = None  # the gRPC server's socket for the gateway
        self._socket_in_temp = False

    @property
    def listening(self) -> list[str]:
        """The URLs served so far (``http://host:port``, actual ports when 0 was asked)."""
        out = []
        for runner in self._runners:
            for site in runner.sites:
                out.append(site.name)
        return out

    def add_gateway_port(self, server: grpc.aio.Server) -> None:
        """Let ``server`` also listen on a private socket for the gateway (if it is on)."""
        if not self._member.cfg.listen_client_http_urls:
            return
        self._socket, self._socket_in_temp = private_socket(self._member.cfg.data_dir, "gateway")
        server.add_insecure_port(f"unix:{self._socket}")

    async def start_metrics(self) -> None:
        cfg = self._member.cfg
        if cfg.listen_metrics_urls:
            app = web.Application()
            app.add_routes(health_routes(self._member))
            await self._serve(app, cfg.listen_metrics_urls)
            log.info(
                "serving metrics and health on %s", ",".join(map(str, cfg.listen_metrics_urls))
            )

    async def start_clients(self) -> None:
        cfg = self._member.cfg
        if not cfg.listen_client_http_urls:
            return
        if self._socket is None:
            raise RuntimeError("add_gateway_port must be called before the gRPC server starts")
        # A body carries a request of up to --max-request-bytes in base64 (4/3) and JSON.
        limit = 2 * cfg.max_request_bytes + 64 * 1024
        self._gateway = Gateway(f"unix:{self._socket}", max_body=limit)
        app = web.Application(client_max_size=limit)
        app.add_routes(health_routes(self._member))
        app.add_routes([web.route("*", "/version", _version), *self._gateway.routes()])
        await self._serve(app, cfg.listen_client_http_urls)
        log.info(
            "serving the HTTP gateway, health and metrics on %s",
            ",".join(map(str, cfg.listen_client_http_urls)),
        )

    async def _serve(self, app: web.Application, urls: tuple[URL, ...]) -> None:
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runners.append(runner)
        tls = self._member.cfg.client_tls
        for url in urls:
            ssl_context = peer_server_context(tls) if url.scheme == "https" and tls else None
            site = web.TCPSite(runner, url.host, url.port, ssl_context=ssl_context)
            await site.start()

    async def stop(self) -> None:
        """Close the gateway's channel (open streams end), then the listeners."""
        if self._gateway is not None:
            await self._gateway.close()
            self._gateway = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._socket is not None:
            remove_private_socket(self._socket, self._socket_in_temp)
            self._socket = None
