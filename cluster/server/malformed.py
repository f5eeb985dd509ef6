"""Requests whose bytes do not decode get etcd-style INVALID_ARGUMENT, not gRPC's UNKNOWN.

grpc.aio reports a deserializer's exception as "Unexpected ... raised by servicer method"
(UNKNOWN, with a Python traceback in the member's log). ``refuse_malformed`` wraps a unary
request's deserializer so that a ``DecodeError`` (random bytes, a txn nested past protobuf's
depth limit) reaches the method as a marker, which it answers with
"etcdserver: malformed request: ...". Streamed requests are left as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from .handlers import Handler, replace


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
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


def refuse_malformed(handler: Handler) -> Handler:
    """``handler``, its unary request refused cleanly when it does not decode."""
    deserialize = handler.request_deserializer
    if handler.request_streaming or deserialize is None:
        return handler
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def checked_unary(request: Any, context: Any) -> Any:
            if type(request) is _Malformed:
                await _refuse(context, request)
            return await unary(request, context)

        return replace(handler, checked_unary, _tolerant(deserialize))
    stream = handler.unary_stream

    async def checked_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        if type(request) is _Malformed:
            await _refuse(context, request)
        async for item in stream(request, context):
            yield item

    return replace(handler, checked_stream, _tolerant(deserialize))
