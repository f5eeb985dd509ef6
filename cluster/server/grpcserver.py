"""The gRPC servers a member answers its clients on (``python -m cluster``).

grpcio's asyncio server costs about 270 µs of CPU per unary call on a 2-core machine: its
poller thread hands every completion to the event loop, each hand-off a system call and a
wake-up. pygrpc-native does HTTP/2 in Rust threads outside the GIL and hands calls to the
loop in batches: about 50 µs for the same call, measured with the same client. It serves
unary and server-streaming methods itself, on one plaintext port; calls with a request
stream (Watch, LeaseKeepAlive) it passes to a grpc.aio server behind it, on a Unix socket,
which costs the member 15-20 µs of CPU more per streamed message than grpc.aio answering
directly (51-56 against 36 µs; the client spends ~10 µs less). It has no TLS, and it
refuses (RST_STREAM, PROTOCOL_ERROR) a call whose ``:authority`` is not a valid
host[:port], which etcd accepts: etcd's Go client v3.5.0 sent "#initially=[...]", and
grpc-core clients given several addresses in one target ("ipv4:a:1,b:2") send the list
unless ``grpc.default_authority`` is set.

So it is opt-in: with ``--experimental-grpc-server=native`` the first plaintext client URL
is served by pygrpc-native, and one grpc.aio server takes every other client URL (https
ones, further plaintext ones) and the HTTP gateway's private socket; by default
(``grpcio``) that one server takes them all.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
import pygrpc_native.aio

from cluster.config import URL, MemberConfig
from cluster.tls import grpc_server_credentials

from .http import MemberHttp
from .kv import grpc_server_options
from .member import Member
from .services import add_services
from .sockets import private_socket


@dataclass
class ClientServers:
    """The member's gRPC servers and what to close once they have stopped."""

    servers: list[Any] = field(default_factory=list)  # grpc.aio.Server-like
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self, grace: float | None) -> None:
        for server in self.servers:
            await server.stop(grace)
        for close in self.closers:
            await close()


def native_url(cfg: MemberConfig) -> URL | None:
    """The client URL pygrpc-native serves, if any."""
    if cfg.grpc_server != "native":
        return None
    return next((u for u in cfg.listen_client_urls if u.scheme == "http"), None)


def client_servers(cfg: MemberConfig, member: Member, http: MemberHttp) -> ClientServers:
    """Build (not start) the servers for every client URL and the gateway's socket."""
    options = grpc_server_options(cfg.max_request_bytes)
    out = ClientServers()
    native = native_url(cfg)
    if native is not None:
        server = NativeServer(cfg.data_dir, options=options)
        # pygrpc-native serves registered methods only (generic handlers go behind it)
        out.closers += add_services(server, member, registered=True)
        _bind(native, server.add_insecure_port, listen_address(native))
        out.servers.append(server)
    rest = [u for u in cfg.listen_client_urls if u is not native]
    if rest or cfg.listen_client_http_urls:
        server = grpc.aio.server(options=options)
        out.closers += add_services(server, member)
        http.add_gateway_port(server)
        for url in rest:
            if url.scheme == "https":
                assert cfg.client_tls is not None  # config.load checks https has its files
                creds = grpc_server_credentials(cfg.client_tls)
                _bind(url, server.add_secure_port, listen_address(url), creds)
            else:
                _bind(url, server.add_insecure_port, listen_address(url))
        out.servers.append(server)
    return out


def _bind(url: URL, add_port: Callable[..., int], *args: Any) -> None:
    """``add_port(*args)``; both servers raise RuntimeError when the address cannot be
    bound (in use, or not this host's): an OSError naming the URL, for ``python -m
    cluster``'s one-line error."""
    try:
        add_port(*args)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for clients on {url}: {exc}") from exc


_fallback_data_dir: ContextVar[str | None] = ContextVar("fallback_data_dir", default=None)
_temp_fallback_socket = pygrpc_native.aio._fallback_socket  # type: ignore[attr-defined]


def _fallback_socket() -> tuple[str, str]:
    """(directory, path) of the socket pygrpc-native's grpc.aio fallback listens on."""
    data_dir = _fallback_data_dir.get()
    if data_dir is None:
        return _temp_fallback_socket()
    path, _ = private_socket(data_dir, "native-fallback")  # too long a path: a temp dir
    return os.path.dirname(path), path  # the server removes the directory when it stops


# pygrpc-native makes a temp directory per server for that socket, which a killed member
# would leave behind in /tmp; a NativeServer puts it in its data dir instead.
pygrpc_native.aio._fallback_socket = _fallback_socket  # type: ignore[attr-defined]


class NativeServer(pygrpc_native.aio.Server):
    """pygrpc-native's asyncio server, its fallback socket in ``data_dir``
    (``<data-dir>/member/native-fallback/grpc.sock``)."""

    def __init__(self, data_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._data_dir = data_dir

    async def start(self) -> None:
        token = _fallback_data_dir.set(self._data_dir)
        try:
            await super().start()
        finally:
            _fallback_data_dir.reset(token)


def listen_address(url: URL) -> str:
    """``host:port`` for a gRPC server's port; an IPv6 host in brackets (``[::1]:2379``)."""
    return f"[{url.host}]:{url.port}" if ":" in url.host else f"{url.host}:{url.port}"
