"""``python -m cluster snapshot save|status|restore``: etcdctl's / etcdutl's snapshot commands.

A snapshot file is what the Maintenance.Snapshot RPC streams: a bbolt database
(``cluster.storage.bolt``) followed by the SHA-256 of it (32 bytes; etcd's rule: a
file whose size is 32 more than a multiple of 512 carries one). Files saved by
``etcdctl snapshot save`` from our members or from a real etcd are the same thing.

- ``save FILE``: streams the RPC from a member into ``FILE.part``, checks the
  trailer, fsyncs, renames to ``FILE`` (then fsyncs the directory), as etcdctl.
  With several ``--endpoints`` the next is tried when one cannot be reached.
- ``status FILE``: etcdutl's status: a CRC-32C (Castagnoli) over every bucket's
  name then every key and value, the revision of the last record of ``key``,
  the number of records, bbolt's data size; printed ``-w simple|json|table|fields``
  exactly as etcdctl/etcdutl print them. The trailer, when present, is verified.
- ``restore FILE``: a data dir for a member of a NEW cluster (etcdutl's restore):
  the trailer is checked (``--skip-hash-check`` allows a file without one, e.g. a
  copied ``member/snap/db``); the buckets are imported into a new LMDB backend with
  ``members`` rewritten from ``--initial-cluster`` and ``members_removed`` and
  ``alarm`` emptied (alarms name members of the old cluster; etcdutl keeps them,
  so there ``alarm disarm`` is needed after a restore), the consistent index set to
  the new log's; then a WAL whose first entries add every member (term 1, as a new
  cluster's bootstrap) and a ``.snap`` at that index. The result loads as the member
  would load it (store index, leases, auth) before the directory is renamed into
  place; an existing data dir is refused. Start the members with the same
  ``--name``, ``--initial-cluster``, ``--initial-cluster-token`` and peer URLs
  (``--initial-cluster-state new``, the default).

Progress bars (rich) are drawn on stderr when it is a terminal; otherwise silent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import mmap
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import lmdb
from crc32c import crc32c

from cluster.config import (
    URL,
    ConfigError,
    compute_cluster_id,
    compute_member_id,
    parse_initial_cluster,
    parse_urls,
)
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.raft import ConfState
from cluster.storage.backend import (
    CONSISTENT_INDEX_KEY,
    DEFAULT_QUOTA_BYTES,
    MEMBER_IDS_KEY,
    Backend,
)
from cluster.storage.bolt import BoltError, BoltReader, Buffer
from cluster.storage.codec import encode_index_term, encode_member_ids
from cluster.storage.durable import MemberPaths, open_raft_log

SHA_SIZE = 32
_HASHED_CHUNK = 1 << 20
_IMPORT_BATCH = 10_000  # records per LMDB putmulti
_IMPORT_COMMIT = 200_000  # records per LMDB write transaction

# etcd's meta records that describe the old cluster's Raft state, dropped by a restore.
_RAFT_META_KEYS = frozenset({CONSISTENT_INDEX_KEY, b"term", b"confState", MEMBER_IDS_KEY})
# Buckets a restore empties: membership is rewritten, alarms belong to old member ids.
_CLEARED_BUCKETS = frozenset({b"members", b"members_removed", b"alarm"})


class SnapshotFileError(Exception):
    """A snapshot file that cannot be used; names the file and the offset of the problem."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"snapshot: {path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class RestoreError(Exception):
    """A restore refused before it wrote anything (flags, an existing data dir)."""


# -- progress ---------------------------------------------------------------------------------


class Bar:
    """One progress bar; calling it advances it by a number of bytes."""

    def __init__(self, bars: Any = None, task_id: Any = None) -> None:
        self._bars = bars
        self._task_id = task_id

    def __call__(self, n: int) -> None:
        if self._bars is not None:
            self._bars.update(self._task_id, advance=n)

    def finish(self) -> None:
        """Fill the bar (one of unknown size, which only pulsed, is removed)."""
        if self._bars is None:
            return
        total = self._bars.tasks[self._task_id].total
        if total is None:
            self._bars.remove_task(self._task_id)
        else:
            self._bars.update(self._task_id, completed=total)


class Progress:
    """Byte-counting progress bars on stderr (rich) when it is a terminal; silent otherwise."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
                from rich.progress import Progress as Bars
            except ImportError:  # pragma: no cover - rich is a dependency
                return self
            self._bars = Bars(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def task(self, description: str, total: int | None) -> Bar:
        """A new bar of ``total`` bytes (None: unknown); a no-op one when silent."""
        if self._bars is None:
            return Bar()
        return Bar(self._bars, self._bars.add_task(description, total=total))


# -- the file ---------------------------------------------------------------------------------


def has_sha_trailer(size: int) -> bool:
    """etcd's test: bbolt data is a whole number of pages, so 32 bytes more is the hash."""
    return size % 512 == SHA_SIZE


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[mmap.mmap]:
    """The file mapped read-only. Views of it still referenced when the block ends (an
    exception's traceback holds some) keep the mapping until they are collected."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise SnapshotFileError(path, 0, "empty file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield mm
    finally:
        with contextlib.suppress(BufferError):
            mm.close()


def verify_sha256(path: str, buf: Buffer, advance: Callable[[int], None] | None = None) -> None:
    """Check the trailer of a snapshot (the whole file in ``buf``) against its data."""
    advance = advance or Bar()
    data_len = len(buf) - SHA_SIZE
    digest = hashlib.sha256()
    with memoryview(buf) as view:
        for at in range(0, data_len, _HASHED_CHUNK):
            with view[at : min(at + _HASHED_CHUNK, data_len)] as chunk:
                digest.update(chunk)
            advance(min(_HASHED_CHUNK, data_len - at))
        stored = bytes(view[data_len:])
    if digest.digest() != stored:
        raise SnapshotFileError(
            path,
            data_len,
            f"sha256 mismatch: the trailer says {stored.hex()}, the {data_len} bytes before "
            f"it hash to {digest.hexdigest()} (a damaged or truncated file)",
        )


def _bolt_error(path: str, exc: BoltError) -> SnapshotFileError:
    return SnapshotFileError(path, exc.offset, f"bad bbolt data: {exc.reason}")


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotStatus:
    """etcdutl's ``snapshot status``."""

    hash: int
    revision: int
    total_key: int
    total_size: int

    def as_json(self) -> dict[str, int]:
        return {
            "hash": self.hash,
            "revision": self.revision,
            "totalKey": self.total_key,
            "totalSize": self.total_size,
        }


def snapshot_status(path: str, progress: Progress | None = None) -> SnapshotStatus:
    """The status of the snapshot at ``path`` (``SnapshotFileError`` if it does not verify)."""
    progress = progress or Progress(False)
    with _mapped(path) as mm:
        size = len(mm)
        if has_sha_trailer(size):
            verify_sha256(path, mm, progress.task("checksum", size - SHA_SIZE))
            size -= SHA_SIZE
        view = memoryview(mm)[:size]
        try:
            return _status(path, view, progress)
        finally:
            view.release()


def _status(path: str, buf: memoryview, progress: Progress) -> SnapshotStatus:
    try:
        reader = BoltReader(buf)
        ps = reader.meta.page_size
        bar = progress.task("reading", reader.meta.size)
        reader = BoltReader(buf, on_pages=lambda n: bar(n * ps))
        crc = revision = total = 0
        for name, items in reader.buckets():
            crc = crc32c(name, crc)
            last = b""
            for key, value in items:
                crc = crc32c(value, crc32c(key, crc))
                total += 1
                last = key
            if name == b"key" and last:
                revision = int.from_bytes(last[:8], "big")
        bar.finish()
    except BoltError as exc:
        raise _bolt_error(path, exc) from exc
    return SnapshotStatus(crc, revision, total, reader.meta.size)


def humanize_bytes(n: int) -> str:
    """go-humanize's ``Bytes`` (SI units), as etcdctl prints sizes."""
    if n < 10:
        return f"{n} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = min(math.floor(math.log(n) / math.log(1000)), len(sizes) - 1)
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.0f} {sizes[e]}" if val >= 10 else f"{val:.1f} {sizes[e]}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as etcdctl draws it (olekukonko/tablewriter, upper-case centred headers,
    cells aligned right)."""
    header = [h.upper() for h in header]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centred(text: str, width: int) -> str:
        gap = width - len(text)
        return " " * (gap // 2) + text + " " * (gap - gap // 2)

    def row_line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [line, row_line([centred(h, w) for h, w in zip(header, widths, strict=True)]), line]
    out += [row_line([c.rjust(w) for c, w in zip(row, widths, strict=True)]) for row in rows]
    out.append(line)
    return "\n".join(out) + "\n"


def render_status(status: SnapshotStatus, write_out: str) -> str:
    """What ``etcdctl snapshot status -w <write_out>`` prints."""
    if write_out == "json":
        return json.dumps(status.as_json(), separators=(",", ":")) + "\n"
    if write_out == "fields":
        return (
            f'"Hash" : {status.hash}\n"Revision" : {status.revision}\n'
            f'"Keys" : {status.total_key}\n"Size" : {status.total_size}\n'
        )
    cells = [
        f"{status.hash:x}",
        str(status.revision),
        str(status.total_key),
        humanize_bytes(status.total_size),
    ]
    if write_out == "table":
        return format_table(["hash", "revision", "total keys", "total size"], [cells])
    return ", ".join(cells) + "\n"


# -- save -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """How to reach members: etcdctl's --endpoints, TLS files, --user, --dial-timeout."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    cacert: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""
    dial_timeout: float = 2.0

    def channel(self, target: str) -> grpc.aio.Channel:
        from cluster.client._core import CHANNEL_OPTIONS, TLSConfig

        address = target.removeprefix("http://").removeprefix("https://").rstrip("/")
        if target.startswith("https://") or self.cacert or self.cert:
            creds = TLSConfig(self.cacert or None, self.cert or None, self.key or None)
            return grpc.aio.secure_channel(address, creds.credentials(), options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)

    async def metadata(self, channel: grpc.aio.Channel) -> tuple[tuple[str, str], ...]:
        """The auth token metadata for ``--user`` (none without it)."""
        if not self.user:
            return ()
        name, sep, password = self.user.partition(":")
        req = pb.AuthenticateRequest(name=name, password=password if sep else self.password)
        resp = await rpc_pb2_grpc.AuthStub(channel).Authenticate(req, timeout=self.dial_timeout)
        return (("token", resp.token),)


@dataclass(frozen=True)
class SaveResult:
    path: str
    endpoint: str
    size: int  # the bbolt data, without the trailer
    revision: int  # the member's revision when the snapshot was taken
    seconds: float


async def save(conn: Connection, path: str, progress: Progress | None = None) -> SaveResult:
    """Save a snapshot from the first endpoint that streams one (etcdctl's ``snapshot save``)."""
    progress = progress or Progress(False)
    errors: list[str] = []
    for target in conn.endpoints:
        try:
            return await _save_from(conn, target, path, progress)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            errors.append(f"{target}: {exc.details()}")
        except TimeoutError:
            errors.append(f"{target}: not reachable within {conn.dial_timeout} s")
    raise ConnectionError("no endpoint could be reached: " + "; ".join(errors))


async def _save_from(conn: Connection, target: str, path: str, progress: Progress) -> SaveResult:
    started = time.monotonic()
    part = path + ".part"
    async with conn.channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), conn.dial_timeout)
        metadata = await conn.metadata(channel)
        call = rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(
            pb.SnapshotRequest(), metadata=metadata
        )
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                size, revision = await _receive(call, fd, part, progress)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
    os.rename(part, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return SaveResult(path, target, size, revision, time.monotonic() - started)


async def _receive(call: Any, fd: int, part: str, progress: Progress) -> tuple[int, int]:
    """Write the stream to ``fd``; check its last 32 bytes are the SHA-256 of the rest."""
    digest = hashlib.sha256()
    held = b""  # the last 32 bytes so far: the trailer if the stream ends now
    total = 0
    revision = 0
    bar: Bar | None = None
    async for resp in call:
        blob = resp.blob
        if bar is None:
            revision = resp.header.revision
            bar = progress.task("saving", len(blob) + resp.remaining_bytes)
        _write_all(fd, blob)
        total += len(blob)
        bar(len(blob))
        joined = held + blob
        digest.update(joined[:-SHA_SIZE])
        held = joined[-SHA_SIZE:]
    if total < SHA_SIZE or not has_sha_trailer(total):
        raise SnapshotFileError(part, total, "the stream ended without its SHA-256")
    if digest.digest() != held:
        raise SnapshotFileError(part, total - SHA_SIZE, "sha256 mismatch in the stream")
    return total - SHA_SIZE, revision


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreConfig:
    """etcdutl's ``snapshot restore`` flags."""

    snapshot: str
    data_dir: str
    name: str
    initial_cluster: dict[str, tuple[URL, ...]]
    initial_cluster_token: str
    initial_advertise_peer_urls: tuple[URL, ...]
    skip_hash_check: bool = False

    def member_ids(self) -> dict[str, int]:
        return {
            name: compute_member_id(urls, self.initial_cluster_token)
            for name, urls in self.initial_cluster.items()
        }


@dataclass(frozen=True)
class RestoreResult:
    data_dir: str
    member_id: int
    cluster_id: int
    revision: int  # the store's revision
    records: int  # bucket records imported
    index: int  # the raft index (and consistent index) the member starts from
    seconds: float


def _check_flags(cfg: RestoreConfig) -> tuple[int, int, dict[str, int]]:
    """(member id, cluster id, ids by name), or ``RestoreError`` (etcd's VerifyBootstrap)."""
    mine = cfg.initial_cluster.get(cfg.name)
    if mine is None:
        raise RestoreError(f"--initial-cluster has no member named {cfg.name!r} (--name)")
    if sorted(map(str, mine)) != sorted(map(str, cfg.initial_advertise_peer_urls)):
        advertised = ",".join(map(str, cfg.initial_advertise_peer_urls))
        raise RestoreError(
            f"--initial-cluster lists {cfg.name}={','.join(map(str, mine))} but "
            f"--initial-advertise-peer-urls is {advertised}"
        )
    ids = cfg.member_ids()
    if len(set(ids.values())) != len(ids):
        raise RestoreError("--initial-cluster: two members have the same peer URLs")
    return ids[cfg.name], compute_cluster_id(list(ids.values())), ids


def restore(cfg: RestoreConfig, progress: Progress | None = None) -> RestoreResult:
    """Build a new member's data dir from a snapshot (see the module docstring)."""
    started = time.monotonic()
    progress = progress or Progress(False)
    member_id, cluster_id, ids = _check_flags(cfg)
    if os.path.lexists(cfg.data_dir):
        raise RestoreError(f"data-dir {cfg.data_dir!r} exists")
    parent = os.path.dirname(os.path.abspath(cfg.data_dir))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    with _mapped(cfg.snapshot) as mm:
        size = len(mm)
        if has_sha_trailer(size):
            if not cfg.skip_hash_check:
                verify_sha256(cfg.snapshot, mm, progress.task("checksum", size - SHA_SIZE))
            size -= SHA_SIZE
        elif not cfg.skip_hash_check:
            raise SnapshotFileError(
                cfg.snapshot,
                size,
                "no SHA-256 trailer (the size is not 32 more than a multiple of 512): "
                "--skip-hash-check restores a file without one (e.g. a copied member/snap/db)",
            )
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(cfg.data_dir)}.restore-", dir=parent)
        try:
            view = memoryview(mm)[:size]
            try:
                built = _build(cfg, view, tmp, member_id, cluster_id, ids, progress)
            finally:
                view.release()
            os.rename(tmp, cfg.data_dir)
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    revision, records, index = built
    return RestoreResult(
        cfg.data_dir, member_id, cluster_id, revision, records, index, time.monotonic() - started
    )


def _build(
    cfg: RestoreConfig,
    buf: memoryview,
    data_dir: str,
    member_id: int,
    cluster_id: int,
    ids: dict[str, int],
    progress: Progress,
) -> tuple[int, int, int]:
    """Fill ``data_dir``: backend, WAL, .snap; (revision, records, raft index)."""
    paths = MemberPaths(data_dir)
    os.makedirs(paths.snap_dir, mode=0o700)
    index, term = len(ids), 1  # the bootstrap entries: one ConfChange per member
    quota = max(DEFAULT_QUOTA_BYTES, 2 * len(buf) + (64 << 20))
    backend = Backend(paths.db_path, quota_bytes=quota)
    try:
        try:
            reader = BoltReader(buf)
            ps = reader.meta.page_size
            bar = progress.task("importing", reader.meta.size)
            reader = BoltReader(buf, on_pages=lambda n: bar(n * ps))
            records = _import(cfg, reader, backend, member_id, cluster_id, ids, index, term)
            bar.finish()
        except BoltError as exc:
            raise _bolt_error(cfg.snapshot, exc) from exc
        bar = progress.task("loading", None)
        revision = _load_as_a_member(cfg.snapshot, backend)
        bar.finish()
    finally:
        backend.close()
    log_store = open_raft_log(data_dir, member_id, cluster_id)
    try:
        log_store.bootstrap(sorted(ids.values()))
        log_store.snapshot(index, ConfState(voters=frozenset(ids.values())))
    finally:
        log_store.close()
    for d in (paths.snap_dir, paths.wal_dir, paths.member_dir, data_dir):
        _fsync_dir(d)
    return revision, records, index


def _import(
    cfg: RestoreConfig,
    reader: BoltReader,
    backend: Backend,
    member_id: int,
    cluster_id: int,
    ids: dict[str, int],
    index: int,
    term: int,
) -> int:
    """Copy the snapshot's buckets into ``backend`` (LMDB), rewriting what names the old
    cluster; the number of records read."""
    from cluster.proto.etcdserverpb.rpc_pb2 import Member

    def meta(items: Iterator[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        records = {k: v for k, v in items if k not in _RAFT_META_KEYS}
        records[CONSISTENT_INDEX_KEY] = encode_index_term(index, term)
        records[MEMBER_IDS_KEY] = encode_member_ids(member_id, cluster_id)
        return sorted(records.items())

    def members(_items: Iterator[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return sorted(
            (
                mid.to_bytes(8, "big"),
                Member(
                    ID=mid, name=name, peerURLs=[str(u) for u in cfg.initial_cluster[name]]
                ).SerializeToString(),
            )
            for name, mid in ids.items()
        )

    rewritten: dict[bytes, Callable[[Iterator[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]]
    rewritten = {b"meta": meta, b"members": members}
    dbs = {name.encode(): db for name, db in backend.dbs.items()}
    records = 0
    for name, items in reader.buckets():
        counted = _Counted(items)
        db = dbs.get(name)
        if db is None:
            print(f"snapshot: skipping bucket {name!r}: not one of this store's", file=sys.stderr)
        elif name in rewritten:
            _put_sorted(backend.env, db, iter(rewritten.pop(name)(counted)))
        elif name not in _CLEARED_BUCKETS:
            _put_sorted(backend.env, db, counted)
        records += counted.drain()
    for name, rewrite in rewritten.items():  # a snapshot without them
        _put_sorted(backend.env, dbs[name], iter(rewrite(iter(()))))
    return records


class _Counted:
    """An iterator of records that counts them; ``drain`` reads what is left."""

    def __init__(self, items: Iterator[tuple[bytes, bytes]]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        item = next(self._items)
        self.count += 1
        return item

    def drain(self) -> int:
        for _ in self:
            pass
        return self.count


def _put_sorted(env: lmdb.Environment, db: Any, items: Iterator[tuple[bytes, bytes]]) -> int:
    """Append ``items`` (in increasing key order) to ``db``; how many there were."""
    total = 0
    txn = env.begin(write=True)
    try:
        in_txn = 0
        batch: list[tuple[bytes, bytes]] = []
        for item in items:
            batch.append(item)
            if len(batch) == _IMPORT_BATCH:
                txn.cursor(db=db).putmulti(batch, append=True)
                total += len(batch)
                in_txn += len(batch)
                batch = []
                if in_txn >= _IMPORT_COMMIT:
                    txn.commit()
                    txn = env.begin(write=True)
                    in_txn = 0
        if batch:
            txn.cursor(db=db).putmulti(batch, append=True)
            total += len(batch)
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    return total


def _load_as_a_member(path: str, backend: Backend) -> int:
    """Open the imported data as a member does (store index, leases, alarms, auth); the
    store's revision. A compaction recorded as scheduled but unfinished is finished."""
    from cluster.auth import AuthStore
    from cluster.lease import Lessor
    from cluster.mvcc.store import KVStore
    from cluster.server.alarms import Alarms

    try:
        kv = KVStore(backend)
        Lessor(backend)
        Alarms(backend)
        AuthStore(backend)
        backend.commit()
    except Exception as exc:
        raise SnapshotFileError(path, 0, f"the data does not load as a member's: {exc}") from exc
    return kv.current_revision


# -- the command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--endpoints", default="127.0.0.1:2379", help="gRPC endpoints (a,b,c)")
    conn.add_argument("--dial-timeout", default="2s", help="dial timeout (e.g. 2s, 500ms)")
    conn.add_argument("--cacert", default="", help="verify members with this CA bundle")
    conn.add_argument("--cert", default="", help="client certificate for TLS")
    conn.add_argument("--key", default="", help="client key for TLS")
    conn.add_argument("--user", default="", help="username[:password] for authentication")
    conn.add_argument("--password", default="", help="password (when --user has none)")

    parser = argparse.ArgumentParser(
        prog="python -m cluster snapshot",
        description="Save, inspect and restore backend snapshots (etcdctl/etcdutl snapshot).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", parents=[conn], help="save a member's backend to a file")
    p.add_argument("file", help="where to save it (written as FILE.part, then renamed)")
    p = sub.add_parser("status", help="hash, revision, keys and size of a snapshot file")
    p.add_argument("file", help="a snapshot file")
    p.add_argument(
        "-w",
        "--write-out",
        default="simple",
        choices=("simple", "json", "table", "fields"),
        help="output format (etcdctl's)",
    )
    p = sub.add_parser("restore", help="a new member's data dir from a snapshot file")
    p.add_argument("file", help="a snapshot file (or a member's db with --skip-hash-check)")
    p.add_argument("--data-dir", default="", help="directory to create (default: <name>.etcd)")
    p.add_argument("--name", default="default", help="this member's name")
    p.add_argument(
        "--initial-cluster",
        default="default=http://localhost:2380",
        help="the new cluster: name=peer-url,...",
    )
    p.add_argument(
        "--initial-cluster-token", default="etcd-cluster", help="the new cluster's token"
    )
    p.add_argument(
        "--initial-advertise-peer-urls",
        default="http://localhost:2380",
        help="this member's peer URLs (as in --initial-cluster)",
    )
    p.add_argument(
        "--skip-hash-check", action="store_true", help="accept a file without its SHA-256"
    )
    return parser


def _seconds(text: str) -> float:
    text = text.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def main(argv: Sequence[str]) -> int:
    """Run one snapshot command; the exit status (etcdctl's: 0, or 1 with ``Error: ...``)."""
    args = _parser().parse_args(list(argv))
    try:
        with Progress() as progress:
            text = _run(args, progress)
    except (SnapshotFileError, RestoreError, ConfigError, ConnectionError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"Error: {exc.details()}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace, progress: Progress) -> str:
    """Run the command; what to print once the progress bars are gone."""
    if args.command == "status":
        return render_status(snapshot_status(args.file, progress), args.write_out)
    if args.command == "save":
        conn = Connection(
            endpoints=tuple(e for e in args.endpoints.split(",") if e.strip()),
            cacert=args.cacert,
            cert=args.cert,
            key=args.key,
            user=args.user,
            password=args.password,
            dial_timeout=_seconds(args.dial_timeout),
        )
        saved = asyncio.run(save(conn, args.file, progress))
        return f"Snapshot saved at {saved.path}\n"
    name = args.name
    cfg = RestoreConfig(
        snapshot=args.file,
        data_dir=args.data_dir or f"{name}.etcd",
        name=name,
        initial_cluster=parse_initial_cluster(args.initial_cluster),
        initial_cluster_token=args.initial_cluster_token,
        initial_advertise_peer_urls=parse_urls(
            args.initial_advertise_peer_urls, "initial-advertise-peer-urls"
        ),
        skip_hash_check=args.skip_hash_check,
    )
    result = restore(cfg, progress)
    return (
        f"restored snapshot {cfg.snapshot} (revision {result.revision}, {result.records} "
        f"records) into {result.data_dir}: member {result.member_id:x} of cluster "
        f"{result.cluster_id:x}, raft index {result.index}\n"
    )
