"""The base of the errors etcd answers with a gRPC status (the store's, the lessor's, auth's).

``str(err)`` is etcd's message, ``grpc_code`` the name of a ``grpc.StatusCode`` member and
``grpc_message`` the text etcd's servicers send; a subclass sets ``message`` and
``grpc_code``. Nothing here imports grpc: the libraries that raise these stay free of it.
"""

from __future__ import annotations

from typing import ClassVar


class EtcdError(Exception):
    message: ClassVar[str] = "etcdserver: error"
    grpc_code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    @property
    def grpc_message(self) -> str:
        return str(self)
