"""Request builders: key ranges, the transaction compare/op builder.

>>> from cluster.client import Compare, Op
>>> client.txn(
...     compare=[Compare.value("cfg") == "v1", Compare.mod_revision("cfg") < 100],
...     success=[Op.put("cfg", "v2")],
...     failure=[Op.get("cfg")],
... )
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

from cluster.keyspace import prefix_range_end
from cluster.proto.etcdserverpb import rpc_pb2 as pb

__all__ = [
    "Compare",
    "KeyLike",
    "LeaseLike",
    "Op",
    "SortOrder",
    "SortTarget",
    "key_range",
    "prefix_range_end",
    "to_bytes",
]

KeyLike = str | bytes
SortOrder = Literal["none", "ascend", "descend"]
SortTarget = Literal["key", "version", "create", "mod", "value"]


class _HasLeaseId(Protocol):
    @property
    def id(self) -> int: ...


LeaseLike = int | _HasLeaseId
"""A lease id, or any object with an ``id`` (such as a kept-alive ``Lease``)."""


def to_bytes(data: KeyLike) -> bytes:
    """Keys and values: bytes as given, str encoded as UTF-8."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"expected str or bytes, not {type(data).__name__}")


def lease_id(lease: LeaseLike | None) -> int:
    if lease is None:
        return 0
    return lease if isinstance(lease, int) else int(lease.id)


def key_range(
    key: KeyLike, prefix: bool = False, range_end: KeyLike | None = None
) -> tuple[bytes, bytes]:
    """(key, range_end) for a single key, a prefix, or an explicit ``[key, range_end)``."""
    k = to_bytes(key)
    if prefix:
        if range_end is not None:
            raise ValueError("give either prefix=True or range_end, not both")
        if not k:
            return b"\0", b"\0"
        return k, prefix_range_end(k)
    return k, (to_bytes(range_end) if range_end is not None else b"")


_SORT_ORDER = {
    "none": pb.RangeRequest.NONE,
    "ascend": pb.RangeRequest.ASCEND,
    "descend": pb.RangeRequest.DESCEND,
}
_SORT_TARGET = {
    "key": pb.RangeRequest.KEY,
    "version": pb.RangeRequest.VERSION,
    "create": pb.RangeRequest.CREATE,
    "mod": pb.RangeRequest.MOD,
    "value": pb.RangeRequest.VALUE,
}


def range_request(
    key: KeyLike,
    *,
    prefix: bool = False,
    range_end: KeyLike | None = None,
    revision: int = 0,
    limit: int = 0,
    sort_order: SortOrder = "none",
    sort_target: SortTarget = "key",
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> pb.RangeRequest:
    k, end = key_range(key, prefix, range_end)
    return pb.RangeRequest(
        key=k, range_end=end, revision=revision, limit=limit,
        sort_order=_SORT_ORDER[sort_order], sort_target=_SORT_TARGET[sort_target],
        keys_only=keys_only, count_only=count_only, serializable=serializable,
        min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision, max_create_revision=max_create_revision,
    )  # fmt: skip


def put_request(
    key: KeyLike,
    value: KeyLike,
    *,
    lease: LeaseLike | None = None,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> pb.PutRequest:
    return pb.PutRequest(
        key=to_bytes(key), value=b"" if ignore_value else to_bytes(value),
        lease=lease_id(lease), prev_kv=prev_kv,
        ignore_value=ignore_value, ignore_lease=ignore_lease,
    )  # fmt: skip


def delete_request(
    key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None, prev_kv: bool = False
) -> pb.DeleteRangeRequest:
    k, end = key_range(key, prefix, range_end)
    return pb.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


class Compare:
    """One condition of a transaction, built from a target and an operator.

    ``Compare.value(k) == b"x"``, ``Compare.version(k) > 0``, ``Compare.create_revision(k) == 0``
    (the key does not exist), ``Compare.mod_revision(k) < 10``, ``Compare.lease(k) != 0``.
    The operators ``==`` ``!=`` ``<`` ``>`` (or ``.eq`` ``.ne`` ``.lt`` ``.gt``) build it.
    """

    __slots__ = ("pb",)

    def __init__(self, compare: pb.Compare) -> None:
        self.pb = compare

    def __repr__(self) -> str:
        return f"Compare({self.pb!r})".replace("\n", " ")

    @staticmethod
    def value(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None) -> Target:
        return Target(pb.Compare.VALUE, "value", key, prefix, range_end)

    @staticmethod
    def version(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None) -> Target:
        return Target(pb.Compare.VERSION, "version", key, prefix, range_end)

    @staticmethod
    def create_revision(
        key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None
    ) -> Target:
        return Target(pb.Compare.CREATE, "create_revision", key, prefix, range_end)

    @staticmethod
    def mod_revision(
        key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None
    ) -> Target:
        return Target(pb.Compare.MOD, "mod_revision", key, prefix, range_end)

    @staticmethod
    def lease(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None) -> Target:
        return Target(pb.Compare.LEASE, "lease", key, prefix, range_end)


class Target:
    """The left side of a :class:`Compare` (``Compare.value(key)`` ...); compare it to a value."""

    __slots__ = ("_end", "_field", "_key", "_target")
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self, target: Any, field: str, key: KeyLike, prefix: bool, range_end: KeyLike | None
    ) -> None:
        self._target = target
        self._field = field
        self._key, self._end = key_range(key, prefix, range_end)

    def _make(self, result: Any, value: object) -> Compare:
        if self._field == "value":
            operand: object = to_bytes(value)  # type: ignore[arg-type]
        elif isinstance(value, int) and not isinstance(value, bool):
            operand = value
        elif self._field == "lease" and hasattr(value, "id"):
            operand = int(value.id)
        else:
            raise TypeError(f"{self._field} compares with an int, not {type(value).__name__}")
        c = pb.Compare(result=result, target=self._target, key=self._key, range_end=self._end)
        setattr(c, self._field, operand)
        return Compare(c)

    def eq(self, value: object) -> Compare:
        return self._make(pb.Compare.EQUAL, value)

    def ne(self, value: object) -> Compare:
        return self._make(pb.Compare.NOT_EQUAL, value)

    def lt(self, value: object) -> Compare:
        return self._make(pb.Compare.LESS, value)

    def gt(self, value: object) -> Compare:
        return self._make(pb.Compare.GREATER, value)

    def __eq__(self, value: object) -> Compare:  # type: ignore[override]
        return self.eq(value)

    def __ne__(self, value: object) -> Compare:  # type: ignore[override]
        return self.ne(value)

    def __lt__(self, value: object) -> Compare:
        return self.lt(value)

    def __gt__(self, value: object) -> Compare:
        return self.gt(value)


class Op:
    """One operation of a transaction branch: ``Op.get``, ``Op.put``, ``Op.delete``, ``Op.txn``."""

    __slots__ = ("pb",)

    def __init__(self, op: pb.RequestOp) -> None:
        self.pb = op

    def __repr__(self) -> str:
        return f"Op({self.pb!r})".replace("\n", " ")

    @staticmethod
    def get(key: KeyLike, **options: Any) -> Op:
        """A range read; takes the keyword arguments of ``Client.get``."""
        return Op(pb.RequestOp(request_range=range_request(key, **options)))

    @staticmethod
    def put(
        key: KeyLike,
        value: KeyLike,
        *,
        lease: LeaseLike | None = None,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> Op:
        req = put_request(
            key, value, lease=lease, prev_kv=prev_kv,
            ignore_value=ignore_value, ignore_lease=ignore_lease,
        )  # fmt: skip
        return Op(pb.RequestOp(request_put=req))

    @staticmethod
    def delete(
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        prev_kv: bool = False,
    ) -> Op:
        req = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        return Op(pb.RequestOp(request_delete_range=req))

    @staticmethod
    def txn(
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> Op:
        return Op(pb.RequestOp(request_txn=txn_request(compare, success, failure)))


def txn_request(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[c.pb for c in compare],
        success=[o.pb for o in success],
        failure=[o.pb for o in failure],
    )


def txn_is_read_only(req: pb.TxnRequest) -> bool:
    """True when no branch writes (then the txn is as safe to retry as a range)."""
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which == "request_txn":
            if not txn_is_read_only(op.request_txn):
                return False
        elif which != "request_range":
            return False
    return True
