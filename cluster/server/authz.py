"""Authentication and authorization in the server: auth entries applied, every RPC checked.

``apply_auth`` applies the Auth service's changes (they go through Raft like any write).
``Authorizer`` answers, for one gRPC call, who is asking (``info``: from the ``token``
metadata a client got from Authenticate, or, with ``--client-cert-auth``, the common name
of its TLS certificate) and checks what the call touches, with etcd's rules and the gaps
etcd closed after its CVEs:

- Range / Put / DeleteRange: the requested key range must be covered by the user's grants.
- Txn: every compare needs read permission on its key range, and every operation of both
  branches, nested txns included, is checked as if sent alone.
- Watch: the whole watched range must be readable.
- LeaseRevoke needs write permission on every attached key; LeaseTimeToLive with keys needs
  read permission on every attached key (it would reveal key names otherwise).
- Compact, Member*, Alarm, Defragment, Hash*, Snapshot, MoveLeader and the Auth service's
  management calls: the root role only.
- Lock / Election: read and write on the lock or election prefix.

With auth disabled, ``info`` is None and nothing is checked. A request without a user while
auth is enabled gets "etcdserver: user name is empty"; a bad or expired token "etcdserver:
invalid auth token"; a missing grant "etcdserver: permission denied". Permissions are checked
when the request arrives, against the auth revision of that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import grpc

from cluster.auth import (
    AuthError,
    AuthInfo,
    AuthStore,
    InvalidAuthTokenError,
    PermissionDeniedError,
    PermissionNotGivenError,
    decode_hashed_password,
    token_index,
)
from cluster.keyspace import prefix_range_end
from cluster.proto.etcdserverpb import rpc_pb2 as pb

from .handlers import Handler, replace
from .kvconv import RequestError
from .requests import AuthRequest


def apply_auth(store: AuthStore, req: AuthRequest, index: int, now: float) -> Any:
    """Apply one Auth entry; its response (header filled by the member)."""
    try:
        return _apply(store, req, index, now)
    except AuthError as exc:
        raise RequestError.from_error(exc) from exc


def _apply(store: AuthStore, req: AuthRequest, index: int, now: float) -> Any:
    if isinstance(req, pb.AuthEnableRequest):
        store.auth_enable()
        return pb.AuthEnableResponse()
    if isinstance(req, pb.AuthDisableRequest):
        store.auth_disable()
        return pb.AuthDisableResponse()
    if isinstance(req, pb.AuthenticateRequest):
        # ``password`` holds the token prefix the proposer drew (see requests.py)
        return pb.AuthenticateResponse(token=store.authenticate(req.name, req.password, index, now))
    if isinstance(req, pb.AuthUserAddRequest):
        hashed = decode_hashed_password(req.hashedPassword) if req.hashedPassword else b""
        store.user_add(req.name, hashed, no_password=req.options.no_password)
        return pb.AuthUserAddResponse()
    if isinstance(req, pb.AuthUserDeleteRequest):
        store.user_delete(req.name)
        return pb.AuthUserDeleteResponse()
    if isinstance(req, pb.AuthUserChangePasswordRequest):
        store.user_change_password(req.name, decode_hashed_password(req.hashedPassword))
        return pb.AuthUserChangePasswordResponse()
    if isinstance(req, pb.AuthUserGrantRoleRequest):
        store.user_grant_role(req.user, req.role)
        return pb.AuthUserGrantRoleResponse()
    if isinstance(req, pb.AuthUserRevokeRoleRequest):
        store.user_revoke_role(req.name, req.role)
        return pb.AuthUserRevokeRoleResponse()
    if isinstance(req, pb.AuthRoleAddRequest):
        store.role_add(req.name)
        return pb.AuthRoleAddResponse()
    if isinstance(req, pb.AuthRoleDeleteRequest):
        store.role_delete(req.role)
        return pb.AuthRoleDeleteResponse()
    if isinstance(req, pb.AuthRoleGrantPermissionRequest):
        if not req.HasField("perm"):
            raise PermissionNotGivenError()
        perm = req.perm
        store.role_grant_permission(req.name, perm.permType, perm.key, perm.range_end)
        return pb.AuthRoleGrantPermissionResponse()
    store.role_revoke_permission(req.role, req.key, req.range_end)
    return pb.AuthRoleRevokePermissionResponse()


class AuthMember(Protocol):
    @property
    def auth(self) -> AuthStore: ...

    @property
    def applied_index(self) -> int: ...

    @property
    def committed_index(self) -> int: ...

    async def wait_applied(self, index: int) -> None: ...


class Authorizer:
    """Who is calling, and may they? One per member; see the module docstring."""

    def __init__(self, member: AuthMember) -> None:
        self._member = member

    async def info(self, context: Any) -> AuthInfo | None:
        """The caller, or None when auth is disabled (or no user was given)."""
        store = self._member.auth
        if not store.enabled:
            return None
        token = _metadata(context).get("token")
        now = asyncio.get_running_loop().time()
        try:
            if token:
                index = token_index(token)
                if index is not None and index > self._member.applied_index:
                    if index > self._member.committed_index:  # no such entry: forged
                        raise InvalidAuthTokenError()
                    # issued by an entry committed but not applied here yet (etcd waits too)
                    await self._member.wait_applied(index)
                return store.auth_info(token, now)
        except AuthError as exc:
            raise RequestError.from_error(exc) from exc
        common_name = _common_name(context)
        if common_name:
            return AuthInfo(common_name, store.revision)
        return None

    def _run(self, check: Any, *args: Any) -> None:
        try:
            check(*args)
        except AuthError as exc:
            raise RequestError.from_error(exc) from exc

    def range(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        if self._member.auth.enabled:
            self._run(self._member.auth.check_range, info, key, range_end)

    def put(self, info: AuthInfo | None, key: bytes) -> None:
        if self._member.auth.enabled:
            self._run(self._member.auth.check_put, info, key)

    def delete(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        if self._member.auth.enabled:
            self._run(self._member.auth.check_delete_range, info, key, range_end)

    def admin(self, info: AuthInfo | None) -> None:
        if self._member.auth.enabled:
            self._run(self._member.auth.check_admin, info)

    def prefix(self, info: AuthInfo | None, prefix: bytes) -> None:
        """Read and write on every key under ``prefix`` (locks and elections)."""
        end = prefix_range_end(prefix)
        self.range(info, prefix, end)
        self.delete(info, prefix, end)

    def keys_writable(self, info: AuthInfo | None, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.put(info, key)

    def keys_readable(self, info: AuthInfo | None, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.range(info, key, b"")

    def request(self, info: AuthInfo | None, req: object) -> None:
        """A KV request (a Txn recursively: compares and both branches)."""
        if not self._member.auth.enabled:
            return
        if isinstance(req, pb.RangeRequest):
            self.range(info, req.key, req.range_end)
        elif isinstance(req, pb.PutRequest):
            self.put(info, req.key)
        elif isinstance(req, pb.DeleteRangeRequest):
            self.delete(info, req.key, req.range_end)
        elif isinstance(req, pb.TxnRequest):
            for cmp in req.compare:
                self.range(info, cmp.key, cmp.range_end)
            for op in (*req.success, *req.failure):
                which = op.WhichOneof("request")
                if which is not None:
                    self.request(info, getattr(op, which))
        elif isinstance(req, pb.CompactionRequest):
            self.admin(info)
        else:
            raise RequestError(*_denied())


def _denied() -> tuple[grpc.StatusCode, str]:
    exc = PermissionDeniedError()
    return grpc.StatusCode[exc.grpc_code], exc.grpc_message


def _metadata(context: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


def _common_name(context: Any) -> str:
    """The CN of the client's verified TLS certificate, if any (etcd: --client-cert-auth)."""
    try:
        auth = context.auth_context() or {}
    except (AttributeError, RuntimeError):
        return ""
    names = auth.get("x509_common_name") or []
    return names[0].decode() if names else ""


# Methods only the root role may call while auth is enabled (the Auth service's management
# methods check for themselves).
ADMIN_METHODS = frozenset(
    {
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Cluster/MemberRemove",
        "/etcdserverpb.Cluster/MemberUpdate",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Cluster/MemberPromote",
        "/etcdserverpb.Maintenance/Alarm",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/MoveLeader",
    }
)


def admin_only(handler: Handler, authz: Authorizer) -> Handler:
    """``handler``, refused to anyone but the root role while auth is enabled (for
    ``ADMIN_METHODS``)."""

    async def check(context: Any) -> None:
        try:
            authz.admin(await authz.info(context))
        except RequestError as err:
            await context.abort(err.code, err.message)

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def checked_unary(request: Any, context: Any) -> Any:
            await check(context)
            return await unary(request, context)

        return replace(handler, checked_unary)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def checked_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context)
            async for item in stream(request, context):
                yield item

        return replace(handler, checked_stream)
    return handler
