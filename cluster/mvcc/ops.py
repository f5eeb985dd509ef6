"""Requests to the store and its answers, shaped like etcd's etcdserverpb messages.

Field names and enum values are those of rpc.proto, so the gRPC servicers
translate field by field. ``range_end`` follows etcd: ``b""`` is the single
key ``key``, ``b"\\0"`` every key >= ``key``, anything else ``[key, range_end)``.

Results carry the revision etcd puts in their response header. The result of
a top-level put, delete_range or txn also lists in ``changes`` what it wrote,
in order (what watchers and the lessor need): a put as the stored KeyValue, a
deletion as ``KeyValue(key, mod_revision=<revision>)`` with create_revision 0,
as in etcd's DELETE watch events. Nested results have no changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from .kv import KeyValue


class SortOrder(IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(frozen=True, slots=True)
class RangeRequest:
    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder | int = SortOrder.NONE
    sort_target: SortTarget | int = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """``target`` of the key (or of every key in ``[key, range_end)``) ``result`` ``value``.

    ``value`` is bytes for ``CompareTarget.VALUE`` and an int for the others;
    one of the wrong kind compares as the zero value (b"" or 0), as etcd's
    unset ``target_union`` does. A missing key compares with every field 0,
    except that a VALUE compare on a missing key is always false.
    """

    key: bytes
    target: CompareTarget | int
    result: CompareResult | int
    value: bytes | int = 0
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: Sequence[Compare] = ()
    success: Sequence[RequestOp] = ()
    failure: Sequence[RequestOp] = ()


RequestOp = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int
    more: bool
    revision: int  # the store's revision when read (not the revision read at)


@dataclass(slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None
    changes: list[KeyValue] = field(default_factory=list)


@dataclass(slots=True)
class DeleteRangeResult:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue] = field(default_factory=list)
    changes: list[KeyValue] = field(default_factory=list)


@dataclass(slots=True)
class TxnResult:
    """``revision`` is 0 in a nested txn's result, as etcd leaves its header empty."""

    revision: int
    succeeded: bool
    responses: list[ResponseOp]
    changes: list[KeyValue] = field(default_factory=list)


ResponseOp = RangeResult | PutResult | DeleteRangeResult | TxnResult


@dataclass(frozen=True, slots=True)
class KeyValueHash:
    """A CRC-32C over the ``key`` bucket (see ``KVStore.hash_kv``)."""

    hash: int
    compact_revision: int
    revision: int
