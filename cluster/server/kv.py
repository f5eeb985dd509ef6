"""The KV gRPC service (grpc.aio): validate, hand to the member, map errors to etcd's statuses.

Every request is checked here first, as etcd's v3rpc/key.go does (keys, sort
options, txn op counts and key overlaps) and then, for what would be proposed,
against ``max_request_bytes``: a bad request never reaches Raft. Writes (and
every Txn, read-only ones included, for simplicity) go through
``member.write``; Range through ``member.read``. A ``RequestError`` (or a
store ``MVCCError``) from any of these is answered with
``context.abort(code, message)``: etcd's codes and messages, which etcd's
clients map back to their typed errors.

The gRPC server itself should accept messages somewhat larger than
``max_request_bytes`` (``grpc_server_options``), so that an oversized request
is refused here with etcd's "request is too large" rather than by the transport.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol, TypeVar

from cluster.mvcc import MVCCError
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from . import kvconv
from .authz import Authorizer
from .kvconv import RequestError, WriteRequest

__all__ = ["GRPC_OVERHEAD_BYTES", "KVMember", "KVServicer", "grpc_server_options"]

# etcd's grpcOverheadBytes: the server's receive limit is max_request_bytes plus this.
GRPC_OVERHEAD_BYTES = 512 * 1024

_R = TypeVar("_R")


class KVMember(Protocol):
    """What the KV service needs of the member."""

    @property
    def max_request_bytes(self) -> int: ...

    @property
    def max_txn_ops(self) -> int: ...

    async def write(self, request: WriteRequest) -> object:
        """Propose through Raft, apply with ``kvconv.apply_*``: the response of the request's
        type (a ``WriteResponse``; the servicer checks) with its header filled. Raises
        ``RequestError`` for a request the store refuses or a Raft failure ("etcdserver: no
        leader", "etcdserver: request timed out", ...)."""
        ...

    async def read(self, request: pb.RangeRequest) -> pb.RangeResponse:
        """Linearizable unless ``request.serializable``; header filled. Raises ``RequestError``."""
        ...


def grpc_server_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """Options for ``grpc.aio.server``: etcd's receive limit (and no send limit)."""
    return [
        ("grpc.max_receive_message_length", max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", -1),
    ]


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")  # it raises


def _expect(kind: type[_R], resp: object) -> _R:
    if not isinstance(resp, kind):
        raise TypeError(f"member answered {type(resp).__name__}, expected {kind.__name__}")
    return resp


class KVServicer(pb_grpc.KVServicer):
    """etcd's KV service over a ``KVMember``."""

    def __init__(self, member: KVMember, authz: Authorizer | None = None) -> None:
        self._member = member
        self._authz = authz  # None: no authentication (tests of the service alone)

    async def _authorize(self, request: object, context: Any) -> None:
        if self._authz is not None:
            self._authz.request(await self._authz.info(context), request)

    async def _write(self, request: WriteRequest, kind: type[_R], context: Any) -> _R:
        member = self._member
        try:
            kvconv.validate(request, member.max_txn_ops)
            kvconv.check_size(request, member.max_request_bytes)
            await self._authorize(request, context)
            return _expect(kind, await member.write(request))
        except RequestError as err:
            await _abort(context, err)
        except MVCCError as err:
            await _abort(context, RequestError.from_error(err))

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        member = self._member
        try:
            kvconv.validate_range(request, member.max_txn_ops)
            await self._authorize(request, context)
            return _expect(pb.RangeResponse, await member.read(request))
        except RequestError as err:
            await _abort(context, err)
        except MVCCError as err:
            await _abort(context, RequestError.from_error(err))

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return await self._write(request, pb.PutResponse, context)

    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: Any
    ) -> pb.DeleteRangeResponse:
        return await self._write(request, pb.DeleteRangeResponse, context)

    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        return await self._write(request, pb.TxnResponse, context)

    async def Compact(self, request: pb.CompactionRequest, context: Any) -> pb.CompactionResponse:
        return await self._write(request, pb.CompactionResponse, context)
