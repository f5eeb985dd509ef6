"""The Lock gRPC service (etcd's v3lock): distributed locks held by a lease.

Lock waits until the caller holds the named lock and answers the ownership
key, which exists as long as the lock is held; Unlock deletes it. The recipe
(the queue of keys under ``name/``; fencing tokens: its module docstring) is
``cluster.server.concurrency``'s. The caller keeps its lease alive; when the
lease ends, the lock is released. A Lock cancelled by its client deletes its
key, as etcd's Mutex does.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cluster.proto.v3lockpb import v3lock_pb2 as lockpb
from cluster.proto.v3lockpb import v3lock_pb2_grpc as lock_grpc

from . import concurrency
from .authz import Authorizer
from .concurrency import ConcurrencyMember
from .kvconv import RequestError

__all__ = ["LockServicer"]


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")  # it raises


class LockServicer(lock_grpc.LockServicer):
    """etcd's v3lock.Lock service over a member."""

    def __init__(self, member: ConcurrencyMember, authz: Authorizer | None = None) -> None:
        self._member = member
        self._authz = authz

    async def _check(self, context: Any, prefix: bytes) -> None:
        """Read and write on every key under ``prefix`` for the caller."""
        if self._authz is not None:
            self._authz.prefix(await self._authz.info(context), prefix)

    async def Lock(self, request: lockpb.LockRequest, context: Any) -> lockpb.LockResponse:
        try:
            await self._check(context, request.name + b"/")
            held = await concurrency.lock(self._member, request.name, request.lease)
        except RequestError as err:
            await _abort(context, err)
        return lockpb.LockResponse(header=held.header, key=held.key)

    async def Unlock(self, request: lockpb.UnlockRequest, context: Any) -> lockpb.UnlockResponse:
        try:
            await self._check(context, request.key)
            header = await concurrency.unlock(self._member, request.key)
        except RequestError as err:
            await _abort(context, err)
        return lockpb.UnlockResponse(header=header)
