"""The auth store: etcd's users, roles, key-range permissions, simple tokens, rate limits."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cluster.auth as auth_mod
from cluster.auth import (
    AUTH_BUCKET,
    ENABLED_KEY,
    READ,
    READWRITE,
    REVISION_KEY,
    ROLES_BUCKET,
    USERS_BUCKET,
    WRITE,
    AuthError,
    AuthFailedError,
    AuthInfo,
    AuthNotEnabledError,
    AuthOldRevisionError,
    AuthStore,
    CorruptAuthError,
    InvalidAuthMgmtError,
    InvalidAuthTokenError,
    KeyRanges,
    PasswordTooLongError,
    PermissionDeniedError,
    PermissionNotGivenError,
    PermissionNotGrantedError,
    RoleAlreadyExistError,
    RoleEmptyError,
    RoleNotFoundError,
    RoleNotGrantedError,
    RootRoleNotExistError,
    RootUserNotExistError,
    TooManyRequestsError,
    UserAlreadyExistError,
    UserEmptyError,
    UserNotFoundError,
    decode_hashed_password,
    encode_hashed_password,
    new_token_prefix,
    token_index,
    valid_permission_range,
)
from cluster.proto.authpb import auth_pb2 as authpb
from cluster.storage.backend import Backend

QUOTA = 64 * 1024 * 1024
COST = 4  # bcrypt's minimum: fast tests
T0 = 1000.0  # an arbitrary monotonic clock reading


class Member:
    """A backend and an auth store over it; ``restart`` closes the backend and reopens both."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.backend = Backend(path, quota_bytes=QUOTA)
        self.store = AuthStore(self.backend, bcrypt_cost=COST)

    def restart(self) -> AuthStore:
        self.backend.close()  # commits the batch, as on a clean shutdown
        self.backend = Backend(self.path, quota_bytes=QUOTA)
        self.store = AuthStore(self.backend, bcrypt_cost=COST)
        return self.store

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(str(tmp_path / "member" / "snap" / "db"))
    yield m
    m.close()


@pytest.fixture
def store(member: Member) -> AuthStore:
    return member.store


def add_root(store: AuthStore, password: str = "rootpw") -> None:
    store.user_add("root", store.hash_password(password))
    store.user_grant_role("root", "root")


def enabled_store(store: AuthStore) -> AuthStore:
    add_root(store)
    store.auth_enable()
    return store


def info(store: AuthStore, user: str) -> AuthInfo:
    return AuthInfo(user, store.revision)


# -- layout and persistence ----------------------------------------------------------------


def test_fresh_store_starts_at_revision_one_committed(member: Member) -> None:
    assert member.store.revision == 1
    assert not member.store.enabled
    assert not member.backend.batch().active  # committed at once, as etcd's ForceCommit
    assert member.backend.get(AUTH_BUCKET, REVISION_KEY) == struct.pack(">Q", 1)


def test_state_is_persisted_in_etcds_layout_and_survives_reopen(member: Member) -> None:
    store = member.store
    store.role_add("writer")
    store.role_add("reader")
    store.role_grant_permission("reader", READ, b"/a/", b"/a0")
    store.role_grant_permission("writer", READWRITE, b"k")
    store.user_add("bob", store.hash_password("pw"))
    store.user_grant_role("bob", "writer")
    store.user_grant_role("bob", "reader")
    store.user_add("tls", no_password=True)
    add_root(store)
    store.auth_enable()
    rev = store.revision

    store = member.restart()
    assert store.enabled and store.revision == rev
    assert store.user_list() == ["bob", "root", "tls"]
    assert store.role_list() == ["reader", "writer"]
    assert store.user_get("bob") == ["reader", "writer"]  # sorted
    assert store.check_password("bob", "pw")
    assert store.is_range_permitted("bob", b"/a/x", b"/a/y")
    assert store.is_put_permitted("bob", b"k")

    backend = member.backend
    assert backend.get(AUTH_BUCKET, ENABLED_KEY) == b"\x01"
    assert backend.get(AUTH_BUCKET, REVISION_KEY) == struct.pack(">Q", rev)
    raw_user = backend.get(USERS_BUCKET, b"bob")
    assert raw_user is not None
    user = authpb.User.FromString(raw_user)
    assert user.name == b"bob" and list(user.roles) == ["reader", "writer"]
    assert bcrypt.checkpw(b"pw", user.password) and not user.options.no_password
    raw_tls = backend.get(USERS_BUCKET, b"tls")
    assert raw_tls is not None
    tls = authpb.User.FromString(raw_tls)
    assert tls.options.no_password and tls.password == b""
    raw_role = backend.get(ROLES_BUCKET, b"reader")
    assert raw_role is not None
    role = authpb.Role.FromString(raw_role)
    assert role.name == b"reader"
    assert [(p.permType, p.key, p.range_end) for p in role.keyPermission] == [
        (READ, b"/a/", b"/a0")
    ]

    store.auth_disable()
    store = member.restart()
    assert not store.enabled
    assert member.backend.get(AUTH_BUCKET, ENABLED_KEY) == b"\x00"


def test_reload_forgets_a_discarded_batch(member: Member) -> None:
    store = member.store
    store.user_add("kept", b"")
    member.backend.commit()
    store.user_add("lost", b"")
    store.role_add("lost")
    member.backend.batch().abort()  # what a BackendQuotaError leaves behind
    store.reload()
    assert store.user_list() == ["kept"]
    assert store.role_list() == []
    assert store.revision == 2


def test_corrupt_record_is_reported(member: Member) -> None:
    member.backend.batch().put(USERS_BUCKET, b"bad", b"\xff\xff\xff")
    with pytest.raises(CorruptAuthError):
        member.store.reload()


def test_no_clear_password_anywhere_in_the_backend(member: Member) -> None:
    store = member.store
    secret = "correct-horse-battery-staple"
    store.user_add("alice", store.hash_password(secret))
    store.user_change_password("alice", store.hash_password(secret + "2"))
    add_root(store, secret + "root")
    store.auth_enable()
    member.backend.commit()
    member.restart()
    member.close()
    data = Path(member.path).read_bytes()
    assert b"alice" in data  # the user is there ...
    assert secret.encode() not in data  # ... but none of the passwords
    assert (secret + "2").encode() not in data
    assert (secret + "root").encode() not in data
    member.backend = Backend(member.path, quota_bytes=QUOTA)  # for the fixture's close


# -- revisions -----------------------------------------------------------------------------


def test_each_change_bumps_the_revision_and_failures_or_no_ops_do_not(store: AuthStore) -> None:
    steps: list[Callable[[], None]] = [
        lambda: store.user_add("u", store.hash_password("p")),
        lambda: store.role_add("r"),
        lambda: store.user_grant_role("u", "r"),
        lambda: store.role_grant_permission("r", READ, b"a"),
        lambda: store.role_revoke_permission("r", b"a"),
        lambda: store.user_change_password("u", store.hash_password("q")),
        lambda: store.user_revoke_role("u", "r"),
        lambda: store.role_delete("r"),
        lambda: store.user_delete("u"),
    ]
    for step in steps:
        before = store.revision
        step()
        assert store.revision == before + 1
    rev = store.revision
    with pytest.raises(UserNotFoundError):
        store.user_delete("u")
    store.user_add("u", b"")
    store.role_add("r")
    store.user_grant_role("u", "r")
    rev = store.revision
    store.user_grant_role("u", "r")  # already granted: etcd ignores it
    assert store.revision == rev


def test_enable_does_not_bump_the_revision_but_disable_does(store: AuthStore) -> None:
    add_root(store)
    rev = store.revision
    store.auth_enable()
    assert store.enabled and store.revision == rev
    store.auth_enable()  # already on: no-op
    assert store.revision == rev
    store.auth_disable()
    assert not store.enabled and store.revision == rev + 1
    store.auth_disable()  # already off: no-op
    assert store.revision == rev + 1


# -- errors --------------------------------------------------------------------------------


ERRORS: list[tuple[type[AuthError], str, str]] = [
    (RootUserNotExistError, "etcdserver: root user does not exist", "FAILED_PRECONDITION"),
    (RootRoleNotExistError, "etcdserver: root user does not have root role", "FAILED_PRECONDITION"),
    (UserAlreadyExistError, "etcdserver: user name already exists", "FAILED_PRECONDITION"),
    (UserEmptyError, "etcdserver: user name is empty", "INVALID_ARGUMENT"),
    (UserNotFoundError, "etcdserver: user name not found", "FAILED_PRECONDITION"),
    (RoleAlreadyExistError, "etcdserver: role name already exists", "FAILED_PRECONDITION"),
    (RoleNotFoundError, "etcdserver: role name not found", "FAILED_PRECONDITION"),
    (RoleEmptyError, "etcdserver: role name is empty", "INVALID_ARGUMENT"),
    (
        AuthFailedError,
        "etcdserver: authentication failed, invalid user ID or password",
        "INVALID_ARGUMENT",
    ),
    (PermissionNotGivenError, "etcdserver: permission not given", "INVALID_ARGUMENT"),
    (PermissionDeniedError, "etcdserver: permission denied", "PERMISSION_DENIED"),
    (RoleNotGrantedError, "etcdserver: role is not granted to the user", "FAILED_PRECONDITION"),
    (
        PermissionNotGrantedError,
        "etcdserver: permission is not granted to the role",
        "FAILED_PRECONDITION",
    ),
    (AuthNotEnabledError, "etcdserver: authentication is not enabled", "FAILED_PRECONDITION"),
    (InvalidAuthTokenError, "etcdserver: invalid auth token", "UNAUTHENTICATED"),
    (InvalidAuthMgmtError, "etcdserver: invalid auth management", "INVALID_ARGUMENT"),
    (AuthOldRevisionError, "etcdserver: revision of auth store is old", "INVALID_ARGUMENT"),
    (TooManyRequestsError, "etcdserver: too many requests", "RESOURCE_EXHAUSTED"),
]


@pytest.mark.parametrize(
    ("cls", "message", "code"), ERRORS, ids=lambda v: getattr(v, "__name__", "")
)
def test_errors_carry_etcds_message_and_grpc_code(
    cls: type[AuthError], message: str, code: str
) -> None:
    err = cls()
    assert str(err) == err.grpc_message == message
    assert err.grpc_code == code


def test_user_errors(store: AuthStore) -> None:
    with pytest.raises(UserEmptyError):
        store.user_add("", b"")
    store.user_add("u", b"")
    with pytest.raises(UserAlreadyExistError):
        store.user_add("u", b"")
    with pytest.raises(InvalidAuthMgmtError):
        store.user_add("x" * 512, b"")  # beyond LMDB's key size
    for call in (
        lambda: store.user_delete("nobody"),
        lambda: store.user_change_password("nobody", b""),
        lambda: store.user_grant_role("nobody", "root"),
        lambda: store.user_revoke_role("nobody", "r"),
        lambda: store.user_get("nobody"),
    ):
        with pytest.raises(UserNotFoundError):
            call()
    with pytest.raises(RoleNotFoundError):
        store.user_grant_role("u", "missing")
    with pytest.raises(RoleNotGrantedError):
        store.user_revoke_role("u", "root")


def test_role_errors(store: AuthStore) -> None:
    with pytest.raises(RoleEmptyError):
        store.role_add("")
    store.role_add("r")
    with pytest.raises(RoleAlreadyExistError):
        store.role_add("r")
    for call in (
        lambda: store.role_delete("nobody"),
        lambda: store.role_get("nobody"),
        lambda: store.role_grant_permission("nobody", READ, b"a"),
        lambda: store.role_revoke_permission("nobody", b"a"),
    ):
        with pytest.raises(RoleNotFoundError):
            call()
    with pytest.raises(PermissionNotGrantedError):
        store.role_revoke_permission("r", b"a")
    store.role_grant_permission("r", READ, b"a", b"c")
    with pytest.raises(PermissionNotGrantedError):
        store.role_revoke_permission("r", b"a")  # same key, other range_end
    for key, end in ((b"", b""), (b"", b"\x00"), (b"b", b"a"), (b"b", b"b")):
        with pytest.raises(InvalidAuthMgmtError):
            store.role_grant_permission("r", READ, key, end)
    with pytest.raises(InvalidAuthMgmtError):
        store.role_grant_permission("r", 7, b"a")


def test_valid_permission_range() -> None:
    assert valid_permission_range(b"a", b"")
    assert valid_permission_range(b"a", b"\x00")
    assert valid_permission_range(b"\x00", b"\x00")
    assert valid_permission_range(b"a", b"b")
    assert not valid_permission_range(b"", b"")
    assert not valid_permission_range(b"b", b"a")


# -- enable / disable rules ----------------------------------------------------------------


def test_enable_needs_root_user_with_root_role(store: AuthStore) -> None:
    with pytest.raises(RootUserNotExistError):
        store.auth_enable()
    store.user_add("root", store.hash_password("pw"))
    with pytest.raises(RootRoleNotExistError):
        store.auth_enable()
    assert not store.enabled
    store.user_grant_role("root", "root")  # granted though no "root" role is stored
    store.auth_enable()
    assert store.enabled


def test_root_is_protected_only_while_auth_is_enabled(store: AuthStore) -> None:
    add_root(store)
    store.role_add("root")
    store.auth_enable()
    with pytest.raises(InvalidAuthMgmtError):
        store.user_delete("root")
    with pytest.raises(InvalidAuthMgmtError):
        store.user_revoke_role("root", "root")
    with pytest.raises(InvalidAuthMgmtError):
        store.role_delete("root")
    store.auth_disable()
    store.user_revoke_role("root", "root")
    store.role_delete("root")
    store.user_delete("root")
    assert store.user_list() == [] and store.role_list() == []


def test_role_delete_revokes_it_from_every_user(store: AuthStore) -> None:
    store.role_add("r")
    store.role_add("s")
    for name in ("a", "b", "c"):
        store.user_add(name, b"")
    store.user_grant_role("a", "r")
    store.user_grant_role("b", "r")
    store.user_grant_role("b", "s")
    store.role_delete("r")
    assert store.user_get("a") == []
    assert store.user_get("b") == ["s"]
    assert store.user_get("c") == []


def test_reads(store: AuthStore) -> None:
    store.role_add("root")
    store.role_add("b")
    store.role_add("a")
    store.role_grant_permission("b", READ, b"z")
    store.role_grant_permission("b", WRITE, b"a", b"c")
    store.role_grant_permission("b", READ, b"a")
    store.role_grant_permission("b", READWRITE, b"z")  # same range: replaces the type
    assert store.role_list() == ["a", "b", "root"]
    perms = store.role_get("b")
    assert [(p.permType, p.key, p.range_end) for p in perms] == [
        (READ, b"a", b""),
        (WRITE, b"a", b"c"),
        (READWRITE, b"z", b""),
    ]
    perms[0].key = b"mutated"  # a copy
    assert store.role_get("b")[0].key == b"a"
    (root,) = store.role_get("root")
    assert (root.permType, root.key, root.range_end) == (READWRITE, b"", b"\x00")
    store.user_add("bob", b"")
    store.user_grant_role("bob", "b")
    store.user_grant_role("bob", "a")
    assert store.user_get("bob") == ["a", "b"]
    assert store.has_role("bob", "a") and not store.has_role("bob", "root")
    assert not store.has_role("nobody", "a")


# -- permissions ---------------------------------------------------------------------------


def user_with(store: AuthStore, *grants: tuple[int, bytes, bytes]) -> str:
    """Enable auth and add user "u" with one role holding ``grants``."""
    if not store.enabled:
        enabled_store(store)
    store.role_add("r")
    for perm_type, key, end in grants:
        store.role_grant_permission("r", perm_type, key, end)
    store.user_add("u", store.hash_password("pw"))
    store.user_grant_role("u", "r")
    return "u"


def test_single_key_grant(store: AuthStore) -> None:
    u = user_with(store, (READ, b"foo", b""))
    assert store.is_range_permitted(u, b"foo")
    assert store.is_range_permitted(u, b"foo", b"foo\x00")  # the same single key as a range
    assert not store.is_range_permitted(u, b"foo", b"fop")
    assert not store.is_range_permitted(u, b"fo")
    assert not store.is_range_permitted(u, b"foo\x00")
    assert not store.is_put_permitted(u, b"foo")  # read only


def test_prefix_grant(store: AuthStore) -> None:
    u = user_with(store, (READWRITE, b"/app/", b"/app0"))  # etcdctl --prefix /app/
    assert store.is_put_permitted(u, b"/app/")
    assert store.is_put_permitted(u, b"/app/x/y")
    assert store.is_range_permitted(u, b"/app/", b"/app0")
    assert store.is_range_permitted(u, b"/app/a", b"/app/b")
    assert store.is_delete_range_permitted(u, b"/app/", b"/app0")
    assert not store.is_put_permitted(u, b"/app0")
    assert not store.is_put_permitted(u, b"/ap")
    assert not store.is_range_permitted(u, b"/app/", b"/app1")  # reaches past the grant
    assert not store.is_range_permitted(u, b"/ap", b"/app0")  # starts before it
    assert not store.is_range_permitted(u, b"/app/", b"\x00")  # open-ended


def test_from_key_grant(store: AuthStore) -> None:
    u = user_with(store, (READ, b"m", b"\x00"))
    assert store.is_range_permitted(u, b"m")
    assert store.is_range_permitted(u, b"\xff\xff")
    assert store.is_range_permitted(u, b"m", b"\x00")
    assert store.is_range_permitted(u, b"x", b"\x00")
    assert store.is_range_permitted(u, b"m", b"z")
    assert not store.is_range_permitted(u, b"l", b"\x00")
    assert not store.is_range_permitted(u, b"a", b"n")


def test_whole_keyspace_grant(store: AuthStore) -> None:
    u = user_with(store, (READ, b"\x00", b"\x00"))  # etcdctl's grant on "" --prefix
    assert store.is_range_permitted(u, b"\x00", b"\x00")  # etcdctl get "" --prefix
    assert store.is_range_permitted(u, b"anything")


def test_partial_coverage_is_denied_and_adjacent_grants_merge(store: AuthStore) -> None:
    u = user_with(store, (READ, b"a", b"c"), (READ, b"d", b"f"))
    assert store.is_range_permitted(u, b"a", b"c")
    assert not store.is_range_permitted(u, b"a", b"f")  # the gap [c, d)
    assert not store.is_range_permitted(u, b"b", b"e")
    store.role_grant_permission("r", READ, b"c", b"d")  # fills the gap, touching both
    assert store.is_range_permitted(u, b"a", b"f")
    assert store.is_range_permitted(u, b"b", b"e")
    assert not store.is_range_permitted(u, b"a", b"f\x00")


def test_single_key_grants_touch_ranges(store: AuthStore) -> None:
    u = user_with(store, (READ, b"a", b""), (READ, b"a\x00", b"b"))
    assert store.is_range_permitted(u, b"a", b"b")  # [a, a\0) + [a\0, b)


def test_grants_merge_across_roles_and_types(store: AuthStore) -> None:
    u = user_with(store, (READ, b"a", b"c"), (WRITE, b"c", b"e"))
    store.role_add("r2")
    store.role_grant_permission("r2", READWRITE, b"c", b"e")
    assert not store.is_range_permitted(u, b"a", b"e")
    store.user_grant_role(u, "r2")  # cache invalidated
    assert store.is_range_permitted(u, b"a", b"e")
    assert not store.is_delete_range_permitted(u, b"a", b"e")  # writes only on [c, e)
    assert store.is_delete_range_permitted(u, b"c", b"e")


def test_revocations_take_effect(store: AuthStore) -> None:
    u = user_with(store, (READWRITE, b"k", b""), (READ, b"p/", b"p0"))
    assert store.is_put_permitted(u, b"k")
    store.role_revoke_permission("r", b"k")
    assert not store.is_put_permitted(u, b"k")
    assert store.is_range_permitted(u, b"p/x")
    store.role_grant_permission("r", WRITE, b"p/", b"p0")  # replaces READ on the same range
    assert not store.is_range_permitted(u, b"p/x")
    assert store.is_put_permitted(u, b"p/x")
    store.user_revoke_role(u, "r")
    assert not store.is_put_permitted(u, b"p/x")
    store.user_grant_role(u, "r")
    assert store.is_put_permitted(u, b"p/x")
    store.role_delete("r")
    assert not store.is_put_permitted(u, b"p/x")


def test_root_role_has_every_permission(store: AuthStore) -> None:
    enabled_store(store)
    store.user_add("admin", b"")
    store.user_grant_role("admin", "root")
    for user in ("root", "admin"):
        assert store.is_range_permitted(user, b"\x00", b"\x00")
        assert store.is_put_permitted(user, b"anything")
        assert store.is_delete_range_permitted(user, b"a", b"z")
        assert store.is_admin(user)
        store.check_admin(info(store, user))


def test_unknown_or_roleless_users_are_denied(store: AuthStore) -> None:
    enabled_store(store)
    store.user_add("plain", b"")
    for user in ("plain", "nobody", ""):
        assert not store.is_range_permitted(user, b"a")
        assert not store.is_put_permitted(user, b"a")
        assert not store.is_admin(user)


def test_everything_is_permitted_while_auth_is_disabled(store: AuthStore) -> None:
    assert store.is_range_permitted("nobody", b"a", b"\x00")
    assert store.is_put_permitted("", b"a")
    assert store.is_admin("nobody")
    store.check_put(None, b"a")
    store.check_admin(None)


def test_checks_raise_etcds_errors(store: AuthStore) -> None:
    u = user_with(store, (READ, b"a", b""))
    store.check_range(info(store, u), b"a")
    with pytest.raises(PermissionDeniedError):
        store.check_put(info(store, u), b"a")
    with pytest.raises(PermissionDeniedError):
        store.check_delete_range(info(store, u), b"a", b"b")
    with pytest.raises(PermissionDeniedError):
        store.check_range(info(store, "nobody"), b"a")
    with pytest.raises(UserEmptyError):
        store.check_range(None, b"a")
    with pytest.raises(UserEmptyError):
        store.check_range(AuthInfo(u, 0), b"a")
    stale = info(store, u)
    store.role_add("other")  # the auth revision moves on
    with pytest.raises(AuthOldRevisionError):
        store.check_range(stale, b"a")
    with pytest.raises(UserEmptyError):
        store.check_admin(None)
    with pytest.raises(UserNotFoundError):
        store.check_admin(info(store, "nobody"))
    with pytest.raises(PermissionDeniedError):
        store.check_admin(info(store, u))


# -- the interval set ----------------------------------------------------------------------


def test_key_ranges_merge() -> None:
    ranges = KeyRanges()
    ranges.add(b"d", b"f")
    ranges.add(b"a", b"b")
    ranges.add(b"x", None)
    assert ranges.intervals() == [(b"a", b"b"), (b"d", b"f"), (b"x", None)]
    ranges.add(b"b", b"d")  # touches both neighbours
    assert ranges.intervals() == [(b"a", b"f"), (b"x", None)]
    ranges.add(b"e", b"z")  # overlaps into the unbounded one
    assert ranges.intervals() == [(b"a", None)]
    ranges.add(b"c", b"c")  # empty: ignored
    assert len(ranges) == 1


def _reference_covers(intervals: list[tuple[bytes, bytes | None]], lo: bytes, hi: bytes) -> bool:
    """Sweep: extend the covered prefix from ``lo`` until no interval extends it."""
    reach: bytes | None = lo
    progress = True
    while progress and reach is not None and reach < hi:
        progress = False
        for begin, end in intervals:
            if begin <= reach and (end is None or end > reach):
                reach = end
                progress = True
                if reach is None:
                    break
    return reach is None or reach >= hi


_KEYS = st.binary(min_size=1, max_size=3).map(lambda b: bytes(c % 4 + 97 for c in b))


@settings(max_examples=300, deadline=None)
@given(
    grants=st.lists(st.tuples(_KEYS, st.one_of(st.none(), _KEYS)), max_size=8),
    lo=_KEYS,
    hi=_KEYS,
)
def test_key_ranges_cover_exactly_the_union(
    grants: list[tuple[bytes, bytes | None]], lo: bytes, hi: bytes
) -> None:
    ranges = KeyRanges()
    for begin, end in grants:
        ranges.add(begin, end)
    intervals = [(b, e) for b, e in grants if e is None or e > b]
    if lo < hi:
        assert ranges.covers(lo, hi) == _reference_covers(intervals, lo, hi)
    assert ranges.contains_key(lo) == _reference_covers(intervals, lo, lo + b"\x00")
    merged = ranges.intervals()
    for (_, end), (begin, _) in pairwise(merged):
        assert end is not None and end < begin  # disjoint and not touching


# -- passwords -----------------------------------------------------------------------------


def test_hash_and_check_password(store: AuthStore) -> None:
    hashed = store.hash_password("s3cret")
    assert hashed.startswith(b"$2a$04$")  # Go's bcrypt format, this store's cost
    assert b"s3cret" not in hashed
    assert decode_hashed_password(encode_hashed_password(hashed)) == hashed
    store.user_add("u", hashed)
    assert store.check_password("u", "s3cret")
    assert store.check_password("u", b"s3cret")
    assert not store.check_password("u", "S3cret")
    assert not store.check_password("nobody", "s3cret")
    assert not store.check_password("u", "x" * 100)
    store.user_add("tls", no_password=True)
    assert not store.check_password("tls", "")
    store.user_add("garbage", b"not a bcrypt hash")
    assert not store.check_password("garbage", "x")
    with pytest.raises(PasswordTooLongError):
        store.hash_password("x" * 73)
    store.hash_password("x" * 72)


def test_change_password(store: AuthStore) -> None:
    store.user_add("u", store.hash_password("old"))
    store.user_change_password("u", store.hash_password("new"))
    assert store.check_password("u", "new") and not store.check_password("u", "old")
    store.user_add("tls", no_password=True)
    store.user_change_password("tls", store.hash_password("ignored"))  # as etcd: stays empty
    assert not store.check_password("tls", "ignored")


def test_bcrypt_cost_is_validated(member: Member) -> None:
    for cost in (3, 32):
        with pytest.raises(ValueError):
            AuthStore(member.backend, bcrypt_cost=cost)


# -- tokens --------------------------------------------------------------------------------


def test_token_prefix_and_index() -> None:
    prefix = new_token_prefix()
    assert len(prefix) == 16 and prefix.isascii() and prefix.isalpha()
    assert new_token_prefix() != prefix
    assert token_index(f"{prefix}.42") == 42
    for bad in ("", "abc", "abc.", ".5", "a.b.5", "abc.-1", "abc.x", "abc.\u0663"):
        assert token_index(bad) is None


def test_authenticate_assigns_the_entrys_token(store: AuthStore) -> None:
    with pytest.raises(AuthNotEnabledError):
        store.authenticate("root", "P" * 16, 7, T0)
    enabled_store(store)
    token = store.authenticate("root", "P" * 16, 7, T0)
    assert token == "PPPPPPPPPPPPPPPP.7" and token_index(token) == 7
    assert store.user_of_token(token, T0) == "root"
    assert store.auth_info(token, T0) == AuthInfo("root", store.revision)
    with pytest.raises(AuthFailedError):
        store.authenticate("nobody", "Q" * 16, 8, T0)
    store.user_add("tls", no_password=True)
    with pytest.raises(AuthFailedError):
        store.authenticate("tls", "Q" * 16, 9, T0)
    with pytest.raises(ValueError):
        store.authenticate("root", "P" * 16, 7, T0)  # the same token twice
    with pytest.raises(InvalidAuthTokenError):
        store.auth_info("unknown.1", T0)


def test_tokens_expire_unless_used(store: AuthStore) -> None:
    enabled_store(store)
    ttl = store.token_ttl
    assert ttl == 300.0  # etcd's --auth-token-ttl default
    token = store.assign_token("root", T0)
    assert store.user_of_token(token, T0 + ttl - 1) == "root"  # used: TTL restarts
    assert store.user_of_token(token, T0 + 2 * ttl - 2) == "root"
    assert store.user_of_token(token, T0 + 3 * ttl) is None  # idle longer than the TTL
    assert store.user_of_token(token, T0 + 3 * ttl) is None


def test_purge_expired_tokens(store: AuthStore) -> None:
    enabled_store(store)
    old = store.assign_token("root", T0)
    new = store.assign_token("root", T0 + 200)
    assert store.token_count() == 2
    assert store.purge_expired_tokens(T0 + 400) == 1
    assert store.user_of_token(old, T0 + 400) is None
    assert store.user_of_token(new, T0 + 400) == "root"


def test_tokens_are_invalidated(store: AuthStore) -> None:
    enabled_store(store)
    store.user_add("a", store.hash_password("pw"))
    store.user_add("b", store.hash_password("pw"))
    ta, tb, troot = (store.assign_token(u, T0) for u in ("a", "b", "root"))
    store.user_change_password("a", store.hash_password("pw2"))
    assert store.user_of_token(ta, T0) is None
    assert store.user_of_token(tb, T0) == "b"
    store.user_delete("b")
    assert store.user_of_token(tb, T0) is None
    assert store.user_of_token(troot, T0) == "root"
    store.invalidate_user("root")
    assert store.user_of_token(troot, T0) is None
    troot = store.assign_token("root", T0)
    store.auth_disable()  # drops every token
    assert store.token_count() == 0 and store.user_of_token(troot, T0) is None
    with pytest.raises(AuthNotEnabledError):
        store.assign_token("root", T0)


def test_tokens_are_member_local(member: Member) -> None:
    store = enabled_store(member.store)
    token = store.assign_token("root", T0)
    store = member.restart()
    assert store.enabled and store.user_of_token(token, T0) is None


# -- rate limiting -------------------------------------------------------------------------


def test_attempts_are_rate_limited_per_user(store: AuthStore) -> None:
    assert (store.auth_rate, store.auth_burst) == (5.0, 5)
    assert all(store.attempt_allowed("u", T0) for _ in range(5))
    assert not store.attempt_allowed("u", T0)
    assert not store.attempt_allowed("u", T0 + 0.1)  # half an attempt refilled
    assert store.attempt_allowed("other", T0)  # another user has its own budget
    assert store.attempt_allowed("u", T0 + 0.2)
    assert not store.attempt_allowed("u", T0 + 0.2)
    assert not store.attempt_allowed("u", T0 + 0.1)  # a clock going back refills nothing
    assert all(store.attempt_allowed("u", T0 + 10) for _ in range(5))  # burst, not more
    assert not store.attempt_allowed("u", T0 + 10)


def test_sustained_rate_is_bounded(store: AuthStore) -> None:
    allowed = sum(store.attempt_allowed("u", T0 + i * 0.01) for i in range(1000))  # 10 s
    assert allowed <= 5 + 5 * 10 + 1


def test_rate_limit_memory_is_bounded(store: AuthStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_mod, "_MAX_TRACKED_USERS", 10)
    for i in range(50):
        store.attempt_allowed(f"user{i}", T0 + i)
    assert len(store._buckets) <= 10
    for _ in range(5):
        store.attempt_allowed("hot", T0 + 100)
    for i in range(9):
        store.attempt_allowed(f"late{i}", T0 + 100)
    assert not store.attempt_allowed("hot", T0 + 100)  # its recent bucket was kept
