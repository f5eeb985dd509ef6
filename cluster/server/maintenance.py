"""Maintenance service: status, hashes, snapshot, defragment, leader transfer, alarms.

What etcd's v3rpc/maintenance.go answers, with its codes and messages:

- ``Status``: what ``etcdctl endpoint status`` shows.
- ``Hash``: etcd's definition (mvcc ``store.Hash``, backend ``Hash``), not a
  checksum of the db file: the batch is committed, then a CRC-32C
  (Castagnoli) is fed, for every bucket in name order, the bucket's name and
  then each key and value in key order, leaving out ``meta``'s
  ``consistent_index`` and ``term`` (etcd's ``DefaultIgnores``: they follow
  the Raft log, not the data). The records are those of the bbolt export
  below, so our member-private ``meta/member_ids`` is not in it either: two
  members holding the same data agree. (An LMDB file's bytes depend on its
  page history and differ between members that hold the same data, so a
  file checksum would be useless for comparing members.) The value differs
  from a real etcd's over the same keys, whose backend has buckets ours
  lacks; compare members of this implementation with each other.
- ``HashKV``: ``KVStore.hash_kv`` (etcd's HashByRev of the ``key`` bucket),
  the header's revision the current one, ``hash_revision`` the revision the
  hash covers.
- ``Snapshot``: etcd streams its bbolt db file, then a last message holding
  the SHA-256 of everything before it, which ``etcdctl snapshot restore``
  checks (a file whose size is 32 more than a multiple of 512 carries it).
  ``etcdctl snapshot status`` and ``restore`` then open the file with bbolt,
  so an LMDB file would not do: the committed buckets are exported as a
  bbolt file (``cluster.storage.bolt``) from one LMDB read transaction (a
  consistent view), into an unlinked temp file beside the db, and that is
  streamed in etcd's 32 KiB chunks with the SHA-256 last. In ``meta`` the
  consistent index becomes etcd's two keys (``consistent_index``, ``term``:
  8-byte big-endian each) and ``member_ids`` is left out (it names the
  member a restore replaces); every other bucket and record is copied as is
  (they already use etcd's key and value encodings). The export yields to
  the event loop every few thousand records, so Raft keeps ticking.
- ``Defragment``: a real one (``Backend.defrag``): commit, compacted copy,
  swap, reopen. It runs on the member's event loop between two Raft steps,
  so no apply or read can see the backend half-swapped; while it runs
  (LMDB copies at disk speed) the member does nothing else, as etcd's
  defrag blocks its applies. It waits for a running snapshot export, whose
  read transaction must not outlive the environment.
- ``MoveLeader``: only on the leader; the target must be a voting member;
  then waits, one heartbeat interval at a time, until the target leads.
- ``Alarm``: GET lists the raised alarms (after a linearizable barrier) of
  the requested type (NONE: all); ACTIVATE and DEACTIVATE go through Raft
  (``cluster.server.alarms``) and answer with the alarms they changed. Status
  lists each raised alarm in ``errors`` as etcd does (``memberID:<id>
  alarm:NOSPACE``), and "etcdserver: no leader" while there is none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any, Final, NoReturn

import grpc
import lmdb
from crc32c import crc32c

from cluster.mvcc import MVCCError
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.proto.etcdserverpb import rpc_pb2_grpc
from cluster.storage.backend import (
    CONSISTENT_INDEX_KEY,
    MEMBER_IDS_KEY,
    BackendError,
    BackendQuotaError,
    ReadTxn,
)
from cluster.storage.bolt import BoltWriter

from .alarms import describe as describe_alarm
from .kvconv import ERR_NO_LEADER, ERR_NO_SPACE, ERR_NOT_LEADER, ErrorSpec, RequestError
from .member import Member

log = logging.getLogger(__name__)

VERSION = "3.5.0"
"""The etcd API version we speak; clients gate features on it."""

SNAPSHOT_CHUNK_BYTES = 32 * 1024  # etcd's snapshotSendBufferSize
_YIELD_EVERY = 4096  # records read between two returns to the event loop

_Code = grpc.StatusCode
ERR_BAD_LEADER_TRANSFEREE: Final[ErrorSpec] = (
    _Code.FAILED_PRECONDITION,
    "etcdserver: bad leader transferee",
)
ERR_TIMEOUT_LEADER_TRANSFER: Final[ErrorSpec] = (
    _Code.UNAVAILABLE,
    "etcdserver: request timed out, leader transfer took too long",
)

META_BUCKET = "meta"
ETCD_CONSISTENT_INDEX_KEY = b"consistent_index"
ETCD_TERM_KEY = b"term"
HASH_IGNORES: Final = frozenset(
    {(META_BUCKET, ETCD_CONSISTENT_INDEX_KEY), (META_BUCKET, ETCD_TERM_KEY)}
)
"""etcd's DefaultIgnores: (bucket, key) records ``Hash`` leaves out."""

_INDEX_TERM = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")


def etcd_bucket_items(
    bucket: str, items: Iterable[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes]]:
    """A backend bucket's records as etcd's backend holds them (see the module docstring)."""
    if bucket != META_BUCKET:
        yield from items
        return
    records: dict[bytes, bytes] = {}
    for key, value in items:
        if key == MEMBER_IDS_KEY:
            continue
        if key == CONSISTENT_INDEX_KEY and len(value) == _INDEX_TERM.size:
            index, term = _INDEX_TERM.unpack(value)
            records[ETCD_CONSISTENT_INDEX_KEY] = _U64.pack(index)
            records[ETCD_TERM_KEY] = _U64.pack(term)
        else:
            records[key] = value
    yield from sorted(records.items())


def _etcd_buckets(
    rtx: ReadTxn, names: Iterable[str]
) -> Iterator[tuple[str, Iterator[tuple[bytes, bytes]]]]:
    """Every bucket in bbolt's order (bytewise by name), with its records in etcd's form."""
    for name in sorted(names, key=str.encode):
        yield name, etcd_bucket_items(name, rtx.items(name))


async def _abort(context: grpc.aio.ServicerContext[Any, Any], spec: ErrorSpec) -> NoReturn:
    await context.abort(*spec)
    raise AssertionError("context.abort returned")  # it raises


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Member) -> None:
        self.member = member
        # Held while a read transaction spans awaits (snapshot export, hash) and by
        # defragment, which closes the LMDB environment under any such transaction.
        self._env_lock = asyncio.Lock()

    # -- status ---------------------------------------------------------------------------
    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        m = self.member
        raft_log = m.node.log
        return pb.StatusResponse(
            header=m.header(),
            version=VERSION,
            dbSize=m.backend.size_bytes(),
            dbSizeInUse=m.backend.size_in_use_bytes(),
            leader=m.leader,
            raftIndex=raft_log.committed,
            raftTerm=m.node.term,
            raftAppliedIndex=raft_log.applied,
            isLearner=m.node.is_learner,
            dbSizeQuota=m.cfg.quota_backend_bytes,
            errors=self._errors(),
        )

    def _errors(self) -> list[str]:
        m = self.member
        errors = [] if m.leader else [ERR_NO_LEADER[1]]
        return errors + [describe_alarm(a) for a in m.alarms.active()]

    # -- hashes ---------------------------------------------------------------------------
    async def Hash(
        self, request: pb.HashRequest, context: grpc.aio.ServicerContext
    ) -> pb.HashResponse:
        m = self.member
        async with self._env_lock:
            await self._commit(context)
            revision = m.kv.current_revision
            crc = 0
            n = 0
            with m.backend.read_txn() as rtx:
                for name, items in _etcd_buckets(rtx, m.backend.BUCKETS):
                    crc = crc32c(name.encode(), crc)
                    for key, value in items:
                        if (name, key) not in HASH_IGNORES:
                            crc = crc32c(value, crc32c(key, crc))
                        n += 1
                        if n % _YIELD_EVERY == 0:
                            await asyncio.sleep(0)
        resp = pb.HashResponse(header=pb.ResponseHeader(revision=revision), hash=crc)
        m.fill_header(resp.header)
        return resp

    async def HashKV(
        self, request: pb.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> pb.HashKVResponse:
        m = self.member
        try:
            crc, compact = m.kv.hash_kv(request.revision)
        except MVCCError as exc:
            err = RequestError.from_error(exc)
            await _abort(context, (err.code, err.message))
        current = m.kv.current_revision
        resp = pb.HashKVResponse(
            header=pb.ResponseHeader(revision=current),
            hash=crc,
            compact_revision=compact,
            hash_revision=request.revision if request.revision != 0 else current,
        )
        m.fill_header(resp.header)
        return resp

    # -- snapshot -------------------------------------------------------------------------
    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SnapshotResponse]:
        m = self.member
        snap_dir = os.path.dirname(os.path.abspath(m.backend.path))
        with tempfile.TemporaryFile(prefix=".snapshot-", dir=snap_dir) as f:
            async with self._env_lock:
                await self._commit(context)
                header = m.header()
                size = await self._export_bolt(f)
            log.info("sending a %d-byte backend snapshot", size)
            f.seek(0)
            digest = hashlib.sha256()
            sent = 0
            while sent < size:
                blob = f.read(min(SNAPSHOT_CHUNK_BYTES, size - sent))
                if not blob:
                    raise BackendError(f"snapshot: export ended at {sent} of {size} bytes")
                sent += len(blob)
                digest.update(blob)
                resp = pb.SnapshotResponse(remaining_bytes=size - sent, blob=blob)
                if sent == len(blob):
                    resp.header.CopyFrom(header)
                    resp.version = VERSION
                yield resp
            # etcd's last message: the SHA-256 of the db, checked by `snapshot restore`.
            yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest())

    async def _export_bolt(self, out: IO[bytes]) -> int:
        """Write the committed backend to ``out`` as etcd's bbolt file; its size."""
        backend = self.member.backend
        writer = BoltWriter(out)
        n = 0
        with backend.read_txn() as rtx:
            for name, items in _etcd_buckets(rtx, backend.BUCKETS):
                bucket = writer.bucket(name.encode())
                for key, value in items:
                    bucket.put(key, value)
                    n += 1
                    if n % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                bucket.close()
        return writer.finish()

    async def _commit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Commit the backend's batch (etcd's ForceCommit) so readers see every applied write."""
        try:
            self.member.backend.commit()
        except BackendQuotaError:
            self.member.kv.rebuild()  # the batch is gone: back to the committed data
            await _abort(context, ERR_NO_SPACE)

    # -- defragment -----------------------------------------------------------------------
    async def Defragment(
        self, request: pb.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DefragmentResponse:
        m = self.member
        async with self._env_lock:
            await self._commit(context)
            before = m.backend.size_bytes()
            try:
                m.backend.defrag()
            except (OSError, lmdb.Error, BackendError) as exc:
                log.warning("failed to defragment: %s", exc)
                await _abort(context, (_Code.UNKNOWN, f"etcdserver: defragment failed: {exc}"))
            m.release_retired_backend()
            log.info("defragmented the backend: %d -> %d bytes", before, m.backend.size_bytes())
        return pb.DefragmentResponse(header=m.header())

    # -- leader transfer ------------------------------------------------------------------
    async def MoveLeader(
        self, request: pb.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> pb.MoveLeaderResponse:
        m = self.member
        if m.leader != m.id:
            await _abort(context, ERR_NOT_LEADER)
        target = request.targetID
        progress = m.node.status().progress.get(target)
        if progress is None or progress.is_learner:
            await _abort(context, ERR_BAD_LEADER_TRANSFEREE)
        m.node.transfer_leader(target)  # sent with the member's next Raft step (a tick at most)
        remaining = context.time_remaining()
        timeout = min(m.request_timeout, remaining if remaining is not None else math.inf)
        interval = m.cfg.heartbeat_interval_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                while m.leader != target:
                    await asyncio.sleep(interval)
        except TimeoutError:
            await _abort(context, ERR_TIMEOUT_LEADER_TRANSFER)
        log.info("leadership moved from %x to %x", m.id, target)
        return pb.MoveLeaderResponse(header=m.header())

    # -- alarms ---------------------------------------------------------------------------
    async def Alarm(
        self, request: pb.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> pb.AlarmResponse:
        m = self.member
        try:
            if request.action == pb.AlarmRequest.GET:
                await m.linearizable_barrier()
                resp = pb.AlarmResponse(alarms=m.alarms.active(request.alarm))
                m.fill_header(resp.header)
                return resp
            answer = await m.write(request)
        except RequestError as err:
            await _abort(context, (err.code, err.message))
        assert isinstance(answer, pb.AlarmResponse)
        return answer
