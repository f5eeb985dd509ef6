"""Typed exceptions for etcd's gRPC errors.

Every error the client raises for a failed call is an :class:`EtcdError` carrying the gRPC
status code and etcd's message (``"etcdserver: ..."``), plus the endpoint that answered.
:func:`from_rpc_error` maps a ``grpc.RpcError`` to the most specific class: by etcd's message
first (the same code covers many errors), then by status code.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "AuthenticationError",
    "CompactedError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "ElectionNoLeaderError",
    "EtcdError",
    "FutureRevisionError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "LeaderChangedError",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "NoLeaderError",
    "NoSpaceError",
    "NotElectionLeaderError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "TooManyRequestsError",
    "UnavailableError",
    "WatchCanceledError",
    "from_rpc_error",
]


class EtcdError(Exception):
    """A failed etcd call: ``code`` (a ``grpc.StatusCode``), etcd's ``message``, ``endpoint``."""

    default_code: Any = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", code: Any = None, endpoint: str | None = None) -> None:
        self.message = message
        self.code: Any = code if code is not None else self.default_code
        self.endpoint = endpoint
        super().__init__(message)

    def __str__(self) -> str:
        name = getattr(self.code, "name", str(self.code))
        where = f" from {self.endpoint}" if self.endpoint else ""
        return f"{self.message} ({name}{where})"


class UnavailableError(EtcdError):
    """UNAVAILABLE: the member could not serve the call now (retryable on another member)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class ConnectionFailedError(UnavailableError):
    """The member could not be reached, or the connection broke (a transport error)."""


class NoLeaderError(UnavailableError):
    """``etcdserver: no leader``."""


class LeaderChangedError(UnavailableError):
    """``etcdserver: leader changed``."""


class RequestTimeoutError(UnavailableError):
    """``etcdserver: request timed out...``: the outcome of a write is unknown."""


class DeadlineExceededError(EtcdError):
    """The client's own deadline for the call passed (the outcome of a write is unknown)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class CompactedError(EtcdError):
    """The requested revision was compacted; ``compact_revision`` when etcd says (watches)."""

    default_code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(
        self,
        message: str = "etcdserver: mvcc: required revision has been compacted",
        code: Any = None,
        endpoint: str | None = None,
        compact_revision: int | None = None,
    ) -> None:
        super().__init__(message, code, endpoint)
        self.compact_revision = compact_revision

    def __str__(self) -> str:
        base = super().__str__()
        if self.compact_revision is not None:
            return f"{base}; compact revision {self.compact_revision}"
        return base


class FutureRevisionError(EtcdError):
    """``etcdserver: mvcc: required revision is a future revision``."""

    default_code = grpc.StatusCode.OUT_OF_RANGE


class LeaseNotFoundError(EtcdError):
    """``etcdserver: requested lease not found`` (expired, revoked or never granted)."""

    default_code = grpc.StatusCode.NOT_FOUND


class LeaseExistsError(EtcdError):
    """``etcdserver: lease already exists``."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgumentError(EtcdError):
    """INVALID_ARGUMENT: the request was malformed (empty key, too large, ...)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class KeyNotFoundError(InvalidArgumentError):
    """``etcdserver: key not found`` (a put with ignore_value/ignore_lease on a missing key)."""


class PermissionDeniedError(EtcdError):
    """``etcdserver: permission denied``."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class AuthenticationError(EtcdError):
    """Bad credentials or an invalid auth token."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class NoSpaceError(EtcdError):
    """``etcdserver: mvcc: database space exceeded`` (the NOSPACE alarm is raised)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyRequestsError(EtcdError):
    """``etcdserver: too many requests``: the member is overloaded (nothing was applied)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ElectionNoLeaderError(EtcdError):
    """``election: no leader``: nobody holds the election."""


class NotElectionLeaderError(EtcdError):
    """``election: not leader``: the leader key no longer leads (resigned or lease lost)."""


class WatchCanceledError(EtcdError):
    """The server canceled a watch for a reason other than compaction."""

    default_code = grpc.StatusCode.CANCELLED


_BY_MESSAGE: dict[str, type[EtcdError]] = {
    "etcdserver: no leader": NoLeaderError,
    "etcdserver: leader changed": LeaderChangedError,
    "etcdserver: mvcc: required revision has been compacted": CompactedError,
    "etcdserver: mvcc: required revision is a future revision": FutureRevisionError,
    "etcdserver: requested lease not found": LeaseNotFoundError,
    "etcdserver: lease not found": LeaseNotFoundError,
    "etcdserver: lease already exists": LeaseExistsError,
    "etcdserver: key not found": KeyNotFoundError,
    "etcdserver: permission denied": PermissionDeniedError,
    "etcdserver: invalid auth token": AuthenticationError,
    "etcdserver: authentication failed, invalid user ID or password": AuthenticationError,
    "etcdserver: user name is empty": AuthenticationError,  # auth is on, no credentials given
    "etcdserver: mvcc: database space exceeded": NoSpaceError,
    "etcdserver: too many requests": TooManyRequestsError,
    "election: no leader": ElectionNoLeaderError,
    "election: not leader": NotElectionLeaderError,
    # the server ran out of the deadline the client sent along (v3lock / v3election say so)
    "context deadline exceeded": DeadlineExceededError,
}

_BY_CODE: dict[Any, type[EtcdError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def classify(code: Any, message: str) -> type[EtcdError]:
    """The exception class for a gRPC ``code`` and etcd ``message``."""
    cls = _BY_MESSAGE.get(message)
    if cls is not None:
        return cls
    if message.startswith("etcdserver: request timed out"):
        return RequestTimeoutError
    if code == grpc.StatusCode.UNAVAILABLE and not message.startswith("etcdserver:"):
        return ConnectionFailedError
    return _BY_CODE.get(code, EtcdError)


def from_rpc_error(err: grpc.RpcError, endpoint: str | None = None) -> EtcdError:
    """Map a ``grpc.RpcError`` (sync or aio) to an :class:`EtcdError`."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(code)
    return classify(code, message)(message, code, endpoint)
