"""Requests whose bytes do not decode get etcd-style INVALID_ARGUMENT, not gRPC's UNKNOWN.

grpc.aio reports a deserializer's exception as "Unexpected ... raised by servicer method"
(UNKNOWN, with a Python traceback in the member's log). This interceptor wraps each unary
method's deserializer so that a ``DecodeError`` (random bytes, a txn nested past protobuf's
depth limit) reaches the method as a marker, which it answers with
"etcdserver: malformed request: ...".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class _Malformed:
    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def run(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            return _Malformed(exc)

    return run


async def _refuse(context: Any, request: _Malformed) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: malformed request: {request.error}"
    )


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def checked_unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Malformed):
                    await _refuse(context, request)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                checked_unary,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def checked_stream(request: Any, context: Any) -> Any:
                if isinstance(request, _Malformed):
                    await _refuse(context, request)
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                checked_stream,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
