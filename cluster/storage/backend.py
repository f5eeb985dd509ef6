"""The member's backend: one LMDB environment, etcd's bbolt equivalent.

``<data-dir>/member/snap/db`` holds named databases ("buckets", etcd's names)
for MVCC revisions, metadata, leases, auth and membership. Applied entries are
written through one long-lived ``BatchTx``: many writes accumulate in a single
LMDB write transaction, committed when ``commit_if_due`` finds enough writes
or enough time since the last commit (etcd's batch limit / interval), so the
fsync cost is shared. The consistent index (last applied raft index and its
term) is written in the same transaction as the data it describes: after a
crash the two always agree, and restart replays exactly the WAL entries after
it.

LMDB write transactions belong to the thread that began them: the member
drives the batch (puts, commits) from one thread at a time. Reads of
committed data (``read_txn``) may come from any thread.

A follower too far behind gets the whole database: ``snapshot_chunks`` streams
a consistent, compacted copy framed as ``kind (1 byte) + payload`` chunks and
a final trailer with the SHA-256 and length of the data; ``install_snapshot``
writes it beside the db, verifies it, and renames it over the db. ``defrag``
rewrites the db without its free pages, as etcd's defragment does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import IO

import lmdb

from cluster import faults

from .codec import (
    CodecError,
    decode_index_term,
    decode_member_ids,
    encode_index_term,
    encode_member_ids,
)
from .fs import FileSystem, OsFileSystem

log = logging.getLogger(__name__)

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024  # etcd's --quota-backend-bytes default
DEFAULT_BATCH_LIMIT = 10000
DEFAULT_BATCH_INTERVAL = 0.1  # seconds
DEFAULT_CHUNK_SIZE = 1024 * 1024
SYNC_EVERY = 8 * 1024 * 1024  # bytes of a received snapshot written between fsyncs
RETIRED_SUFFIX = ".retired"  # a replaced db, its blocks freed gradually (``release_retired``)
RELEASE_STEP = 16 * 1024 * 1024  # bytes freed per truncation
RELEASE_PAUSE = 0.01  # seconds between truncations

CONSISTENT_INDEX_KEY = b"consistent_index"
MEMBER_IDS_KEY = b"member_ids"

CHUNK_DATA = 0x01
CHUNK_TRAILER = 0x02
_TRAILER = struct.Struct(">32sQ")  # sha256 of all data payloads, their total length

_MAX_DBS = 32  # room for buckets added later without reopening differently


class BackendError(Exception):
    pass


class BackendQuotaError(BackendError):
    """The database reached its size limit; the uncommitted batch was discarded."""

    def __init__(self, lost_writes: int) -> None:
        super().__init__("etcdserver: mvcc: database space exceeded")
        self.lost_writes = lost_writes


class DataDirMismatchError(BackendError):
    """The data dir was written by another member or cluster."""


class SnapshotStreamError(BackendError):
    """A streamed backend snapshot is damaged or incomplete; nothing was installed."""


# -- reads --------------------------------------------------------------------


def _range(
    txn: lmdb.Transaction[bytes],
    db: lmdb._Database,
    start: bytes,
    end: bytes | None,
    limit: int,
) -> list[tuple[bytes, bytes]]:
    """Key ``start`` alone (``end`` None), or keys in [start, end) in byte order."""
    if end is None:
        value = txn.get(start, db=db)
        return [] if value is None else [(start, value)]
    out: list[tuple[bytes, bytes]] = []
    with txn.cursor(db=db) as cur:
        if not cur.set_range(start):
            return out
        for key, value in cur:
            if key >= end or (limit > 0 and len(out) >= limit):
                break
            out.append((key, value))
    return out


class ReadTxn:
    """A read-only view of the committed data as of when it began."""

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, bucket: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[bucket])

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        return _range(self._txn, self._dbs[bucket], start, end, limit)

    def consistent_index(self) -> tuple[int, int]:
        return _decode_consistent_index(self.get("meta", CONSISTENT_INDEX_KEY))

    def items(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of ``bucket`` in key order, read lazily (a cursor)."""
        with self._txn.cursor(db=self._dbs[bucket]) as cur:
            for key, value in cur:
                yield bytes(key), bytes(value)


def _decode_consistent_index(raw: bytes | None) -> tuple[int, int]:
    """(index, term); (0, 0) for a backend that has applied nothing."""
    if raw is None:
        return 0, 0
    try:
        return decode_index_term(raw)
    except CodecError as exc:
        raise BackendError(f"backend: bad consistent index in meta: {exc}") from exc


# -- the batch ------------------------------------------------------------------


class BatchTx:
    """The backend's single write batch: one LMDB write transaction until ``commit``.

    Reads through it see its own uncommitted writes. It begins lazily at the
    first write, from the thread that will also commit it.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._txn: lmdb.Transaction[bytes] | None = None
        self._owner = 0
        self.pending = 0  # writes since the last commit
        self.pending_bytes = 0  # bytes of keys and values written since the last commit
        # The consistent index as this batch sees it, once read: the applier asks for it
        # and sets it for every entry, and a cached check saves a read and a decode each.
        self._consistent: tuple[int, int] | None = None

    def _write_txn(self) -> lmdb.Transaction[bytes]:
        txn = self._txn
        if txn is None:
            txn = self._txn = self._backend.env.begin(write=True)
            self._owner = threading.get_ident()
        elif self._owner != threading.get_ident():
            raise BackendError("backend: the batch is owned by another thread")
        return txn

    def _db(self, bucket: str) -> lmdb._Database:
        return self._backend.dbs[bucket]

    def put(self, bucket: str, key: bytes, value: bytes) -> None:
        db = self._db(bucket)
        try:
            self._write_txn().put(key, value, db=db)
        except lmdb.MapFullError as exc:
            raise self._quota_exceeded() from exc
        self.pending += 1
        self.pending_bytes += len(key) + len(value)

    def delete(self, bucket: str, key: bytes) -> bool:
        """Remove ``key``; False if it was absent."""
        db = self._db(bucket)
        try:
            found = self._write_txn().delete(key, db=db)  # may need pages: copy-on-write
        except lmdb.MapFullError as exc:
            raise self._quota_exceeded() from exc
        self.pending += 1
        return found

    def get(self, bucket: str, key: bytes) -> bytes | None:
        if self._txn is None:
            with self._backend.read_txn() as rtx:
                return rtx.get(bucket, key)
        return self._write_txn().get(key, db=self._db(bucket))

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        if self._txn is None:
            with self._backend.read_txn() as rtx:
                return rtx.range(bucket, start, end, limit)
        return _range(self._write_txn(), self._db(bucket), start, end, limit)

    def consistent_index(self) -> tuple[int, int]:
        """The consistent index including this batch's uncommitted update."""
        if self._consistent is None:
            self._consistent = _decode_consistent_index(self.get("meta", CONSISTENT_INDEX_KEY))
        return self._consistent

    def set_consistent_index(self, index: int, term: int) -> None:
        """Record that everything up to raft ``index`` is in this batch; never goes back."""
        current, _ = self.consistent_index()
        if index < current:
            raise ValueError(f"backend: consistent index {index} is behind {current}")
        self.put("meta", CONSISTENT_INDEX_KEY, encode_index_term(index, term))
        self._consistent = (index, term)

    def commit(self) -> None:
        """Make every write since the last commit durable (one fsync).

        If it raises, the batch is gone: the data and consistent index on disk
        are those of the previous commit.
        """
        if self._txn is None:
            return
        txn = self._write_txn()
        self._txn = None
        lost, self.pending = self.pending, 0
        self.pending_bytes = 0
        consistent, self._consistent = self._consistent, None  # unknown if the commit fails
        began = time.perf_counter()
        if faults.CRASH:
            faults.crash_point("backend-before-commit")
        try:
            txn.commit()
        except lmdb.MapFullError as exc:
            raise BackendQuotaError(lost) from exc
        finally:
            self._backend._size = None  # a commit is what grows the file
        self._consistent = consistent
        if faults.CRASH:
            faults.crash_point("backend-after-commit")
        if self._backend.on_commit is not None:
            self._backend.on_commit(time.perf_counter() - began)

    def abort(self) -> None:
        """Discard every write since the last commit."""
        if self._txn is None:
            return
        txn = self._write_txn()
        self._txn = None
        self.pending = 0
        self.pending_bytes = 0
        self._consistent = None
        txn.abort()

    def _quota_exceeded(self) -> BackendQuotaError:
        # MDB_MAP_FULL leaves the transaction unusable: the whole batch is lost.
        lost = self.pending + 1
        self.abort()
        return BackendQuotaError(lost)

    @property
    def active(self) -> bool:
        return self._txn is not None


# -- the backend ------------------------------------------------------------------


def _page_rounded(n: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    return max(page, -(-n // page) * page)


def _data_dir_of(db_path: str) -> str:
    """``<data-dir>`` of ``<data-dir>/member/snap/db``; the db's directory otherwise."""
    snap_dir = os.path.dirname(os.path.abspath(db_path))
    member_dir = os.path.dirname(snap_dir)
    if os.path.basename(snap_dir) == "snap" and os.path.basename(member_dir) == "member":
        return os.path.dirname(member_dir)
    return snap_dir


class Backend:
    """The LMDB environment of one member, with its buckets and its write batch."""

    BUCKETS: tuple[str, ...] = (
        "alarm",
        "key",
        "meta",
        "lease",
        "auth",
        "authUsers",
        "authRoles",
        "members",
        "members_removed",
        "cluster",
    )

    def __init__(
        self,
        path: str,
        *,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
    ) -> None:
        self.path = path
        self.quota_bytes = quota_bytes
        self.batch_limit = batch_limit
        self.batch_interval = batch_interval
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.env = self._open_env()
        try:
            self.dbs = self._open_buckets()
        except BaseException:
            self.env.close()
            raise
        self._batch = BatchTx(self)
        self._size: int | None = None  # the file's, as of the last commit (None: stat it)
        self._last_commit: float | None = None
        self.on_commit: Callable[[float], None] | None = None  # seconds per commit (metrics)
        self._closed = False
        # Held while ``snapshot_chunks`` copies the environment (maybe in a worker thread)
        # and while ``close``/``defrag`` close it: never closed under a running copy.
        self._env_guard = threading.Lock()

    def _open_env(self) -> lmdb.Environment:
        try:
            return lmdb.open(
                self.path,
                subdir=False,
                map_size=_page_rounded(self.quota_bytes),
                max_dbs=_MAX_DBS,
                sync=True,
                metasync=True,
                lock=True,
                mode=0o600,
            )
        except lmdb.Error as exc:
            raise BackendError(f"backend: cannot open {self.path}: {exc}") from exc

    def _open_buckets(self) -> dict[str, lmdb._Database]:
        with self.env.begin(write=True) as txn:
            return {name: self.env.open_db(name.encode(), txn=txn) for name in self.BUCKETS}

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------
    def batch(self) -> BatchTx:
        return self._batch

    def commit(self, now: float | None = None) -> None:
        """Commit the batch now (etcd's ForceCommit); ``now`` restarts the interval."""
        self._batch.commit()
        if now is not None:
            self._last_commit = now

    def commit_if_due(self, now: float) -> bool:
        """Commit if the batch holds ``batch_limit`` writes or ``batch_interval`` has passed.

        ``now`` is the caller's clock (seconds); the first call only starts
        the interval. Returns whether it committed.
        """
        if self._last_commit is None:
            self._last_commit = now
        pending = self._batch.pending
        if pending == 0 and not self._batch.active:
            return False
        if pending < self.batch_limit and now - self._last_commit < self.batch_interval:
            return False
        self.commit(now)
        return True

    # -- reads ---------------------------------------------------------------
    @contextlib.contextmanager
    def read_txn(self) -> Iterator[ReadTxn]:
        """A consistent read-only view of committed data (not the open batch)."""
        with self.env.begin(write=False) as txn:
            yield ReadTxn(txn, self.dbs)

    def get(self, bucket: str, key: bytes) -> bytes | None:
        with self.read_txn() as rtx:
            return rtx.get(bucket, key)

    def range(
        self, bucket: str, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """Committed ``(key, value)`` pairs: ``start`` alone, or keys in [start, end)."""
        with self.read_txn() as rtx:
            return rtx.range(bucket, start, end, limit)

    def consistent_index(self) -> tuple[int, int]:
        """The committed (index, term) of the last raft entry applied; (0, 0) if none."""
        with self.read_txn() as rtx:
            return rtx.consistent_index()

    # -- member identity ---------------------------------------------------------
    def member_ids(self) -> tuple[int, int] | None:
        """(member id, cluster id) stored in meta, or None for a fresh backend."""
        raw = self.get("meta", MEMBER_IDS_KEY)
        if raw is None:
            return None
        try:
            return decode_member_ids(raw)
        except CodecError as exc:
            raise BackendError(f"backend: bad member ids in meta: {exc}") from exc

    def set_member_ids(self, member_id: int, cluster_id: int) -> None:
        """Store the ids, committing them (and the pending batch) at once."""
        self._batch.put("meta", MEMBER_IDS_KEY, encode_member_ids(member_id, cluster_id))
        self._batch.commit()

    def check_member_ids(self, member_id: int, cluster_id: int) -> None:
        """Refuse a backend written by another member or cluster; a fresh one passes."""
        stored = self.member_ids()
        if stored is None or stored == (member_id, cluster_id):
            return
        raise DataDirMismatchError(
            f"data dir {_data_dir_of(self.path)} belongs to member {stored[0]:x} of cluster "
            f"{stored[1]:x}, not member {member_id:x} of cluster {cluster_id:x}: "
            "remove this member and add a fresh one instead of reusing its data dir"
        )

    # -- size ----------------------------------------------------------------
    def size_bytes(self) -> int:
        """Size of the db file on disk (etcd's dbSize).

        Only a commit (or defrag) changes it, so it is looked up once after each: every
        write asks, for the quota check.
        """
        if self._size is None:
            self._size = os.stat(self.path).st_size
        return self._size

    def size_in_use_bytes(self) -> int:
        """Bytes of pages holding data: the file less its free pages (etcd's dbSizeInUse).

        Counts the pages of every bucket and of the main database plus LMDB's
        two meta pages; pages on LMDB's free list are excluded.
        """
        with self.env.begin() as txn:
            stats = [txn.stat(db) for db in self.dbs.values()]
            stats.append(txn.stat())
        pages = 2 + sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
        return pages * stats[0]["psize"]

    # -- snapshot ------------------------------------------------------------------
    def snapshot_chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Generator[bytes, None, None]:
        """A consistent, compacted copy of the committed database as framed chunks.

        The copy is taken now, into an unlinked temp file beside the db (so a
        crash leaves nothing behind); commit the batch first if its writes
        must be included. Chunks are ``CHUNK_DATA + payload``, then one
        ``CHUNK_TRAILER + sha256 + u64 length``.

        May run in a worker thread (the copy is a read transaction; it does not
        touch the batch, and LMDB releases the GIL meanwhile): ``close`` and
        ``defrag`` wait for the copy before closing the environment.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        fd, tmp = tempfile.mkstemp(prefix=".db-snapshot-", dir=os.path.dirname(self.path) or ".")
        os.unlink(tmp)
        f = os.fdopen(fd, "w+b")
        try:
            with self._env_guard:
                if self._closed:
                    raise BackendError(f"backend: {self.path} is closed")
                self.env.copyfd(fd, compact=True)
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return _framed(f, chunk_size)

    def defrag(self) -> None:
        """Rewrite the db without its free pages (etcd's Defrag); the file shrinks.

        Commits the batch, writes a compacted copy beside the db, fsyncs it,
        closes the environment, renames the copy over the db (then fsyncs the
        directory) and reopens it. A crash leaves either the old or the new
        db, both holding the same committed data. The old file is left as
        ``<db>.retired`` for ``release_retired``. Every read transaction
        must have ended: the environment is closed under them. Runs in the
        caller's thread, which must own the batch; nothing else may use the
        backend meanwhile (the member's single event loop guarantees it).
        """
        self._batch.commit()
        tmp = self.path + ".defrag"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                self.env.copyfd(fd, compact=True)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._env_guard:  # a snapshot copy in a worker thread finishes first
            self.env.close()
            try:
                replace_retiring(tmp, self.path)
            finally:
                # Whatever the rename did, reopen what is at the path (old or new: same data).
                self._size = None
                self.env = self._open_env()
                self.dbs = self._open_buckets()

    def close(self) -> None:
        """Commit the pending batch (as etcd does on shutdown) and close the environment."""
        if self._closed:
            return
        try:
            self._batch.commit()
        finally:
            with self._env_guard:  # a snapshot copy in a worker thread finishes first
                self._closed = True
                self.env.close()


def _framed(f: IO[bytes], chunk_size: int) -> Generator[bytes, None, None]:
    digest = hashlib.sha256()
    total = 0
    try:
        while payload := f.read(chunk_size):
            digest.update(payload)
            total += len(payload)
            yield bytes([CHUNK_DATA]) + payload
    finally:
        # The copy is unlinked: closing it would free all its blocks at once, in whatever
        # thread streams it (the event loop's, in a member). A thread frees it in steps.
        threading.Thread(target=_close_freed, args=(f,), name="free-snapshot-copy").start()
    yield bytes([CHUNK_TRAILER]) + _TRAILER.pack(digest.digest(), total)


def _close_freed(f: IO[bytes]) -> None:
    try:
        free_gradually(f.fileno())
    except OSError:
        log.warning("backend: could not free a snapshot copy in steps", exc_info=True)
    finally:
        f.close()


# -- install -----------------------------------------------------------------------


def install_snapshot(
    db_path: str,
    chunks: Iterable[bytes],
    fs: FileSystem | None = None,
    *,
    member_ids: tuple[int, int] | None = None,
) -> None:
    """Replace the db at ``db_path`` with a streamed snapshot, all or nothing.

    ``prepare_snapshot`` then ``commit_snapshot``; the backend must be closed
    before the commit (it may stay open while the snapshot is prepared).
    """
    prepare_snapshot(db_path, chunks, fs, member_ids=member_ids)
    commit_snapshot(db_path)
    release_retired(db_path)


def prepare_snapshot(
    db_path: str,
    chunks: Iterable[bytes],
    fs: FileSystem | None = None,
    *,
    member_ids: tuple[int, int] | None = None,
) -> None:
    """Write a streamed snapshot beside the db at ``db_path``, ready for ``commit_snapshot``.

    The stream goes to ``db_path + ".tmp"``; only when its trailer's checksum
    and length match is it kept, fsynced. Otherwise ``SnapshotStreamError``,
    and the temp file is removed: the db is untouched. It does not touch the
    db itself, so it may run in a worker thread while the backend is open.
    A leader's backend carries the leader's ids: ``member_ids`` (the receiving
    member's) replaces them, so the db is never, even after a crash, one that
    names another member.
    """
    fs = fs or OsFileSystem()
    tmp = db_path + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    out = fs.open_append(tmp)
    unsynced = 0

    def write(payload: bytes) -> None:
        # Synced as it comes: one fsync of the whole image at the end would flush hundreds
        # of MB at once, and every other fsync on the disk (the WAL's) would wait behind it.
        nonlocal unsynced
        out.write(payload)
        unsynced += len(payload)
        if unsynced >= SYNC_EVERY:
            out.sync()
            unsynced = 0

    try:
        try:
            _receive(chunks, write)
            out.sync()
        finally:
            out.close()
        if member_ids is not None:
            _stamp_member_ids(tmp, *member_ids)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.remove(tmp)
        raise


def commit_snapshot(db_path: str) -> None:
    """Rename the prepared snapshot over the (closed) db, then fsync the directory.

    The old db is kept as ``<db>.retired`` for ``release_retired``.
    """
    replace_retiring(db_path + ".tmp", db_path)


def replace_retiring(new: str, path: str) -> None:
    """Rename ``new`` over ``path`` (atomic, directory fsynced), keeping the old file's blocks.

    Deleting a large file frees all its blocks at once, inside the rename that drops
    its last name: on ext4 that is one big journal transaction, and every fsync on the
    file system waits for it (a member's WAL fsyncs stalled 80-130 ms while a 330 MB db
    was replaced). So the old file first gets a second name, ``<path>.retired``, and
    ``release_retired`` frees it a step at a time later. A crash in between leaves that
    name behind; ``release_retired`` at the next start deals with it.
    """
    retired = path + RETIRED_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(retired)  # left by a crash before it was released
    with contextlib.suppress(FileNotFoundError):
        os.link(path, retired)
    os.rename(new, path)
    OsFileSystem().sync_dir(os.path.dirname(os.path.abspath(path)))


def release_retired(db_path: str) -> bool:
    """Free a replaced db's blocks a step at a time, then remove it; False if there was none.

    Only the file's last name is truncated: after a crash between ``replace_retiring``'s
    link and its rename, ``<db>.retired`` is a second name of the live db, and is only
    unlinked. Blocking (it pauses between steps): for a worker thread.
    """
    retired = db_path + RETIRED_SUFFIX
    try:
        fd = os.open(retired, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_nlink == 1:
            free_gradually(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        if os.stat(retired).st_ino == st.st_ino:  # not a newer one, retired meanwhile
            os.unlink(retired)
    return True


def free_gradually(fd: int) -> None:
    """Truncate the file open at ``fd`` to nothing, ``RELEASE_STEP`` bytes at a time.

    A large file freed at once is one long file-system transaction that every fsync on
    the disk waits for (see ``replace_retiring``); freed in steps, none waits long.
    """
    size = os.fstat(fd).st_size
    while size > 0:
        size = max(0, size - RELEASE_STEP)
        os.ftruncate(fd, size)
        time.sleep(RELEASE_PAUSE)


def _stamp_member_ids(path: str, member_id: int, cluster_id: int) -> None:
    """Write (and fsync) this member's ids into the LMDB file at ``path``."""
    env = lmdb.open(
        path,
        subdir=False,
        lock=False,
        max_dbs=_MAX_DBS,
        map_size=_page_rounded(os.path.getsize(path) + 16 * 1024 * 1024),
    )
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.put(MEMBER_IDS_KEY, encode_member_ids(member_id, cluster_id), db=meta)
        env.sync(True)
    finally:
        env.close()


def _receive(chunks: Iterable[bytes], write: Callable[[bytes], None]) -> None:
    """Write the data payloads of ``chunks``; check the trailer ends the stream and matches."""
    digest = hashlib.sha256()
    total = 0
    trailer: bytes | None = None
    for n, chunk in enumerate(chunks):
        if trailer is not None:
            raise SnapshotStreamError(f"backend snapshot: chunk {n} after the trailer")
        if not chunk:
            raise SnapshotStreamError(f"backend snapshot: chunk {n} is empty")
        kind, payload = chunk[0], chunk[1:]
        if kind == CHUNK_DATA:
            digest.update(payload)
            total += len(payload)
            write(payload)
        elif kind == CHUNK_TRAILER:
            trailer = payload
        else:
            raise SnapshotStreamError(f"backend snapshot: chunk {n} has unknown kind {kind}")
    if trailer is None:
        raise SnapshotStreamError("backend snapshot: stream ended without its trailer")
    if len(trailer) != _TRAILER.size:
        raise SnapshotStreamError(f"backend snapshot: trailer of {len(trailer)} bytes")
    want_digest, want_total = _TRAILER.unpack(trailer)
    if total != want_total:
        raise SnapshotStreamError(
            f"backend snapshot: {total} bytes received, sender sent {want_total}"
        )
    if digest.digest() != want_digest:
        raise SnapshotStreamError("backend snapshot: sha256 mismatch")
