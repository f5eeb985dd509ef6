"""The store's errors, with etcd's messages and the gRPC code etcd answers them with.

``grpc_code`` is the name of a ``grpc.StatusCode`` member; ``grpc_message`` is
the text etcd's servicers send (mvcc errors gain etcd's ``"etcdserver: "``
prefix there, as ``rpctypes`` does). Every error is raised before the request
changes anything.
"""

from __future__ import annotations

from typing import ClassVar

from cluster.errors import EtcdError


class MVCCError(EtcdError):
    """Base class; ``str(err)`` is etcd's message."""

    message: ClassVar[str] = "mvcc: error"

    @property
    def grpc_message(self) -> str:
        text = str(self)
        return text if text.startswith("etcdserver: ") else "etcdserver: " + text


class CompactedError(MVCCError):
    message = "mvcc: required revision has been compacted"
    grpc_code = "OUT_OF_RANGE"


class FutureRevisionError(MVCCError):
    message = "mvcc: required revision is a future revision"
    grpc_code = "OUT_OF_RANGE"


class KeyNotFoundError(MVCCError):
    """A put with ignore_value / ignore_lease on a missing key; an empty txn op."""

    message = "etcdserver: key not found"
    grpc_code = "INVALID_ARGUMENT"


class LeaseNotFoundError(MVCCError):
    message = "etcdserver: requested lease not found"
    grpc_code = "NOT_FOUND"


LeaseNotFound = LeaseNotFoundError


class RequestError(MVCCError):
    """A request that is malformed whatever the store holds."""

    grpc_code = "INVALID_ARGUMENT"


class EmptyKeyError(RequestError):
    message = "etcdserver: key is not provided"


class DuplicateKeyError(RequestError):
    message = "etcdserver: duplicate key given in txn request"


class TooManyOpsError(RequestError):
    message = "etcdserver: too many operations in txn request"


class ValueProvidedError(RequestError):
    message = "etcdserver: value is provided"


class LeaseProvidedError(RequestError):
    message = "etcdserver: lease is provided"


class InvalidSortOptionError(RequestError):
    message = "etcdserver: invalid sort option"


class CorruptStoreError(MVCCError):
    """The index names a revision the backend does not hold (etcd exits on this)."""

    grpc_code = "DATA_LOSS"
