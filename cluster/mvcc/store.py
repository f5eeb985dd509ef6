"""The MVCC key-value store: etcd's range / put / delete / txn / compact over the backend.

Every write is stored under its revision in the ``key`` bucket (value: the
encoded ``KeyValue``; a deletion under the revision key marked ``b"t"``, its
value ``KeyValue(key)``), and recorded in the in-memory ``TreeIndex``, which
answers which revision of which key is visible at a given store revision.
``meta`` holds ``scheduledCompactRev`` / ``finishedCompactRev`` (etcd's names
and 17-byte revision encoding). Opening a ``KVStore`` on a backend rebuilds the
index and both revisions from those two buckets.

The store implements what etcd spreads over its gRPC checks (v3rpc/key.go),
its applier (txn.go) and mvcc (kvstore_txn.go): request validation, the
request semantics and the storage. It is a pure library: no threads, clocks
or networking, and it never commits the backend's batch (the member does, by
count or time) nor touches the consistent index (the applier's job).

Reads and uncommitted writes: every read goes through the backend's
``BatchTx``, whose LMDB write transaction sees its own writes, so a read
always sees every applied write, committed or not. (A read-only request
made while no batch is open uses one LMDB read transaction instead, which
sees the same data.) The alternative, etcd's write-back buffer in front of
read transactions, would duplicate uncommitted values in memory and must be
reset in step with commits, which the store does not see. The price: while
a batch is open, the store may be called only from the thread that owns
the batch (the backend raises otherwise); the member serialises applies and
local reads on that thread.

If a backend write fails for space (``BackendQuotaError``) the backend has
discarded its whole uncommitted batch: the store then rebuilds itself from
the committed data before re-raising. After a ``BackendQuotaError`` from
``Backend.commit`` (which the store does not see), call ``rebuild()``.
"""

from __future__ import annotations

import contextlib
import gc
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from crc32c import crc32c

from cluster import faults
from cluster.storage.backend import Backend, BackendQuotaError

from .errors import (
    CompactedError,
    CorruptStoreError,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    InvalidSortOptionError,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from .index import TreeIndex
from .kv import KeyValue, decode_index_fields, decode_kv, encode_kv
from .ops import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResult,
    KeyValueHash,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResult,
)
from .revision import REV_BYTES_LEN, Revision, is_tombstone

KEY_BUCKET = "key"
META_BUCKET = "meta"
SCHEDULED_COMPACT_KEY = b"scheduledCompactRev"
FINISHED_COMPACT_KEY = b"finishedCompactRev"

DEFAULT_MAX_TXN_OPS = 128  # etcd's --max-txn-ops
SCAN_CHUNK = 10000  # key-bucket rows read at a time by restore, compaction and hashing

_T = TypeVar("_T")
# Objects built by one index rebuild above which they are frozen (see _long_lived_objects).
FREEZE_AFTER_OBJECTS = 200_000
_REV_KEY = struct.Struct(">Q1sQ")  # a ``key`` bucket key's first 17 bytes (see revision.py)


class _Reader(Protocol):
    def get(self, bucket: str, key: bytes) -> bytes | None: ...

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]: ...


@dataclass(slots=True)
class _Txn:
    """One request being applied: etcd's storeTxnWrite (or its read-only stand-in)."""

    src: _Reader
    begin_rev: int
    changes: list[KeyValue] = field(default_factory=list)

    def read_rev(self) -> int:
        """Reads inside a write see its own changes, at the revision it is writing."""
        return self.begin_rev + 1 if self.changes else self.begin_rev


@dataclass(slots=True)
class _Path:
    """Which branch every txn of a request takes, decided before it runs."""

    succeeded: bool
    nested: list[_Path]


def _always(_lease: int) -> bool:
    return True


class KVStore:
    """etcd's MVCC store over a ``Backend``; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        *,
        lease_exists: Callable[[int], bool] | None = None,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
    ) -> None:
        self._backend = backend
        self._batch = backend.batch()
        self._lease_exists = lease_exists or _always
        self.max_txn_ops = max_txn_ops
        self._index = TreeIndex()
        self._current_rev = 1
        self._compact_rev = -1
        self._loaded_leases: dict[bytes, int] = {}
        self.rebuild()

    # -- state -----------------------------------------------------------------
    @property
    def current_revision(self) -> int:
        """The revision of the last write; 1 for an empty store, as etcd."""
        return self._current_rev

    @property
    def compact_revision(self) -> int:
        """The last compaction's revision; -1 if there was none, as etcd."""
        return self._compact_rev

    @property
    def index(self) -> TreeIndex:
        return self._index

    def loaded_leases(self) -> dict[bytes, int]:
        """Each live key with a lease, and its lease id, as of the last load from the backend
        (opening, ``rebuild``): what the lessor must attach again (etcd's restore collects
        the same while it scans). Later writes are not reflected: the lessor follows those."""
        return dict(self._loaded_leases)

    def rebuild(self) -> None:
        """Rebuild the index and revisions from the backend (etcd's restore).

        Reads the ``key`` bucket in revision order; a compaction recorded as
        scheduled but not finished is run again (into the batch).
        """
        self._load(resume_compaction=True)

    def release(self) -> None:
        """Let go of the in-memory index now: this store is being replaced by a new one,
        and building that beside this one would hold both (1.2 GB at a million keys)."""
        self._index = TreeIndex()

    def _load(self, resume_compaction: bool) -> None:
        batch = self._batch
        self._index = index = TreeIndex()  # the old one goes first, not after (twice the memory)
        current, compact = 1, -1
        raw = batch.get(META_BUCKET, FINISHED_COMPACT_KEY)
        if raw is not None:
            compact = Revision.from_bytes(raw).main
        raw = batch.get(META_BUCKET, SCHEDULED_COMPACT_KEY)
        scheduled = Revision.from_bytes(raw).main if raw is not None else 0
        loaded = _Loaded()
        with _long_lived_objects():
            index.restore_all(_index_records(_scan(batch, Revision(1).to_bytes(), None), loaded))
        if loaded.last is not None:
            current = loaded.last.main
        # Compaction may have removed the newest revisions' records (tombstones).
        current = max(current, compact, scheduled)
        self._current_rev, self._compact_rev = current, compact
        self._loaded_leases = loaded.leases
        if resume_compaction and scheduled > max(compact, 0):
            self._compact_rev = scheduled
            self._guarded(lambda: self._compact_physically(scheduled, compact))

    def _guarded(self, write: Callable[[], _T]) -> _T:
        try:
            return write()
        except BackendQuotaError:
            self._load(resume_compaction=False)  # the batch was discarded: back to committed
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[_Reader]:
        """The batch if one is open (it sees its own writes), else one read transaction."""
        if self._batch.active:
            yield self._batch
        else:
            with self._backend.read_txn() as rtx:
                yield rtx

    # -- requests ----------------------------------------------------------------
    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: SortOrder | int = SortOrder.NONE,
        sort_target: SortTarget | int = SortTarget.KEY,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResult:
        """Keys in the range as of ``revision`` (0: now); see etcd's RangeRequest.

        ``count`` is the number of keys in the range at that revision, before
        ``limit`` and the min/max filters; ``more`` says ``limit`` cut the
        answer. Sorting is stable: equal keys stay in key order.
        """
        return self.range_request(
            RangeRequest(
                key,
                range_end,
                limit=limit,
                revision=revision,
                sort_order=sort_order,
                sort_target=sort_target,
                keys_only=keys_only,
                count_only=count_only,
                min_mod_revision=min_mod_revision,
                max_mod_revision=max_mod_revision,
                min_create_revision=min_create_revision,
                max_create_revision=max_create_revision,
            )
        )

    def range_request(self, req: RangeRequest) -> RangeResult:
        _check_range(req)
        with self._reading() as src:
            return self._range(_Txn(src, self._current_rev), req)

    def put(
        self,
        key: bytes,
        value: bytes = b"",
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult:
        """Write ``key`` at a new revision; ``ignore_*`` keep the current value / lease."""
        return self.put_request(PutRequest(key, value, lease, prev_kv, ignore_value, ignore_lease))

    def put_request(self, req: PutRequest) -> PutResult:
        _check_put(req)
        if req.lease and not self._lease_exists(req.lease):
            raise LeaseNotFoundError()
        txn = _Txn(self._batch, self._current_rev)
        result = self._guarded(lambda: self._put(txn, req))
        result.changes = self._end(txn)
        return result

    def delete_range(
        self, key: bytes, range_end: bytes = b"", prev_kv: bool = False
    ) -> DeleteRangeResult:
        """Delete the live keys in the range at one new revision (none if nothing is live)."""
        return self.delete_range_request(DeleteRangeRequest(key, range_end, prev_kv))

    def delete_range_request(self, req: DeleteRangeRequest) -> DeleteRangeResult:
        _check_delete(req)
        txn = _Txn(self._batch, self._current_rev)
        result = self._guarded(lambda: self._delete_range(txn, req))
        result.changes = self._end(txn)
        return result

    def delete_keys(self, keys: Sequence[bytes]) -> DeleteRangeResult:
        """Delete the live ones of ``keys`` at one new revision, without the txn op limit:
        a lease revoke's deletions (etcd deletes a revoked lease's keys in one txn)."""

        def run() -> DeleteRangeResult:
            deleted = 0
            for key in sorted(set(keys)):
                deleted += self._delete_range(txn, DeleteRangeRequest(key)).deleted
            return DeleteRangeResult(txn.begin_rev, deleted)

        txn = _Txn(self._batch, self._current_rev)
        result = self._guarded(run)
        result.changes = self._end(txn)
        result.revision = self._current_rev
        return result

    def txn(
        self,
        compares: Sequence[Compare] = (),
        success: Sequence[RequestOp] = (),
        failure: Sequence[RequestOp] = (),
    ) -> TxnResult:
        """etcd's Txn: if every compare holds run ``success``, else ``failure``.

        All compares, nested ones included, are judged against the store as
        it was before the txn; the ops run in order, each seeing the earlier
        ones' writes, all at one revision (sub-revisions count the changes).
        The revision moves only if something changed.
        """
        return self.txn_request(TxnRequest(compares, success, failure))

    def txn_request(self, req: TxnRequest) -> TxnResult:
        _check_txn(req, self.max_txn_ops)
        _check_intervals(req.success)
        _check_intervals(req.failure)
        if _is_read_only(req):
            with self._reading() as src:
                txn = _Txn(src, self._current_rev)
                path = self._compare_to_path(txn, req)
                result = self._txn(txn, req, path)
                result.revision = txn.begin_rev
                return result
        txn = _Txn(self._batch, self._current_rev)
        path = self._compare_to_path(txn, req)
        self._check_path(txn, req, path)
        result = self._guarded(lambda: self._txn(txn, req, path))
        result.changes = self._end(txn)
        result.revision = self._current_rev
        return result

    def _end(self, txn: _Txn) -> list[KeyValue]:
        """Close a write: bump the revision if it changed anything; its change events."""
        if not txn.changes:
            return []
        self._current_rev = rev = txn.begin_rev + 1
        return [kv if kv.create_revision else replace(kv, mod_revision=rev) for kv in txn.changes]

    # -- execution -----------------------------------------------------------------
    def _kvs(self, txn: _Txn, revs: Iterable[Revision]) -> list[KeyValue]:
        src = txn.src
        out: list[KeyValue] = []
        for rev in revs:
            raw = src.get(KEY_BUCKET, rev.to_bytes())
            if raw is None:
                raise CorruptStoreError(f"mvcc: revision {rev.main}.{rev.sub} is missing")
            out.append(decode_kv(raw))
        return out

    def _range(self, txn: _Txn, req: RangeRequest) -> RangeResult:
        filtered = bool(
            req.min_mod_revision
            or req.max_mod_revision
            or req.min_create_revision
            or req.max_create_revision
        )
        limit = 0 if req.sort_order != SortOrder.NONE or filtered else req.limit
        if limit > 0:
            limit += 1  # one more, to tell ``more``
        cur = txn.read_rev()
        rev = req.revision
        if rev > cur:
            raise FutureRevisionError()
        if rev <= 0:
            rev = cur
        if rev < self._compact_rev:
            raise CompactedError()
        end = _gte_range(req.range_end)
        if req.count_only:
            return RangeResult([], self._index.count_revisions(req.key, end, rev), False, cur)
        revs, total = self._index.revisions(req.key, end, rev, limit)
        kvs = self._kvs(txn, revs)
        if filtered:
            kvs = [kv for kv in kvs if _passes(req, kv)]
        order, target = SortOrder(req.sort_order), SortTarget(req.sort_target)
        if target != SortTarget.KEY and order == SortOrder.NONE:
            order = SortOrder.ASCEND
        elif target == SortTarget.KEY and order == SortOrder.ASCEND:
            order = SortOrder.NONE  # already in key order
        if order != SortOrder.NONE:
            kvs.sort(key=_SORT_KEYS[target], reverse=order == SortOrder.DESCEND)
        more = False
        if req.limit > 0 and len(kvs) > req.limit:
            kvs, more = kvs[: req.limit], True
        if req.keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return RangeResult(kvs, total, more, cur)

    def _single(self, txn: _Txn, key: bytes) -> KeyValue | None:
        got = self._index.get(key, txn.read_rev())
        return None if got is None else self._kvs(txn, (got[0],))[0]

    def _put(self, txn: _Txn, req: PutRequest) -> PutResult:
        value, lease, prev = req.value, req.lease, None
        if req.ignore_value or req.ignore_lease or req.prev_kv:
            prev = self._single(txn, req.key)
        if req.ignore_value or req.ignore_lease:
            if prev is None:
                raise KeyNotFoundError()
            if req.ignore_value:
                value = prev.value
            if req.ignore_lease:
                lease = prev.lease
        rev = txn.begin_rev + 1
        got = self._index.get(req.key, rev)
        create, version = (rev, 1) if got is None else (got[1].main, got[2] + 1)
        kv = KeyValue(req.key, create, rev, version, value, lease)
        idx_rev = Revision(rev, len(txn.changes))
        self._batch.put(KEY_BUCKET, idx_rev.to_bytes(), encode_kv(kv))
        self._index.put(req.key, idx_rev)
        txn.changes.append(kv)
        return PutResult(rev, prev if req.prev_kv else None)

    def _delete_range(self, txn: _Txn, req: DeleteRangeRequest) -> DeleteRangeResult:
        end = _gte_range(req.range_end)
        live = self._index.range(req.key, end, txn.read_rev())
        prev_kvs = self._kvs(txn, (rev for _, rev in live)) if req.prev_kv else []
        for key, _ in live:
            idx_rev = Revision(txn.begin_rev + 1, len(txn.changes))
            tomb = KeyValue(key)
            self._batch.put(KEY_BUCKET, idx_rev.to_bytes(tombstone=True), encode_kv(tomb))
            self._index.tombstone(key, idx_rev)
            txn.changes.append(tomb)
        rev = txn.begin_rev + 1 if live or txn.changes else txn.begin_rev
        return DeleteRangeResult(rev, len(live), prev_kvs)

    def _txn(self, txn: _Txn, req: TxnRequest, path: _Path) -> TxnResult:
        ops = req.success if path.succeeded else req.failure
        nested = iter(path.nested)
        responses: list[ResponseOp] = []
        for op in ops:
            if isinstance(op, RangeRequest):
                responses.append(self._range(txn, op))
            elif isinstance(op, PutRequest):
                responses.append(self._put(txn, op))
            elif isinstance(op, DeleteRangeRequest):
                responses.append(self._delete_range(txn, op))
            else:
                responses.append(self._txn(txn, op, next(nested)))
        return TxnResult(0, path.succeeded, responses)

    def _compare_to_path(self, txn: _Txn, req: TxnRequest) -> _Path:
        ok = all(self._compare(txn, c) for c in req.compare)
        ops = req.success if ok else req.failure
        nested = [self._compare_to_path(txn, op) for op in ops if isinstance(op, TxnRequest)]
        return _Path(ok, nested)

    def _compare(self, txn: _Txn, c: Compare) -> bool:
        revs, _ = self._index.revisions(c.key, _gte_range(c.range_end), txn.read_rev())
        if not revs:
            if c.target == CompareTarget.VALUE:
                return False  # no way to tell a missing value from an empty one
            return _compare_kv(c, KeyValue(c.key))
        return all(_compare_kv(c, kv) for kv in self._kvs(txn, revs))

    def _check_path(self, txn: _Txn, req: TxnRequest, path: _Path) -> None:
        """What could fail while running the chosen ops, checked before any of them runs."""
        ops = req.success if path.succeeded else req.failure
        nested = iter(path.nested)
        for op in ops:
            if isinstance(op, TxnRequest):
                self._check_path(txn, op, next(nested))
            elif isinstance(op, RangeRequest):
                if op.revision == 0:
                    continue
                if op.revision > txn.begin_rev:
                    raise FutureRevisionError()
                if op.revision < self._compact_rev:
                    raise CompactedError()
            elif isinstance(op, PutRequest):
                if (op.ignore_value or op.ignore_lease) and self._single(txn, op.key) is None:
                    raise KeyNotFoundError()
                if op.lease and not self._lease_exists(op.lease):
                    raise LeaseNotFoundError()

    # -- compaction ------------------------------------------------------------------
    def compact(self, rev: int) -> KeyValueHash:
        """Forget history before ``rev``: reads below it then raise ``CompactedError``.

        Keeps, for each key, the revision visible at ``rev`` (a tombstone at
        exactly ``rev`` included) and everything after it; removes the rest
        from the index and the ``key`` bucket, recording ``scheduledCompactRev``
        and then ``finishedCompactRev`` in ``meta`` (all in the open batch).
        Returns the hash etcd computes while compacting: as ``hash_kv`` but
        over the records before removal, with the previous compaction's
        revision as the lower bound.
        """
        if rev <= self._compact_rev:
            raise CompactedError()
        if rev > self._current_rev:
            raise FutureRevisionError()
        prev = self._compact_rev

        def run() -> KeyValueHash:
            self._batch.put(META_BUCKET, SCHEDULED_COMPACT_KEY, Revision(rev).to_bytes())
            if faults.CRASH:
                faults.crash_point("compact-mid")
            self._compact_rev = rev
            return self._compact_physically(rev, prev)

        return self._guarded(run)

    def _compact_physically(self, rev: int, prev_compact: int) -> KeyValueHash:
        keep = self._index.compact(rev)
        hasher = _KVHasher(prev_compact, rev, keep)
        batch = self._batch
        for key, value in _scan(batch, Revision(0).to_bytes(), Revision(rev + 1).to_bytes()):
            if Revision.from_bytes(key) not in keep:
                batch.delete(KEY_BUCKET, key)
            hasher.write(key, value)
        batch.put(META_BUCKET, FINISHED_COMPACT_KEY, Revision(rev).to_bytes())
        return hasher.result()

    def hash_kv(self, rev: int = 0) -> tuple[int, int]:
        """(hash, compact revision): etcd's HashKV of the ``key`` bucket at ``rev`` (0: now).

        The hash is CRC-32C (Castagnoli), as Go's ``crc32.Castagnoli``, fed
        ``b"key"`` (the bucket's name) and then, for each record of the bucket
        in key (= revision) order whose main revision is <= ``rev``, its key
        (the 17-byte revision key, 18 with a tombstone's ``b"t"``) followed by
        its value (the encoded KeyValue), except:

        - a record whose main revision is <= the compact revision and which is
          not among the revisions a compaction at ``rev`` would keep
          (``TreeIndex.keep(rev)``; nothing is skipped so if that set is empty):
          so the hash is the same before and after a compaction's removals;
        - a tombstone at exactly the compact revision (etcd <= 3.5.15 removed
          those when compacting, later versions keep them).

        Members that applied the same history and compactions agree, and the
        values are etcd's bytes, so the hash is etcd's for the same history.
        ``CompactedError`` if ``rev`` is below the compact revision,
        ``FutureRevisionError`` if above the current one.
        """
        compact = self._compact_rev
        if 0 < rev < compact:
            raise CompactedError()
        if rev > 0 and rev > self._current_rev:
            raise FutureRevisionError()
        if rev == 0:
            rev = self._current_rev
        hasher = _KVHasher(compact, rev, self._index.keep(rev))
        with self._reading() as src:
            for key, value in _scan(src, Revision(0).to_bytes(), Revision(rev + 1).to_bytes()):
                hasher.write(key, value)
        return hasher.result().hash, compact

    # -- history (for watchers) --------------------------------------------------------
    def changes(
        self,
        start_rev: int,
        end_rev: int = 0,
        *,
        key: bytes = b"\x00",
        range_end: bytes = b"\x00",
        limit: int = 0,
    ) -> tuple[list[KeyValue], int]:
        """What the writes of revisions ``start_rev..end_rev`` changed in a key range.

        Returns ``(changes, through)``: the changes of revisions
        ``start_rev..through`` whose key is in the range (as ``range``'s
        ``key``/``range_end``; the default is every key), in revision order and
        in the form of a write result's ``changes`` (a deletion is
        ``KeyValue(key, mod_revision=<revision>)``). Read from the ``key``
        bucket by revision, as etcd's syncWatchers does. ``end_rev`` 0 is the
        current revision.

        ``limit`` > 0 bounds the cost, not the answer: it is the number of
        bucket rows to read, whatever their keys, rounded up to a whole
        revision (a revision's changes are never split). ``through`` is then
        the last revision read, and the caller goes on from ``through + 1``;
        it is ``end_rev`` when the scan reached it.

        ``CompactedError`` if ``start_rev`` is below the compact revision (the
        history is complete from the compact revision on), ``FutureRevisionError``
        if ``end_rev`` is above the current revision.
        """
        cur = self._current_rev
        if end_rev <= 0:
            end_rev = cur
        if end_rev > cur:
            raise FutureRevisionError()
        start_rev = max(start_rev, 1)
        if start_rev < self._compact_rev:
            raise CompactedError()
        if start_rev > end_rev:
            return [], end_rev
        end = _gte_range(range_end)
        chunk = SCAN_CHUNK if limit <= 0 else min(SCAN_CHUNK, limit + 1)
        out: list[KeyValue] = []
        read = last = 0
        with self._reading() as src:
            rows = _scan(
                src, Revision(start_rev).to_bytes(), Revision(end_rev + 1).to_bytes(), chunk
            )
            for raw, value in rows:
                main = Revision.from_bytes(raw).main
                if 0 < limit <= read and main != last:
                    return out, last
                read += 1
                last = main
                kv = decode_kv(value)
                if end is None:
                    if kv.key != key:
                        continue
                elif kv.key < key or (end and kv.key >= end):
                    continue
                out.append(KeyValue(kv.key, mod_revision=main) if is_tombstone(raw) else kv)
        return out, end_rev


# -- helpers --------------------------------------------------------------------------


def _scan(
    src: _Reader, start: bytes, end: bytes | None, chunk: int = SCAN_CHUNK
) -> Iterator[tuple[bytes, bytes]]:
    """``key`` bucket rows in [start, end) (end None: to the last), ``chunk`` rows at a time.

    Each chunk is read whole before it is yielded, so the caller may delete
    the rows it is given.
    """
    stop = end if end is not None else b"\xff" * 19
    while True:
        rows = src.range(KEY_BUCKET, start, stop, chunk)
        yield from rows
        if len(rows) < chunk:
            return
        last = Revision.from_bytes(rows[-1][0])
        start = Revision(last.main, last.sub + 1).to_bytes()


@contextlib.contextmanager
def _long_lived_objects(freeze_at: int = FREEZE_AFTER_OBJECTS) -> Iterator[None]:
    """Build many objects that will live long (the index) with the cyclic GC paused;
    if they are many, move them to the GC's permanent generation (``gc.freeze``).

    A rebuilt index is two tracked objects per key (its ``KeyIndex`` and a
    ``Revision``) and holds no reference cycles, so the cyclic collector has
    nothing to find in it, yet: collections triggered while it is built
    (about 1 s of CPU for a million keys, a third of the load), and every
    later full collection, traverse all of it (about 0.25 s of CPU for a
    million keys, during which the whole process, event loop included,
    stands still). Frozen, they are never traversed again; they are still
    freed by reference counting when the index is replaced. Freezing is
    process-wide: whatever else is alive then is frozen too (at startup,
    modules and configuration, which live as long).
    """
    paused = gc.isenabled()
    before = gc.get_count()[0]
    gc.disable()
    try:
        yield
    finally:
        if paused:
            if gc.get_count()[0] - before >= freeze_at:  # tracked objects allocated
                gc.freeze()
            gc.enable()


@dataclass(slots=True)
class _Loaded:
    """What a scan of the ``key`` bucket found besides the index records."""

    last: Revision | None = None  # the newest stored revision
    leases: dict[bytes, int] = field(default_factory=dict)  # live key -> its lease, if any


def _index_records(
    rows: Iterable[tuple[bytes, bytes]], loaded: _Loaded
) -> Iterator[tuple[bytes, Revision, bool, int, int]]:
    """``TreeIndex.restore_all``'s records from ``key`` bucket rows, in revision order;
    fills in ``loaded`` on the way.

    Runs once per stored revision on every restart, so the revision key is
    unpacked here directly; anything unusual goes to ``Revision.from_bytes``,
    which checks it (and raises if it is not a revision key).
    """
    unpack = _REV_KEY.unpack_from
    make = Revision._make
    fields = decode_index_fields
    leases = loaded.leases
    rev: Revision | None = None
    for raw, value in rows:
        if len(raw) == REV_BYTES_LEN and raw[8] == 0x5F:  # b"_", not a tombstone
            main, _, sub = unpack(raw)
            rev, tombstone = make((main, sub)), False
        else:
            rev, tombstone = Revision.from_bytes(raw), is_tombstone(raw)
        key, create_revision, version, lease = fields(value)
        # A key's last record says whether it is live and with which lease (a
        # tombstone's KeyValue has none).
        if lease:
            leases[key] = lease
        elif leases:
            leases.pop(key, None)
        yield key, rev, tombstone, create_revision, version
    loaded.last = rev


class _KVHasher:
    """etcd's kvHasher (mvcc/hash.go)."""

    def __init__(self, compact_rev: int, rev: int, keep: set[Revision]) -> None:
        self._crc = crc32c(KEY_BUCKET.encode())
        self._compact_rev = compact_rev
        self._rev = rev
        self._lower = Revision(compact_rev + 1, 0)
        self._upper = Revision(rev + 1, 0)
        self._keep = keep

    def write(self, key: bytes, value: bytes) -> None:
        kr = Revision.from_bytes(key)
        if not kr < self._upper:
            return
        # Skip what a compaction will remove, whether or not it has yet.
        if kr < self._lower and self._keep and kr not in self._keep:
            return
        # A tombstone at the compact revision: etcd <= 3.5.15 removed it, later
        # ones keep it; both hash without it.
        if kr.main == self._compact_rev and is_tombstone(key):
            return
        self._crc = crc32c(value, crc32c(key, self._crc))

    def result(self) -> KeyValueHash:
        return KeyValueHash(self._crc, self._compact_rev, self._rev)


def _gte_range(range_end: bytes) -> bytes | None:
    """etcd's range_end for the index: None one key, b"" no upper bound."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


def _passes(req: RangeRequest, kv: KeyValue) -> bool:
    return not (
        (req.max_mod_revision and kv.mod_revision > req.max_mod_revision)
        or (req.min_mod_revision and kv.mod_revision < req.min_mod_revision)
        or (req.max_create_revision and kv.create_revision > req.max_create_revision)
        or (req.min_create_revision and kv.create_revision < req.min_create_revision)
    )


_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], bytes | int]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    result = 0
    if c.target == CompareTarget.VALUE:
        want = c.value if isinstance(c.value, bytes) else b""
        result = (kv.value > want) - (kv.value < want)
    else:
        have = 0
        if c.target == CompareTarget.VERSION:
            have = kv.version
        elif c.target == CompareTarget.CREATE:
            have = kv.create_revision
        elif c.target == CompareTarget.MOD:
            have = kv.mod_revision
        elif c.target == CompareTarget.LEASE:
            have = kv.lease
        n = c.value if isinstance(c.value, int) else 0
        result = (have > n) - (have < n)
    if c.result == CompareResult.EQUAL:
        return result == 0
    if c.result == CompareResult.NOT_EQUAL:
        return result != 0
    if c.result == CompareResult.GREATER:
        return result > 0
    if c.result == CompareResult.LESS:
        return result < 0
    return True


def _is_read_only(req: TxnRequest) -> bool:
    return all(isinstance(op, RangeRequest) for op in (*req.success, *req.failure))


# -- validation (etcd's v3rpc/key.go) -----------------------------------------------------


def _check_range(req: RangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    try:
        SortOrder(req.sort_order)
        SortTarget(req.sort_target)
    except ValueError:
        raise InvalidSortOptionError() from None


def _check_put(req: PutRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease:
        raise LeaseProvidedError()


def _check_delete(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()


def _check_txn(req: TxnRequest, max_ops: int) -> None:
    """Op counts (each nested txn gets what its parent leaves), keys, nested requests."""
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_ops:
        raise TooManyOpsError()
    for c in req.compare:
        if not c.key:
            raise EmptyKeyError()
    for op in (*req.success, *req.failure):
        _check_op(op, max_ops - opc)


def _check_op(op: object, max_ops: int) -> None:
    if isinstance(op, RangeRequest):
        _check_range(op)
    elif isinstance(op, PutRequest):
        _check_put(op)
    elif isinstance(op, DeleteRangeRequest):
        _check_delete(op)
    elif isinstance(op, TxnRequest):
        _check_txn(op, max_ops)
    else:
        raise KeyNotFoundError()  # etcd's answer to an empty RequestOp


def _hits(dels: list[tuple[bytes, bytes | None]], key: bytes) -> bool:
    """Whether ``key`` is in any of the deleted ranges."""
    for start, end in dels:
        if end is None:
            if key == start:
                return True
        elif start <= key and (not end or key < end):
            return True
    return False


def _check_intervals(
    ops: Sequence[RequestOp],
) -> tuple[set[bytes], list[tuple[bytes, bytes | None]]]:
    """etcd's checkIntervals: no key put twice, or put and deleted, in one branch.

    Both branches of a nested txn may put the same key (only one runs). As in
    etcd, a put in one nested txn followed by a delete of the key in a later
    sibling txn passes. Unlike etcd, whose interval tree reads a ``b"\\0"``
    range_end literally (an empty interval), a delete to ``b"\\0"`` covers every
    key from its start. So no key is deleted before a put of it in the same
    txn, and a put's checks made before the txn runs (``ignore_value``) hold
    when it runs: a txn never fails halfway.
    """
    dels: list[tuple[bytes, bytes | None]] = [
        (op.key, _gte_range(op.range_end)) for op in ops if isinstance(op, DeleteRangeRequest)
    ]
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, TxnRequest):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for key in puts_then:
            if key in puts or _hits(dels, key):
                raise DuplicateKeyError()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _hits(dels, key):
                raise DuplicateKeyError()
            puts.add(key)
        dels += dels_then
        dels += dels_else
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or _hits(dels, op.key):
                raise DuplicateKeyError()
            puts.add(op.key)
    return puts, dels
