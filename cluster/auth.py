"""The auth store: etcd's server/auth (store.go, range_perm_cache.go, simple_token.go, v3.5).

A pure library: no threads, timers or clock (methods that need time take
``now``, the member's monotonic seconds). The member drives it:

* Apply path, on every member, for each committed entry, deterministically:
  ``auth_enable``, ``auth_disable``, ``user_*`` / ``role_*`` changes and
  ``authenticate`` (which registers the token named in the entry). State is
  written into the backend's write batch in etcd's layout, so it commits with
  the entry: bucket ``auth`` holds ``authEnabled`` (``b"\\x01"`` / ``b"\\x00"``)
  and ``authRevision`` (8 bytes big-endian); ``authUsers`` maps a user name to
  an ``authpb.User`` (bcrypt hash, sorted roles, options); ``authRoles`` maps
  a role name to an ``authpb.Role``. Every change bumps the auth revision.
* Servicers, on the member that received the request: ``hash_password``
  before proposing a user add or password change (bcrypt is slow and salted,
  so it must not run in apply), ``attempt_allowed`` and ``check_password``
  before proposing an Authenticate, ``user_of_token`` for each request's
  token, and the permission checks.

The users and roles are also kept in memory (loaded on open, updated on apply),
so reads never touch the batch, which belongs to the apply thread. A lock
guards the in-memory state; bcrypt never runs under it. Clear passwords are
never stored nor logged: only ``hash_password`` and ``check_password`` see them.
"""

from __future__ import annotations

import base64
import secrets
import struct
import threading
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import bcrypt
from google.protobuf.message import DecodeError
from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from cluster.errors import EtcdError
from cluster.proto.authpb import auth_pb2 as authpb
from cluster.storage.backend import Backend, BatchTx

AUTH_BUCKET = "auth"
USERS_BUCKET = "authUsers"
ROLES_BUCKET = "authRoles"
ENABLED_KEY = b"authEnabled"
REVISION_KEY = b"authRevision"
AUTH_ENABLED = b"\x01"
AUTH_DISABLED = b"\x00"

ROOT_USER = "root"
ROOT_ROLE = "root"

READ = authpb.Permission.READ
WRITE = authpb.Permission.WRITE
READWRITE = authpb.Permission.READWRITE

MIN_BCRYPT_COST = 4  # golang.org/x/crypto/bcrypt MinCost
MAX_BCRYPT_COST = 31  # MaxCost
DEFAULT_BCRYPT_COST = 10  # DefaultCost, etcd's --bcrypt-cost default
MAX_PASSWORD_BYTES = 72  # bcrypt only reads this many bytes

DEFAULT_TOKEN_TTL = 300.0  # seconds; etcd's --auth-token-ttl
SIMPLE_TOKEN_LENGTH = 16  # etcd's defaultSimpleTokenLength
_TOKEN_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

DEFAULT_AUTH_RATE = 5.0  # Authenticate attempts per second per user, sustained
DEFAULT_AUTH_BURST = 5  # attempts a user may make at once
_MAX_TRACKED_USERS = 10_000  # rate-limit buckets kept before idle ones are dropped

MAX_NAME_BYTES = 511  # LMDB's key size limit: longer user/role names are refused

_REVISION = struct.Struct(">Q")
_BUCKET_END = b"\xff" * 512  # above every LMDB key (511 bytes at most)


def _root_perm() -> authpb.Permission:
    """etcd's rootPerm: read-write on every key, what RoleGet answers for "root"."""
    return authpb.Permission(permType=READWRITE, key=b"", range_end=b"\x00")


def _copy_perm(perm: authpb.Permission) -> authpb.Permission:
    return authpb.Permission(permType=perm.permType, key=perm.key, range_end=perm.range_end)


# -- errors ----------------------------------------------------------------------------


class AuthError(EtcdError):
    """Base class. Messages and codes are etcd's ``ErrGRPC*`` of api/v3rpc/rpctypes/error.go."""

    message: ClassVar[str] = "etcdserver: auth error"


class RootUserNotExistError(AuthError):
    message = "etcdserver: root user does not exist"
    grpc_code = "FAILED_PRECONDITION"


class RootRoleNotExistError(AuthError):
    message = "etcdserver: root user does not have root role"
    grpc_code = "FAILED_PRECONDITION"


class UserAlreadyExistError(AuthError):
    message = "etcdserver: user name already exists"
    grpc_code = "FAILED_PRECONDITION"


class UserEmptyError(AuthError):
    message = "etcdserver: user name is empty"
    grpc_code = "INVALID_ARGUMENT"


class UserNotFoundError(AuthError):
    message = "etcdserver: user name not found"
    grpc_code = "FAILED_PRECONDITION"


class RoleAlreadyExistError(AuthError):
    message = "etcdserver: role name already exists"
    grpc_code = "FAILED_PRECONDITION"


class RoleNotFoundError(AuthError):
    message = "etcdserver: role name not found"
    grpc_code = "FAILED_PRECONDITION"


class RoleEmptyError(AuthError):
    message = "etcdserver: role name is empty"
    grpc_code = "INVALID_ARGUMENT"


class AuthFailedError(AuthError):
    message = "etcdserver: authentication failed, invalid user ID or password"
    grpc_code = "INVALID_ARGUMENT"


class PermissionNotGivenError(AuthError):
    """RoleGrantPermission without a permission."""

    message = "etcdserver: permission not given"
    grpc_code = "INVALID_ARGUMENT"


class PermissionDeniedError(AuthError):
    message = "etcdserver: permission denied"
    grpc_code = "PERMISSION_DENIED"


class RoleNotGrantedError(AuthError):
    message = "etcdserver: role is not granted to the user"
    grpc_code = "FAILED_PRECONDITION"


class PermissionNotGrantedError(AuthError):
    message = "etcdserver: permission is not granted to the role"
    grpc_code = "FAILED_PRECONDITION"


class AuthNotEnabledError(AuthError):
    message = "etcdserver: authentication is not enabled"
    grpc_code = "FAILED_PRECONDITION"


class InvalidAuthTokenError(AuthError):
    message = "etcdserver: invalid auth token"
    grpc_code = "UNAUTHENTICATED"


class InvalidAuthMgmtError(AuthError):
    """Removing root's powers while auth is on, or an invalid permission range."""

    message = "etcdserver: invalid auth management"
    grpc_code = "INVALID_ARGUMENT"


class AuthOldRevisionError(AuthError):
    """The request was authorized against an older auth revision; the client retries."""

    message = "etcdserver: revision of auth store is old"
    grpc_code = "INVALID_ARGUMENT"


class TooManyRequestsError(AuthError):
    """For the servicer when ``attempt_allowed`` says no (etcd's ErrGRPCRequestTooManyRequests)."""

    message = "etcdserver: too many requests"
    grpc_code = "RESOURCE_EXHAUSTED"


class PasswordTooLongError(AuthError):
    """bcrypt reads 72 bytes at most; etcd passes Go's bcrypt error through (code Unknown)."""

    message = "bcrypt: password length exceeds 72 bytes"
    grpc_code = "UNKNOWN"


class CorruptAuthError(AuthError):
    """A record of the auth buckets does not decode."""

    grpc_code = "DATA_LOSS"


# -- key ranges ------------------------------------------------------------------------

# An interval [begin, end) of keys in byte order; end None: no upper bound.
_End = bytes | None


def _end_ge(a: _End, b: _End) -> bool:
    """a >= b for interval ends, None being +infinity."""
    if a is None:
        return True
    return b is not None and a >= b


def _max_end(a: _End, b: _End) -> _End:
    return a if _end_ge(a, b) else b


def _perm_interval(key: bytes, range_end: bytes) -> tuple[bytes, _End]:
    """A granted permission as an interval (etcd's rules b1-b3 of range_perm_cache.go).

    ``range_end`` empty: the key alone, [key, key + "\\0"); ``b"\\0"``: every
    key from ``key`` on; otherwise [key, range_end).
    """
    if not range_end:
        return key, key + b"\x00"
    if range_end == b"\x00":
        return key, None
    return key, range_end


def valid_permission_range(key: bytes, range_end: bytes) -> bool:
    """etcd's isValidPermissionRange: a non-empty key and a non-empty interval."""
    if not key:
        return False
    return not range_end or range_end == b"\x00" or key < range_end


class KeyRanges:
    """A union of key intervals, kept as disjoint, non-adjacent, merged intervals.

    etcd keeps an interval tree per permission type and asks whether the
    granted intervals cover the requested one; merging on insert makes that a
    single lookup: a request is covered by the union iff it lies in one merged
    interval (touching grants such as [a, b) and [b, c) merge into [a, c)).
    """

    def __init__(self) -> None:
        self._ivs = SortedDict()  # begin -> end (None: unbounded)

    def __len__(self) -> int:
        return len(self._ivs)

    def intervals(self) -> list[tuple[bytes, _End]]:
        return list(self._ivs.items())

    def add(self, begin: bytes, end: _End) -> None:
        """Add [begin, end), merging it with every interval it overlaps or touches."""
        if end is not None and end <= begin:
            return
        ivs = self._ivs
        i = ivs.bisect_right(begin)
        if i > 0:
            start, stop = ivs.peekitem(i - 1)
            if _end_ge(stop, begin):  # overlaps or touches the interval before
                begin, end = start, _max_end(stop, end)
                del ivs[start]
                i -= 1
        while i < len(ivs):
            start, stop = ivs.peekitem(i)
            if end is not None and start > end:
                break
            end = _max_end(stop, end)
            del ivs[start]
        ivs[begin] = end

    def covers(self, begin: bytes, end: _End) -> bool:
        """Whether every key of [begin, end) is in the union (end > begin)."""
        ivs = self._ivs
        i = ivs.bisect_right(begin)
        if i == 0:
            return False
        _, stop = ivs.peekitem(i - 1)
        return _end_ge(stop, end) and _end_ge(stop, begin + b"\x00")

    def contains_key(self, key: bytes) -> bool:
        return self.covers(key, key + b"\x00")


@dataclass(slots=True)
class _UserPerms:
    """etcd's unifiedRangePermissions: what a user may read and write."""

    read: KeyRanges
    write: KeyRanges


def _request_covered(ranges: KeyRanges, key: bytes, range_end: bytes) -> bool:
    """etcd's checkKeyPoint / checkKeyInterval for a request's key and range_end.

    ``range_end`` empty: the key alone; ``b"\\0"``: every key from ``key`` on
    (open-ended, as Range and Watch read it); otherwise [key, range_end), which
    must be wholly covered. An empty range (range_end <= key) needs the key.
    """
    if not range_end:
        return ranges.contains_key(key)
    if range_end == b"\x00":
        return ranges.covers(key, None)
    if range_end <= key:
        return ranges.contains_key(key)
    return ranges.covers(key, range_end)


# -- tokens and rate limiting ----------------------------------------------------------


@dataclass(slots=True)
class _Token:
    user: str
    expiry: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who sends a request and the auth revision it was authorized at (etcd's AuthInfo)."""

    username: str
    revision: int


def new_token_prefix() -> str:
    """A random simple-token prefix: 16 ASCII letters (etcd's genTokenPrefix).

    The proposer draws it and puts it in the Authenticate entry, so every
    member registers the same token ``<prefix>.<raft index>`` on apply.
    """
    return "".join(secrets.choice(_TOKEN_LETTERS) for _ in range(SIMPLE_TOKEN_LENGTH))


def token_index(token: str) -> int | None:
    """The raft index of a simple token ``<prefix>.<index>``, None if malformed.

    A member must have applied that index before looking the token up
    (etcd's isValidSimpleToken waits for it).
    """
    prefix, sep, index = token.rpartition(".")
    if not sep or not prefix or "." in prefix or not index.isdigit() or not index.isascii():
        return None
    return int(index)


def encode_hashed_password(hashed: bytes) -> str:
    """The ``hashedPassword`` field of AuthUserAdd/ChangePassword requests (base64, as etcd)."""
    return base64.b64encode(hashed).decode("ascii")


def decode_hashed_password(field: str) -> bytes:
    """The bcrypt hash from a request's ``hashedPassword``; ValueError if not base64."""
    return base64.b64decode(field.encode("ascii"), validate=True)


# -- the store -------------------------------------------------------------------------


_Record = TypeVar("_Record", authpb.User, authpb.Role)


def _load(batch: BatchTx, bucket: str, cls: type[_Record]) -> dict[str, _Record]:
    """Every record of ``bucket`` by name; ``CorruptAuthError`` for one that does not decode."""
    records: dict[str, _Record] = {}
    for key, raw in batch.range(bucket, b"", _BUCKET_END):
        record = cls()
        try:
            record.ParseFromString(raw)
            records[key.decode()] = record
        except (DecodeError, UnicodeDecodeError) as exc:
            raise CorruptAuthError(
                f"auth: bad record in {bucket} under key {key!r}: {exc}"
            ) from exc
    return records


class AuthStore:
    """Users, roles, key-range permissions, simple tokens and Authenticate rate limits."""

    def __init__(
        self,
        backend: Backend,
        *,
        bcrypt_cost: int = DEFAULT_BCRYPT_COST,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        auth_rate: float = DEFAULT_AUTH_RATE,
        auth_burst: int = DEFAULT_AUTH_BURST,
    ) -> None:
        if not MIN_BCRYPT_COST <= bcrypt_cost <= MAX_BCRYPT_COST:
            raise ValueError(
                f"bcrypt cost must be in [{MIN_BCRYPT_COST}, {MAX_BCRYPT_COST}], not {bcrypt_cost}"
            )
        if token_ttl <= 0:
            raise ValueError("token TTL must be positive")
        if auth_rate <= 0 or auth_burst < 1:
            raise ValueError("auth rate must be positive and burst at least 1")
        self._backend = backend
        self.bcrypt_cost = bcrypt_cost
        self.token_ttl = token_ttl
        self.auth_rate = auth_rate
        self.auth_burst = auth_burst
        self._mu = threading.RLock()
        self._enabled = False
        self._revision = 0
        self._users: dict[str, authpb.User] = {}
        self._roles: dict[str, authpb.Role] = {}
        self._perms: dict[str, _UserPerms] = {}  # etcd's rangePermCache, filled lazily
        self._tokens: dict[str, _Token] = {}  # member-local
        self._buckets: dict[str, _Bucket] = {}  # member-local, least recently used first
        self._local_index = 0
        self._dummy_hash: bytes | None = None
        self.reload()
        if self._revision == 0:
            # etcd's NewAuthStore: a fresh store starts at revision 1, committed at once,
            # so that revision 0 always means "no user" in permission checks.
            batch = backend.batch()
            was_active = batch.active
            self._commit_revision()
            if not was_active:
                backend.commit()

    # -- loading -----------------------------------------------------------------------
    def reload(self) -> None:
        """Reload everything from the backend (etcd's Recover).

        Done on open; again after the backend was replaced (a snapshot from the
        leader) or its batch discarded (``BackendQuotaError``). Tokens of users
        that are gone, or all tokens if auth is now off, are dropped.
        """
        batch = self._backend.batch()
        enabled = batch.get(AUTH_BUCKET, ENABLED_KEY) == AUTH_ENABLED
        raw = batch.get(AUTH_BUCKET, REVISION_KEY)
        if raw is None:
            revision = 0
        elif len(raw) == _REVISION.size:
            (revision,) = _REVISION.unpack(raw)
        else:
            raise CorruptAuthError(f"auth: bad authRevision of {len(raw)} bytes")
        users = _load(batch, USERS_BUCKET, authpb.User)
        roles = _load(batch, ROLES_BUCKET, authpb.Role)
        with self._mu:
            self._enabled = enabled
            self._revision = revision
            self._users = users
            self._roles = roles
            self._perms = {}
            if enabled:
                self._tokens = {t: v for t, v in self._tokens.items() if v.user in users}
            else:
                self._tokens = {}

    # -- state -------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def revision(self) -> int:
        """The auth revision (AuthStatus' authRevision, the requests' header auth_revision)."""
        return self._revision

    # -- apply path: enable / disable --------------------------------------------------
    def auth_enable(self) -> None:
        """Turn auth on (etcd's AuthEnable); a no-op if on.

        Needs user "root" holding role "root". As etcd, enabling does not
        bump the revision.
        """
        with self._mu:
            if self._enabled:
                return
            root = self._users.get(ROOT_USER)
            if root is None:
                raise RootUserNotExistError()
            if ROOT_ROLE not in root.roles:
                raise RootRoleNotExistError()
            self._backend.batch().put(AUTH_BUCKET, ENABLED_KEY, AUTH_ENABLED)
            self._enabled = True
            self._perms = {}
            self._tokens = {}

    def auth_disable(self) -> None:
        """Turn auth off (etcd's AuthDisable): every token is dropped; a no-op if off."""
        with self._mu:
            if not self._enabled:
                return
            self._backend.batch().put(AUTH_BUCKET, ENABLED_KEY, AUTH_DISABLED)
            self._commit_revision()
            self._enabled = False
            self._tokens = {}

    # -- apply path: users -------------------------------------------------------------
    def user_add(
        self, name: str, hashed_password: bytes = b"", *, no_password: bool = False
    ) -> None:
        """Add a user (etcd's UserAdd) with the bcrypt hash made by the proposer.

        A ``no_password`` user stores no hash and cannot Authenticate (etcd
        lets such users in by TLS common name only). A name longer than
        ``MAX_NAME_BYTES`` (LMDB's key limit; etcd has none) is
        ``InvalidAuthMgmtError``.
        """
        if not name:
            raise UserEmptyError()
        if len(name.encode()) > MAX_NAME_BYTES:
            raise InvalidAuthMgmtError()
        with self._mu:
            if name in self._users:
                raise UserAlreadyExistError()
            user = authpb.User(
                name=name.encode(),
                password=b"" if no_password else hashed_password,
                options=authpb.UserAddOptions(no_password=no_password),
            )
            self._put_user(name, user)
            self._commit_revision()

    def user_delete(self, name: str) -> None:
        """Delete a user and its tokens (etcd's UserDelete); not "root" while auth is on."""
        with self._mu:
            if self._enabled and name == ROOT_USER:
                raise InvalidAuthMgmtError()
            if name not in self._users:
                raise UserNotFoundError()
            self._backend.batch().delete(USERS_BUCKET, name.encode())
            self._commit_revision()
            del self._users[name]
            self._perms.pop(name, None)
            self.invalidate_user(name)

    def user_change_password(self, name: str, hashed_password: bytes) -> None:
        """Replace a user's hash (etcd's UserChangePassword); its tokens are dropped.

        A no-password user keeps no hash, as in etcd.
        """
        with self._mu:
            user = self._users.get(name)
            if user is None:
                raise UserNotFoundError()
            no_password = user.HasField("options") and user.options.no_password
            updated = authpb.User()
            updated.CopyFrom(user)
            updated.password = b"" if no_password else hashed_password
            self._put_user(name, updated)
            self._commit_revision()
            self._perms.pop(name, None)
            self.invalidate_user(name)

    def user_grant_role(self, user: str, role: str) -> None:
        """Grant a role (etcd's UserGrantRole); roles stay sorted; granting twice is a no-op.

        "root" may be granted without a stored "root" role (etcdctl's auth
        enable relies on it).
        """
        with self._mu:
            current = self._users.get(user)
            if current is None:
                raise UserNotFoundError()
            if role != ROOT_ROLE and role not in self._roles:
                raise RoleNotFoundError()
            if role in current.roles:
                return
            updated = authpb.User()
            updated.CopyFrom(current)
            roles = sorted([*current.roles, role])
            del updated.roles[:]
            updated.roles.extend(roles)
            self._put_user(user, updated)
            self._commit_revision()
            self._perms.pop(user, None)

    def user_revoke_role(self, name: str, role: str) -> None:
        """Revoke a role (etcd's UserRevokeRole); not "root" from "root" while auth is on."""
        with self._mu:
            if self._enabled and name == ROOT_USER and role == ROOT_ROLE:
                raise InvalidAuthMgmtError()
            current = self._users.get(name)
            if current is None:
                raise UserNotFoundError()
            if role not in current.roles:
                raise RoleNotGrantedError()
            updated = authpb.User()
            updated.CopyFrom(current)
            del updated.roles[:]
            updated.roles.extend(r for r in current.roles if r != role)
            self._put_user(name, updated)
            self._commit_revision()
            self._perms.pop(name, None)

    # -- apply path: roles -------------------------------------------------------------
    def role_add(self, name: str) -> None:
        """Add a role without permissions (etcd's RoleAdd)."""
        if not name:
            raise RoleEmptyError()
        if len(name.encode()) > MAX_NAME_BYTES:
            raise InvalidAuthMgmtError()
        with self._mu:
            if name in self._roles:
                raise RoleAlreadyExistError()
            self._put_role(name, authpb.Role(name=name.encode()))
            self._commit_revision()

    def role_delete(self, name: str) -> None:
        """Delete a role and revoke it from every user (etcd's RoleDelete).

        Not "root" while auth is on.
        """
        with self._mu:
            if self._enabled and name == ROOT_ROLE:
                raise InvalidAuthMgmtError()
            if name not in self._roles:
                raise RoleNotFoundError()
            batch = self._backend.batch()
            batch.delete(ROLES_BUCKET, name.encode())
            for user_name in sorted(self._users, key=str.encode):
                user = self._users[user_name]
                if name not in user.roles:
                    continue
                updated = authpb.User()
                updated.CopyFrom(user)
                del updated.roles[:]
                updated.roles.extend(r for r in user.roles if r != name)
                self._put_user(user_name, updated)
            self._commit_revision()
            del self._roles[name]
            self._perms = {}

    def role_grant_permission(
        self, role: str, perm_type: int, key: bytes, range_end: bytes = b""
    ) -> None:
        """Grant READ, WRITE or READWRITE on a key range (etcd's RoleGrantPermission).

        ``range_end``: empty for ``key`` alone, ``b"\\0"`` for every key from
        ``key`` on, else the exclusive end. A grant with the same key and
        range_end replaces the type of the existing one; otherwise it is added
        and the list kept sorted by (key, range_end). An empty key or an empty
        range is ``InvalidAuthMgmtError``, as an unknown type. A request without
        a permission must be answered ``PermissionNotGivenError``.
        """
        if perm_type not in (READ, WRITE, READWRITE) or not valid_permission_range(key, range_end):
            raise InvalidAuthMgmtError()
        ptype = authpb.Permission.Type.ValueType(perm_type)
        with self._mu:
            current = self._roles.get(role)
            if current is None:
                raise RoleNotFoundError()
            perms = [_copy_perm(p) for p in current.keyPermission]
            for perm in perms:
                if perm.key == key and perm.range_end == range_end:
                    perm.permType = ptype
                    break
            else:
                perms.append(authpb.Permission(permType=ptype, key=key, range_end=range_end))
                perms.sort(key=lambda p: (p.key, p.range_end))
            self._put_role(role, authpb.Role(name=current.name, keyPermission=perms))
            self._commit_revision()
            self._perms = {}

    def role_revoke_permission(self, role: str, key: bytes, range_end: bytes = b"") -> None:
        """Remove the grant on exactly (key, range_end) (etcd's RoleRevokePermission)."""
        with self._mu:
            current = self._roles.get(role)
            if current is None:
                raise RoleNotFoundError()
            kept = [p for p in current.keyPermission if (p.key, p.range_end) != (key, range_end)]
            if len(kept) == len(current.keyPermission):
                raise PermissionNotGrantedError()
            self._put_role(role, authpb.Role(name=current.name, keyPermission=kept))
            self._commit_revision()
            self._perms = {}

    # -- apply path: authenticate ------------------------------------------------------
    def authenticate(self, name: str, token_prefix: str, index: int, now: float) -> str:
        """Apply an Authenticate entry: register token ``<prefix>.<index>`` for ``name``.

        etcd's Authenticate: the proposer checked the password and drew the
        prefix; every member applies the entry, so the token is known cluster
        wide (each member keeps its own TTL). Auth must be on and the user
        must exist and have a password.
        """
        with self._mu:
            if not self._enabled:
                raise AuthNotEnabledError()
            user = self._users.get(name)
            if user is None or (user.HasField("options") and user.options.no_password):
                raise AuthFailedError()
            return self.assign_token(name, now, prefix=token_prefix, index=index)

    # -- reads -------------------------------------------------------------------------
    def user_get(self, name: str) -> list[str]:
        """A user's roles, sorted (etcd's UserGet)."""
        with self._mu:
            user = self._users.get(name)
            if user is None:
                raise UserNotFoundError()
            return list(user.roles)

    def user_list(self) -> list[str]:
        """Every user name in byte order (etcd's UserList)."""
        with self._mu:
            return sorted(self._users, key=str.encode)

    def role_get(self, name: str) -> list[authpb.Permission]:
        """A role's permissions (etcd's RoleGet); "root" answers read-write on every key."""
        with self._mu:
            role = self._roles.get(name)
            if role is None:
                raise RoleNotFoundError()
            if name == ROOT_ROLE:
                return [_root_perm()]
            return [_copy_perm(p) for p in role.keyPermission]

    def role_list(self) -> list[str]:
        """Every role name in byte order (etcd's RoleList)."""
        with self._mu:
            return sorted(self._roles, key=str.encode)

    def has_role(self, user: str, role: str) -> bool:
        with self._mu:
            record = self._users.get(user)
            return record is not None and role in record.roles

    # -- passwords (servicers, off the event loop: bcrypt is slow) ---------------------
    def hash_password(self, password: str | bytes) -> bytes:
        """bcrypt hash of ``password`` at this store's cost, ``$2a$`` as Go's bcrypt writes.

        Done by the proposer before UserAdd / UserChangePassword (etcd 3.5),
        so apply stays deterministic and cheap. Raises ``PasswordTooLongError``
        beyond 72 bytes.
        """
        secret = password.encode() if isinstance(password, str) else password
        if len(secret) > MAX_PASSWORD_BYTES:
            raise PasswordTooLongError()
        return bcrypt.hashpw(secret, bcrypt.gensalt(self.bcrypt_cost, prefix=b"2a"))

    def check_password(self, name: str, password: str | bytes) -> bool:
        """Whether ``password`` is ``name``'s (the check of etcd's CheckPassword).

        Constant time in the password (bcrypt.checkpw); an unknown or
        no-password user costs a bcrypt check too, so timing does not reveal
        which names exist. Read ``revision`` before calling: if it changed by
        the time the Authenticate entry is applied, check again (etcd retries).
        """
        secret = password.encode() if isinstance(password, str) else password
        with self._mu:
            user = self._users.get(name)
            hashed = b""
            if user is not None and not (user.HasField("options") and user.options.no_password):
                hashed = user.password
        if len(secret) > MAX_PASSWORD_BYTES:
            return False
        if not hashed:
            bcrypt.checkpw(secret, self._dummy())
            return False
        try:
            return bcrypt.checkpw(secret, hashed)
        except ValueError:  # not a bcrypt hash
            return False

    def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            self._dummy_hash = bcrypt.hashpw(b"", bcrypt.gensalt(self.bcrypt_cost, prefix=b"2a"))
        return self._dummy_hash

    def attempt_allowed(self, user: str, now: float) -> bool:
        """Take one Authenticate attempt from ``user``'s token bucket; False when exhausted.

        ``auth_burst`` attempts at once, refilled at ``auth_rate`` per second.
        The servicer answers ``TooManyRequestsError`` on False, before any
        bcrypt work. Member-local; idle buckets are forgotten.
        """
        with self._mu:
            bucket = self._buckets.pop(user, None)
            if bucket is None:
                bucket = _Bucket(float(self.auth_burst), now)
            elapsed = max(0.0, now - bucket.last)
            bucket.tokens = min(float(self.auth_burst), bucket.tokens + elapsed * self.auth_rate)
            bucket.last = max(now, bucket.last)
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            self._buckets[user] = bucket  # most recently used last
            if len(self._buckets) > _MAX_TRACKED_USERS:
                self._forget_buckets(now)
            return allowed

    def _forget_buckets(self, now: float) -> None:
        refill = self.auth_burst / self.auth_rate
        self._buckets = {u: b for u, b in self._buckets.items() if now - b.last < refill}
        while len(self._buckets) > _MAX_TRACKED_USERS:
            del self._buckets[next(iter(self._buckets))]

    # -- tokens (member-local) ---------------------------------------------------------
    def assign_token(
        self, user: str, now: float, *, prefix: str | None = None, index: int | None = None
    ) -> str:
        """Register a simple token ``<prefix>.<index>`` for ``user``, valid ``token_ttl``.

        Without ``prefix`` a random one is drawn, without ``index`` a local
        counter is used (a token only this member knows). ``authenticate`` is
        the apply-path caller. Raises ``AuthNotEnabledError`` with auth off
        and ValueError for a token already assigned (etcd panics).
        """
        if prefix is None:
            prefix = new_token_prefix()
        with self._mu:
            if not self._enabled:
                raise AuthNotEnabledError()
            if index is None:
                self._local_index += 1
                index = self._local_index
            token = f"{prefix}.{index}"
            if token in self._tokens:
                raise ValueError("auth: simple token already assigned")
            self._tokens[token] = _Token(user, now + self.token_ttl)
            return token

    def user_of_token(self, token: str, now: float) -> str | None:
        """The user of a live token, whose TTL restarts from ``now``; None if unknown or expired."""
        with self._mu:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if now > entry.expiry:
                del self._tokens[token]
                return None
            entry.expiry = now + self.token_ttl
            return entry.user

    def auth_info(self, token: str, now: float) -> AuthInfo:
        """The request's ``AuthInfo`` (etcd's AuthInfoFromCtx); InvalidAuthTokenError if dead."""
        with self._mu:
            user = self.user_of_token(token, now)
            if user is None:
                raise InvalidAuthTokenError()
            return AuthInfo(user, self._revision)

    def invalidate_user(self, user: str) -> None:
        """Drop every token of ``user`` (done by user_delete and user_change_password)."""
        with self._mu:
            self._tokens = {t: v for t, v in self._tokens.items() if v.user != user}

    def purge_expired_tokens(self, now: float) -> int:
        """Forget tokens past their TTL (etcd's keeper does it every second); how many."""
        with self._mu:
            live = {t: v for t, v in self._tokens.items() if now <= v.expiry}
            dropped = len(self._tokens) - len(live)
            self._tokens = live
            return dropped

    def token_count(self) -> int:
        return len(self._tokens)

    # -- permission checks -------------------------------------------------------------
    def is_range_permitted(self, user: str, key: bytes, range_end: bytes = b"") -> bool:
        """May ``user`` read [key, range_end)? True when auth is off or for the root role."""
        return self._permitted(user, key, range_end, write=False)

    def is_put_permitted(self, user: str, key: bytes) -> bool:
        """May ``user`` write ``key``?"""
        return self._permitted(user, key, b"", write=True)

    def is_delete_range_permitted(self, user: str, key: bytes, range_end: bytes = b"") -> bool:
        """May ``user`` delete [key, range_end)? Needs write on the whole range."""
        return self._permitted(user, key, range_end, write=True)

    def is_admin(self, user: str) -> bool:
        """May ``user`` manage auth, membership and maintenance? The root role, or auth off."""
        with self._mu:
            if not self._enabled:
                return True
            record = self._users.get(user)
            return record is not None and ROOT_ROLE in record.roles

    def check_range(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        """etcd's IsRangePermitted: raises UserEmpty, AuthOldRevision or PermissionDenied."""
        self._check_op(info, key, range_end, write=False)

    def check_put(self, info: AuthInfo | None, key: bytes) -> None:
        """etcd's IsPutPermitted."""
        self._check_op(info, key, b"", write=True)

    def check_delete_range(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        """etcd's IsDeleteRangePermitted."""
        self._check_op(info, key, range_end, write=True)

    def check_admin(self, info: AuthInfo | None) -> None:
        """etcd's IsAdminPermitted: raises UserEmpty, UserNotFound or PermissionDenied."""
        with self._mu:
            if not self._enabled:
                return
            if info is None or not info.username:
                raise UserEmptyError()
            record = self._users.get(info.username)
            if record is None:
                raise UserNotFoundError()
            if ROOT_ROLE not in record.roles:
                raise PermissionDeniedError()

    def _check_op(
        self, info: AuthInfo | None, key: bytes, range_end: bytes, *, write: bool
    ) -> None:
        """etcd's isOpPermitted: no user (revision 0), a stale revision, then the ranges."""
        with self._mu:
            if not self._enabled:
                return
            if info is None or not info.username or info.revision == 0:
                raise UserEmptyError()
            if info.revision < self._revision:
                raise AuthOldRevisionError()
            if not self._permitted(info.username, key, range_end, write=write):
                raise PermissionDeniedError()

    def _permitted(self, user: str, key: bytes, range_end: bytes, *, write: bool) -> bool:
        with self._mu:
            if not self._enabled:
                return True
            record = self._users.get(user)
            if record is None:
                return False
            if ROOT_ROLE in record.roles:
                return True
            perms = self._perms.get(user)
            if perms is None:
                perms = self._perms[user] = self._merged_perms(record)
            return _request_covered(perms.write if write else perms.read, key, range_end)

    def _merged_perms(self, user: authpb.User) -> _UserPerms:
        """etcd's getMergedPerms: the union of the user's roles' grants per type."""
        read, write = KeyRanges(), KeyRanges()
        for role_name in user.roles:
            role = self._roles.get(role_name)
            if role is None:
                continue
            for perm in role.keyPermission:
                begin, end = _perm_interval(perm.key, perm.range_end)
                if perm.permType in (READ, READWRITE):
                    read.add(begin, end)
                if perm.permType in (WRITE, READWRITE):
                    write.add(begin, end)
        return _UserPerms(read, write)

    # -- internals ---------------------------------------------------------------------
    def _put_user(self, name: str, user: authpb.User) -> None:
        self._backend.batch().put(
            USERS_BUCKET, name.encode(), user.SerializeToString(deterministic=True)
        )
        self._users[name] = user

    def _put_role(self, name: str, role: authpb.Role) -> None:
        self._backend.batch().put(
            ROLES_BUCKET, name.encode(), role.SerializeToString(deterministic=True)
        )
        self._roles[name] = role

    def _commit_revision(self) -> None:
        """etcd's commitRevision: revision + 1, written into the batch."""
        self._revision += 1
        self._backend.batch().put(AUTH_BUCKET, REVISION_KEY, _REVISION.pack(self._revision))
