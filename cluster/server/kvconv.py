"""Translation between the KV service's protobuf messages and the MVCC store.

Pure and synchronous: no raft, no I/O beyond the store's own. Used by the KV
servicer (``validate_*`` and ``check_size`` before anything is proposed) and
by the member (``apply_*`` in its apply step, ``do_range`` for reads).

Validation is the store's own (etcd's v3rpc/key.go checks live in
``cluster.mvcc.store``); this module only converts the messages and maps the
store's errors to ``RequestError`` with etcd's gRPC code and message.

Response headers: as etcd's applier does, every response built here carries
a ``header`` holding only ``revision`` (the store revision the response
reflects; nested txn responses carry their own, 0 for a nested txn as in
etcd). The member completes it with ``fill_header`` (cluster_id, member_id,
raft_term; revision only where it is still 0), as etcd's ``header.fill``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar, cast

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from cluster.errors import EtcdError
from cluster.mvcc import (
    DEFAULT_MAX_TXN_OPS,
    Compare,
    CorruptStoreError,
    DeleteRangeRequest,
    DeleteRangeResult,
    KeyValue,
    KVStore,
    MVCCError,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
    RequestOp,
    ResponseOp,
    TxnRequest,
    TxnResult,
)

# The store's request checks (etcd's checkPutRequest & co and checkIntervals).
# They are module-private in cluster.mvcc.store; reused here rather than copied.
from cluster.mvcc.store import (
    _check_delete,
    _check_intervals,
    _check_put,
    _check_range,
    _check_txn,
)
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.mvccpb import kv_pb2

__all__ = [
    "ERR_COMPACTED",
    "ERR_CORRUPT",
    "ERR_DUPLICATE_KEY",
    "ERR_EMPTY_KEY",
    "ERR_FUTURE_REV",
    "ERR_KEY_NOT_FOUND",
    "ERR_LEADER_CHANGED",
    "ERR_LEARNER_NOT_READY",
    "ERR_LEASE_NOT_FOUND",
    "ERR_MEMBER_BAD_URLS",
    "ERR_MEMBER_EXIST",
    "ERR_MEMBER_NOT_FOUND",
    "ERR_MEMBER_NOT_LEARNER",
    "ERR_NOT_ENOUGH_STARTED_MEMBERS",
    "ERR_NOT_LEADER",
    "ERR_NO_LEADER",
    "ERR_NO_SPACE",
    "ERR_PEER_URL_EXIST",
    "ERR_REMOVE_LAST_VOTER",
    "ERR_REQUEST_TOO_LARGE",
    "ERR_STOPPED",
    "ERR_TIMEOUT",
    "ERR_TIMEOUT_DUE_TO_CONNECTION_LOST",
    "ERR_TIMEOUT_DUE_TO_LEADER_FAIL",
    "ERR_TIMEOUT_WAIT_APPLIED_INDEX",
    "ERR_TOO_MANY_OPS",
    "ERR_TOO_MANY_REQUESTS",
    "ERR_UNHEALTHY",
    "RequestError",
    "WriteRequest",
    "WriteResponse",
    "apply_compaction",
    "apply_delete_range",
    "apply_put",
    "apply_request",
    "apply_txn",
    "check_size",
    "do_range",
    "fill_header",
    "is_txn_read_only",
    "validate",
    "validate_compaction",
    "validate_delete",
    "validate_put",
    "validate_range",
    "validate_txn",
]

_Op = TypeVar("_Op")


class _Changes(Protocol):
    @property
    def changes(self) -> list[KeyValue]: ...


_Result = TypeVar("_Result", bound=_Changes)
_Resp = TypeVar("_Resp")

WriteRequest = pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest | pb.CompactionRequest
WriteResponse = pb.PutResponse | pb.DeleteRangeResponse | pb.TxnResponse | pb.CompactionResponse

# -- errors ------------------------------------------------------------------------------------

_Code = grpc.StatusCode
ErrorSpec = tuple[grpc.StatusCode, str]

# etcd's api/v3rpc/rpctypes: (code, message); raise as ``RequestError(*ERR_NO_LEADER)``.
ERR_EMPTY_KEY: Final[ErrorSpec] = (_Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
ERR_KEY_NOT_FOUND: Final[ErrorSpec] = (_Code.INVALID_ARGUMENT, "etcdserver: key not found")
ERR_TOO_MANY_OPS: Final[ErrorSpec] = (
    _Code.INVALID_ARGUMENT,
    "etcdserver: too many operations in txn request",
)
ERR_DUPLICATE_KEY: Final[ErrorSpec] = (
    _Code.INVALID_ARGUMENT,
    "etcdserver: duplicate key given in txn request",
)
ERR_COMPACTED: Final[ErrorSpec] = (
    _Code.OUT_OF_RANGE,
    "etcdserver: mvcc: required revision has been compacted",
)
ERR_FUTURE_REV: Final[ErrorSpec] = (
    _Code.OUT_OF_RANGE,
    "etcdserver: mvcc: required revision is a future revision",
)
ERR_NO_SPACE: Final[ErrorSpec] = (
    _Code.RESOURCE_EXHAUSTED,
    "etcdserver: mvcc: database space exceeded",
)
ERR_LEASE_NOT_FOUND: Final[ErrorSpec] = (
    _Code.NOT_FOUND,
    "etcdserver: requested lease not found",
)
ERR_REQUEST_TOO_LARGE: Final[ErrorSpec] = (
    _Code.INVALID_ARGUMENT,
    "etcdserver: request is too large",
)
ERR_TOO_MANY_REQUESTS: Final[ErrorSpec] = (
    _Code.RESOURCE_EXHAUSTED,
    "etcdserver: too many requests",
)
ERR_NO_LEADER: Final[ErrorSpec] = (_Code.UNAVAILABLE, "etcdserver: no leader")
ERR_NOT_LEADER: Final[ErrorSpec] = (_Code.FAILED_PRECONDITION, "etcdserver: not leader")
ERR_LEADER_CHANGED: Final[ErrorSpec] = (_Code.UNAVAILABLE, "etcdserver: leader changed")
ERR_STOPPED: Final[ErrorSpec] = (_Code.UNAVAILABLE, "etcdserver: server stopped")
ERR_TIMEOUT: Final[ErrorSpec] = (_Code.UNAVAILABLE, "etcdserver: request timed out")
ERR_TIMEOUT_DUE_TO_LEADER_FAIL: Final[ErrorSpec] = (
    _Code.UNAVAILABLE,
    "etcdserver: request timed out, possibly due to previous leader failure",
)
ERR_TIMEOUT_DUE_TO_CONNECTION_LOST: Final[ErrorSpec] = (
    _Code.UNAVAILABLE,
    "etcdserver: request timed out, possibly due to connection lost",
)
ERR_TIMEOUT_WAIT_APPLIED_INDEX: Final[ErrorSpec] = (
    _Code.UNAVAILABLE,
    "etcdserver: request timed out, waiting for the applied index took too long",
)
ERR_UNHEALTHY: Final[ErrorSpec] = (_Code.UNAVAILABLE, "etcdserver: unhealthy cluster")
ERR_CORRUPT: Final[ErrorSpec] = (_Code.DATA_LOSS, "etcdserver: corrupt cluster")
# The Cluster service (membership changes).
ERR_MEMBER_EXIST: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: member ID already exist",
)
ERR_PEER_URL_EXIST: Final[ErrorSpec] = (_Code.FAILED_PRECONDITION, "etcdserver: peerURL exists")
ERR_MEMBER_NOT_FOUND: Final[ErrorSpec] = (_Code.NOT_FOUND, "etcdserver: member not found")
ERR_MEMBER_BAD_URLS: Final[ErrorSpec] = (
    _Code.INVALID_ARGUMENT,
    "etcdserver: given member URLs are invalid",
)
ERR_NOT_ENOUGH_STARTED_MEMBERS: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
ERR_MEMBER_NOT_LEARNER: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member",
)
ERR_LEARNER_NOT_READY: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
# Not an etcd error (etcd's raft refuses this case silently): removing the only voter.
ERR_REMOVE_LAST_VOTER: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: cannot remove the last voting member",
)


class RequestError(Exception):
    """A request refused with a gRPC status: ``code`` (a ``grpc.StatusCode``) and etcd's message.

    The servicers answer it with ``context.abort(code, message)``.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_error(cls, err: EtcdError) -> RequestError:
        """The store's, lessor's or auth's error as etcd sends it (code and message)."""
        return cls(grpc.StatusCode[err.grpc_code], err.grpc_message)

    def __repr__(self) -> str:
        return f"RequestError({self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


# -- protobuf -> store -------------------------------------------------------------------------

# An empty RequestOp (no oneof member set). The store's checks answer it with
# etcd's "key not found", in the order etcd checks a txn's ops.
_EMPTY_OP = cast(RequestOp, object())


def _range_req(r: pb.RangeRequest) -> RangeRequest:
    return RangeRequest(
        r.key,
        r.range_end,
        limit=r.limit,
        revision=r.revision,
        sort_order=r.sort_order,
        sort_target=r.sort_target,
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def _put_req(r: pb.PutRequest) -> PutRequest:
    return PutRequest(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def _delete_req(r: pb.DeleteRangeRequest) -> DeleteRangeRequest:
    return DeleteRangeRequest(r.key, r.range_end, r.prev_kv)


def _compare(c: pb.Compare) -> Compare:
    # Reading the target's own oneof member gives its zero value when another
    # member (or none) is set: etcd's compareKV treats that case the same way.
    target = c.target
    value: bytes | int
    if target == pb.Compare.VALUE:
        value = c.value
    elif target == pb.Compare.VERSION:
        value = c.version
    elif target == pb.Compare.CREATE:
        value = c.create_revision
    elif target == pb.Compare.MOD:
        value = c.mod_revision
    elif target == pb.Compare.LEASE:
        value = c.lease
    else:
        value = 0
    return Compare(c.key, target, c.result, value, c.range_end)


def _request_op(op: pb.RequestOp) -> RequestOp:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        return _range_req(op.request_range)
    if kind == "request_put":
        return _put_req(op.request_put)
    if kind == "request_delete_range":
        return _delete_req(op.request_delete_range)
    if kind == "request_txn":
        return _txn_req(op.request_txn)
    return _EMPTY_OP


def _txn_req(r: pb.TxnRequest) -> TxnRequest:
    return TxnRequest(
        [_compare(c) for c in r.compare],
        [_request_op(op) for op in r.success],
        [_request_op(op) for op in r.failure],
    )


# -- store -> protobuf -------------------------------------------------------------------------


def _add_kvs(target: RepeatedCompositeFieldContainer[kv_pb2.KeyValue], kvs: list[KeyValue]) -> None:
    add = target.add
    for kv in kvs:
        add(
            key=kv.key,
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            version=kv.version,
            value=kv.value,
            lease=kv.lease,
        )


def set_kv(target: kv_pb2.KeyValue, kv: KeyValue) -> None:
    """Copy ``kv`` into the protobuf ``target`` (a response's kv, an event's kv)."""
    target.key = kv.key
    target.create_revision = kv.create_revision
    target.mod_revision = kv.mod_revision
    target.version = kv.version
    target.value = kv.value
    target.lease = kv.lease


def _fill_range(resp: pb.RangeResponse, r: RangeResult) -> None:
    resp.header.revision = r.revision
    _add_kvs(resp.kvs, r.kvs)
    resp.more = r.more
    resp.count = r.count


def _fill_put(resp: pb.PutResponse, r: PutResult) -> None:
    resp.header.revision = r.revision
    if r.prev_kv is not None:
        set_kv(resp.prev_kv, r.prev_kv)


def _fill_delete(resp: pb.DeleteRangeResponse, r: DeleteRangeResult) -> None:
    resp.header.revision = r.revision
    resp.deleted = r.deleted
    _add_kvs(resp.prev_kvs, r.prev_kvs)


def _fill_txn(resp: pb.TxnResponse, r: TxnResult) -> None:
    resp.header.revision = r.revision
    resp.succeeded = r.succeeded
    for result in r.responses:
        _fill_response_op(resp.responses.add(), result)


def _fill_response_op(op: pb.ResponseOp, r: ResponseOp) -> None:
    if isinstance(r, RangeResult):
        _fill_range(op.response_range, r)
    elif isinstance(r, PutResult):
        _fill_put(op.response_put, r)
    elif isinstance(r, DeleteRangeResult):
        _fill_delete(op.response_delete_range, r)
    else:
        _fill_txn(op.response_txn, r)


# -- validation (before a request is proposed) -------------------------------------------------


def validate_range(req: pb.RangeRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkRangeRequest: a key, valid sort options."""
    _checked(_check_range, _range_req(req))


def validate_put(req: pb.PutRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkPutRequest: a key; no value with ignore_value, no lease with ignore_lease."""
    _checked(_check_put, _put_req(req))


def validate_delete(req: pb.DeleteRangeRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkDeleteRequest: a key."""
    _checked(_check_delete, _delete_req(req))


def validate_txn(req: pb.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkTxnRequest, then checkIntervals of each branch.

    At most ``max_txn_ops`` compares / ops per branch (nested txns get what
    their parents leave), keys everywhere, no empty op, no key put twice or
    put and deleted in one branch.
    """
    txn = _txn_req(req)
    try:
        _check_txn(txn, max_txn_ops)
        _check_intervals(txn.success)
        _check_intervals(txn.failure)
    except MVCCError as err:
        raise RequestError.from_error(err) from err


def validate_compaction(req: pb.CompactionRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """Nothing to check up front: etcd judges a compaction's revision when applying it."""


def validate(req: WriteRequest | pb.RangeRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """The ``validate_*`` for the request's type."""
    if isinstance(req, pb.PutRequest):
        validate_put(req, max_txn_ops)
    elif isinstance(req, pb.RangeRequest):
        validate_range(req, max_txn_ops)
    elif isinstance(req, pb.DeleteRangeRequest):
        validate_delete(req, max_txn_ops)
    elif isinstance(req, pb.TxnRequest):
        validate_txn(req, max_txn_ops)
    elif isinstance(req, pb.CompactionRequest):
        validate_compaction(req, max_txn_ops)
    else:
        raise TypeError(f"not a KV request: {type(req).__name__}")


def check_size(req: WriteRequest, max_request_bytes: int) -> None:
    """etcd's --max-request-bytes limit on what is proposed (``req.ByteSize()`` here)."""
    if req.ByteSize() > max_request_bytes:
        raise RequestError(*ERR_REQUEST_TOO_LARGE)


def is_txn_read_only(req: pb.TxnRequest) -> bool:
    """etcd's IsTxnReadonly: every op of both branches (not looking inside nested txns) a range."""
    return all(op.WhichOneof("request") == "request_range" for op in (*req.success, *req.failure))


def _checked(check: Callable[[_Op], None], op: _Op) -> None:
    try:
        check(op)
    except MVCCError as err:
        raise RequestError.from_error(err) from err


# -- applying and reading ----------------------------------------------------------------------
#
# Each raises RequestError (from the store's MVCCError) for a request the store
# refuses; the store changes nothing then. CorruptStoreError and the backend's
# errors (BackendQuotaError ...) are not request errors and pass through.
# ``changes``, if given, is extended with what the request wrote (the store's
# change events, in order: what watchers and the lessor need).


def _request_error(err: MVCCError) -> RequestError:
    if isinstance(err, CorruptStoreError):
        raise err  # not the request's fault: the member must stop
    return RequestError.from_error(err)


def do_range(store: KVStore, req: pb.RangeRequest) -> pb.RangeResponse:
    """Read from the local store (``serializable`` is the member's business, not looked at)."""
    try:
        result = store.range_request(_range_req(req))
    except MVCCError as err:
        raise _request_error(err) from err
    resp = pb.RangeResponse()
    _fill_range(resp, result)
    return resp


def _write(
    run: Callable[[], _Result],
    fill: Callable[[_Resp, _Result], None],
    resp: _Resp,
    changes: list[KeyValue] | None,
) -> _Resp:
    """Run one store write; its response, and its change events appended to ``changes``."""
    try:
        result = run()
    except MVCCError as err:
        raise _request_error(err) from err
    if changes is not None:
        changes += result.changes
    fill(resp, result)
    return resp


def apply_put(
    store: KVStore, req: pb.PutRequest, *, changes: list[KeyValue] | None = None
) -> pb.PutResponse:
    return _write(lambda: store.put_request(_put_req(req)), _fill_put, pb.PutResponse(), changes)


def apply_delete_range(
    store: KVStore, req: pb.DeleteRangeRequest, *, changes: list[KeyValue] | None = None
) -> pb.DeleteRangeResponse:
    return _write(
        lambda: store.delete_range_request(_delete_req(req)),
        _fill_delete,
        pb.DeleteRangeResponse(),
        changes,
    )


def apply_txn(
    store: KVStore, req: pb.TxnRequest, *, changes: list[KeyValue] | None = None
) -> pb.TxnResponse:
    """A txn, nested ones included; a read-only txn reads and changes nothing."""
    return _write(lambda: store.txn_request(_txn_req(req)), _fill_txn, pb.TxnResponse(), changes)


def apply_compaction(
    store: KVStore, req: pb.CompactionRequest, *, changes: list[KeyValue] | None = None
) -> pb.CompactionResponse:
    """Compact at ``req.revision`` (synchronously, so ``physical`` is always honoured).

    The header's revision is the store's current one, as etcd answers.
    ``changes`` is accepted for a uniform signature; a compaction writes none.
    """
    try:
        store.compact(req.revision)
    except MVCCError as err:
        raise _request_error(err) from err
    resp = pb.CompactionResponse()
    resp.header.revision = store.current_revision
    return resp


def apply_request(
    store: KVStore, req: WriteRequest, *, changes: list[KeyValue] | None = None
) -> WriteResponse:
    """The ``apply_*`` for the request's type (what the member's apply step calls)."""
    if isinstance(req, pb.PutRequest):
        return apply_put(store, req, changes=changes)
    if isinstance(req, pb.DeleteRangeRequest):
        return apply_delete_range(store, req, changes=changes)
    if isinstance(req, pb.TxnRequest):
        return apply_txn(store, req, changes=changes)
    if isinstance(req, pb.CompactionRequest):
        return apply_compaction(store, req, changes=changes)
    raise TypeError(f"not a KV write request: {type(req).__name__}")


def fill_header(
    header: pb.ResponseHeader,
    *,
    cluster_id: int,
    member_id: int,
    raft_term: int,
    revision: int,
) -> None:
    """etcd's header.fill: ids and term always; ``revision`` only if the header has none."""
    header.cluster_id = cluster_id
    header.member_id = member_id
    header.raft_term = raft_term
    if header.revision == 0:
        header.revision = revision
