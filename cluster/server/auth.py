"""The Auth service: users, roles and permissions (etcdctl's ``auth``, ``user``, ``role``).

Changes go through Raft (``cluster.server.authz.apply_auth``). Passwords are hashed with
bcrypt here, off the event loop, before proposing: only the hash enters the log and the
backend. Authenticate checks the password (bounded attempts per second per user: "etcdserver:
too many requests"), then proposes a token prefix; every member registers the token when it
applies the entry, so the token works on any member. With auth enabled, everything but
Authenticate and AuthStatus needs the root role.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn, TypeVar

from cluster.auth import (
    AuthError,
    AuthFailedError,
    AuthNotEnabledError,
    TooManyRequestsError,
    encode_hashed_password,
    new_token_prefix,
)
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc as pb_grpc

from .kvconv import RequestError
from .member import Member

_R = TypeVar("_R")


async def _abort(context: Any, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")


class AuthServicer(pb_grpc.AuthServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def _change(self, request: Any, kind: type[_R], context: Any) -> _R:
        """An auth change by an admin (anyone while auth is disabled), through Raft."""
        m = self.member
        try:
            m.authz.admin(await m.authz.info(context))
            resp = await m.write(request)
        except RequestError as err:
            await _abort(context, err)
        if not isinstance(resp, kind):
            raise TypeError(f"member answered {type(resp).__name__}, expected {kind.__name__}")
        return resp

    async def _hash(self, password: str, context: Any) -> str:
        store = self.member.auth
        try:
            hashed = await asyncio.to_thread(store.hash_password, password)
        except AuthError as exc:
            await _abort(context, RequestError.from_error(exc))
        return encode_hashed_password(hashed)

    async def _read_check(self, context: Any) -> None:
        m = self.member
        try:
            await m.linearizable_barrier()
            m.authz.admin(await m.authz.info(context))
        except RequestError as err:
            await _abort(context, err)

    # -- enable, disable, status, authenticate --------------------------------------------
    async def AuthEnable(self, request: pb.AuthEnableRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthEnableResponse, context)

    async def AuthDisable(self, request: pb.AuthDisableRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthDisableResponse, context)

    async def AuthStatus(self, request: pb.AuthStatusRequest, context: Any) -> Any:
        m = self.member
        try:
            await m.linearizable_barrier()
        except RequestError as err:
            await _abort(context, err)
        return pb.AuthStatusResponse(
            header=m.header(), enabled=m.auth.enabled, authRevision=m.auth.revision
        )

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> Any:
        m = self.member
        store = m.auth
        try:
            if not store.enabled:
                raise RequestError.from_error(AuthNotEnabledError())
            if not store.attempt_allowed(request.name, asyncio.get_running_loop().time()):
                raise RequestError.from_error(TooManyRequestsError())
            for _ in range(3):  # etcd: check again if the auth store changed meanwhile
                revision = store.revision
                ok = await asyncio.to_thread(store.check_password, request.name, request.password)
                if not ok:
                    raise RequestError.from_error(AuthFailedError())
                entry = pb.AuthenticateRequest(name=request.name, password=new_token_prefix())
                resp = await m.write(entry)
                if store.revision == revision:
                    assert isinstance(resp, pb.AuthenticateResponse)
                    return resp
            raise RequestError.from_error(AuthFailedError())
        except RequestError as err:
            await _abort(context, err)

    # -- users ----------------------------------------------------------------------------
    async def UserAdd(self, request: pb.AuthUserAddRequest, context: Any) -> Any:
        entry = pb.AuthUserAddRequest(name=request.name, options=request.options)
        if request.hashedPassword:
            entry.hashedPassword = request.hashedPassword
        elif not request.options.no_password:
            entry.hashedPassword = await self._hash(request.password, context)
        return await self._change(entry, pb.AuthUserAddResponse, context)

    async def UserGet(self, request: pb.AuthUserGetRequest, context: Any) -> Any:
        await self._read_check(context)
        try:
            roles = self.member.auth.user_get(request.name)
        except AuthError as exc:
            await _abort(context, RequestError.from_error(exc))
        return pb.AuthUserGetResponse(header=self.member.header(), roles=roles)

    async def UserList(self, request: pb.AuthUserListRequest, context: Any) -> Any:
        await self._read_check(context)
        return pb.AuthUserListResponse(
            header=self.member.header(), users=self.member.auth.user_list()
        )

    async def UserDelete(self, request: pb.AuthUserDeleteRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthUserDeleteResponse, context)

    async def UserChangePassword(
        self, request: pb.AuthUserChangePasswordRequest, context: Any
    ) -> Any:
        hashed = request.hashedPassword or await self._hash(request.password, context)
        entry = pb.AuthUserChangePasswordRequest(name=request.name, hashedPassword=hashed)
        return await self._change(entry, pb.AuthUserChangePasswordResponse, context)

    async def UserGrantRole(self, request: pb.AuthUserGrantRoleRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthUserGrantRoleResponse, context)

    async def UserRevokeRole(self, request: pb.AuthUserRevokeRoleRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthUserRevokeRoleResponse, context)

    # -- roles ----------------------------------------------------------------------------
    async def RoleAdd(self, request: pb.AuthRoleAddRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthRoleAddResponse, context)

    async def RoleGet(self, request: pb.AuthRoleGetRequest, context: Any) -> Any:
        await self._read_check(context)
        try:
            perms = self.member.auth.role_get(request.role)
        except AuthError as exc:
            await _abort(context, RequestError.from_error(exc))
        return pb.AuthRoleGetResponse(header=self.member.header(), perm=perms)

    async def RoleList(self, request: pb.AuthRoleListRequest, context: Any) -> Any:
        await self._read_check(context)
        return pb.AuthRoleListResponse(
            header=self.member.header(), roles=self.member.auth.role_list()
        )

    async def RoleDelete(self, request: pb.AuthRoleDeleteRequest, context: Any) -> Any:
        return await self._change(request, pb.AuthRoleDeleteResponse, context)

    async def RoleGrantPermission(
        self, request: pb.AuthRoleGrantPermissionRequest, context: Any
    ) -> Any:
        return await self._change(request, pb.AuthRoleGrantPermissionResponse, context)

    async def RoleRevokePermission(
        self, request: pb.AuthRoleRevokePermissionRequest, context: Any
    ) -> Any:
        return await self._change(request, pb.AuthRoleRevokePermissionResponse, context)
