"""One member: drives its Raft node, persists, talks to peers, applies, answers clients.

Everything runs on one asyncio loop but the WAL's writes and fsyncs, which run on one
WAL thread (a one-entry Ready's stay on the loop: the hand-off costs more) so the loop
keeps taking requests meanwhile (and what arrives meanwhile goes into the next Ready:
group commit). Each Ready is persisted before its messages go out
(a leader's appends and heartbeats go out at once: it counts its own copy only once on
disk) and before its committed entries are applied to the MVCC store; a client write
waits until its entry is applied here; a linearizable read waits for a ReadIndex and
for the apply step to reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import random
import struct
import time
from collections.abc import Awaitable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from cluster import faults
from cluster.auth import AuthStore
from cluster.config import URL, ConfigError, MemberConfig, compute_member_id, parse_url
from cluster.lease import EXPIRY_CHECK_INTERVAL, Lessor
from cluster.mvcc.store import KVStore
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    Ready,
    Snapshot,
    StateType,
)
from cluster.storage.backend import (
    RETIRED_SUFFIX,
    Backend,
    BackendQuotaError,
    commit_snapshot,
    prepare_snapshot,
    release_retired,
)
from cluster.storage.durable import Retention, has_raft_log, open_raft_log
from cluster.tls import peer_client_context, peer_server_context
from cluster.watch import WatchHub

from . import kvconv
from .alarms import Alarms, hard_limit, quota_cost
from .apply import Applied, Applier
from .authz import Authorizer
from .compactor import AutoCompactor
from .ids import IdGenerator
from .join import ExistingCluster, describe_members, discover
from .kvconv import RequestError
from .metrics import MemberMetrics
from .readindex import LinearizableReads
from .requests import InternalRequest, decode_request, encode_request
from .transport import PeerTransport
from .worker import SerialWorker

log = logging.getLogger(__name__)
T = TypeVar("T")


_READ_CTX = struct.Struct(">QQ")  # member id, read id
# A conf change's context: the proposing member and its request id, then the pb.Member.
_CONF_CTX = struct.Struct(">QQ")

# What a leader sends before its own WAL write completes (Raft thesis 10.2.1): these carry
# no promise about its disk. Votes and other responses wait until their state is durable.
_SENT_BEFORE_PERSISTED = frozenset({MessageType.APP, MessageType.HEARTBEAT})


def _notices_only(rd: Ready, early: list[Message]) -> bool:
    """Whether a leader's messages in ``rd`` only tell followers of a commit that no client
    waits for on them: those are sent after this member answers its own clients (they cost
    the one-client put ~60 µs here; a client of a follower waits for them, so not then).
    Never for a membership change: applying it drops a removed member from the transport,
    and that member must still hear of its removal (it then stops, as etcd's does)."""
    return (
        bool(rd.committed_entries)
        and not rd.entries
        and not rd.forwarded_committed
        and not any(m.entries for m in early)
        and all(e.type != EntryType.CONF_CHANGE for e in rd.committed_entries)
    )


# A Ready with at most this many entries is fsynced on the loop itself: under light load
# the hand-off to the WAL thread and back costs more than the fsync (~0.15 ms here);
# under load, batches are larger and the loop serves requests while the thread syncs.
INLINE_SYNC_MAX_ENTRIES = 1

# A received backend image (a memory map) gives back its pages this often as it is read.
_DROP_EVERY = 8 * 1024 * 1024

# A membership change the Raft core refused on this member (the leader), as etcd answers.
_CONF_DROPPED: dict[str, kvconv.ErrorSpec] = {
    ProposalDropped.NO_LEADER: kvconv.ERR_NO_LEADER,
    ProposalDropped.TRANSFERRING: kvconv.ERR_LEADER_CHANGED,
    ProposalDropped.CONF_CHANGE_PENDING: kvconv.ERR_UNHEALTHY,
    ProposalDropped.LEARNER_NOT_READY: kvconv.ERR_LEARNER_NOT_READY,
    ProposalDropped.NOT_A_MEMBER: kvconv.ERR_STOPPED,
    ProposalDropped.UNKNOWN_MEMBER: kvconv.ERR_MEMBER_NOT_FOUND,
    ProposalDropped.MEMBER_EXISTS: kvconv.ERR_MEMBER_EXIST,
    ProposalDropped.NOT_LEARNER: kvconv.ERR_MEMBER_NOT_LEARNER,
    ProposalDropped.LAST_VOTER: kvconv.ERR_REMOVE_LAST_VOTER,
}


@dataclass(frozen=True)
class PeerInfo:
    id: int
    name: str
    peer_urls: tuple[URL, ...]


class Member:
    """A running member. ``start`` opens its data dir and listens for peers."""

    def __init__(self, cfg: MemberConfig) -> None:
        self.cfg = cfg
        self.id = cfg.member_id
        self.cluster_id = cfg.cluster_id
        self.peers = [
            PeerInfo(compute_member_id(urls, cfg.initial_cluster_token), name, urls)
            for name, urls in cfg.initial_cluster.items()
        ]
        self.request_timeout = 5.0 + 2 * cfg.election_timeout_ms / 1000
        # Request ids (and read contexts): never reused across restarts (see ids.py).
        self._ids = IdGenerator(cfg.member_id, time.time_ns() // 1_000_000)
        self._waiting: dict[int, asyncio.Future[object]] = {}
        # Linearizable reads share ReadIndex rounds (asked again after etcd's 500 ms).
        self.reads = LinearizableReads(
            self._request_read_index,
            lambda: _READ_CTX.pack(self.id, self._ids.next()),
            retry_after=0.5,
            timeout=self.request_timeout,
        )
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop  # set by start()
        # Writes proposed since the Raft loop last ran: it hands them to the core as one
        # batch (one step, one append, one message to the leader from a follower).
        self._proposals: list[tuple[bytes, asyncio.Future[object]]] = []
        # A leader's commit notices held until its own clients are answered (``_notices_only``).
        self._after_answers: list[Message] = []
        # Ready batches are written and fsynced here, one at a time, off the event loop.
        self._wal_thread = SerialWorker("wal")
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # e.g. auto-compactions in flight
        self._raising_nospace = False
        self._lead = 0  # the leader this member last knew of (0: none)
        self._next_lease_check = 0.0
        self._next_progress = 0.0
        self._next_token_purge = 0.0
        self.authz = Authorizer(self)
        # Set (with its reason) when this member cannot go on: cli.serve exits non-zero.
        self.failed = asyncio.Event()
        self.failure = ""
        self._stopping = False
        self.conf = ConfState()
        # Set once this member applies its own removal: it must stop serving (cli.serve).
        self.removed = asyncio.Event()
        # Set once the cluster knows this member's name and client URLs (etcd's ReadyNotify):
        # only then does it serve clients, so a member list never shows it without them.
        self.published = asyncio.Event()
        self.compactor = AutoCompactor(cfg.auto_compaction_mode, cfg.auto_compaction_retention)
        self.metrics = MemberMetrics(self)

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        # The loop, kept: asyncio.get_running_loop() costs a getpid() system call each time
        # (CPython 3.11), and the apply path asked for it once per entry.
        self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        retention = Retention(
            snapshot_count=cfg.snapshot_count,
            max_wals=cfg.max_wals,
            max_snapshots=cfg.max_snapshots,
            catch_up_entries=cfg.snapshot_catchup_entries,
        )
        joined: ExistingCluster | None = None
        ids: tuple[int | None, int | None] = (self.id, self.cluster_id)
        if cfg.initial_cluster_state == "existing":
            if has_raft_log(cfg.data_dir):
                ids = (None, None)  # a restart: the data dir knows which member of which cluster
            else:
                joined = await discover(cfg)
                self.id, self.cluster_id = joined.member_id, joined.cluster_id
                self.peers = [
                    PeerInfo(m.ID, m.name, tuple(parse_url(u, "peer-urls") for u in m.peerURLs))
                    for m in joined.members
                ]
                ids = (self.id, self.cluster_id)
        self.log_store = open_raft_log(cfg.data_dir, *ids, retention=retention)
        self.log_store.wal.on_fsync = self.metrics.wal_fsync.observe
        self.id, self.cluster_id = self.log_store.member_id, self.log_store.cluster_id
        self.backend = Backend(
            self.log_store.paths.db_path, quota_bytes=hard_limit(cfg.quota_backend_bytes)
        )
        self.backend.on_commit = self.metrics.backend_commit.observe
        if self.backend.member_ids() is None:
            self.backend.set_member_ids(self.id, self.cluster_id)
        self.backend.check_member_ids(self.id, self.cluster_id)
        self.applier = Applier(
            self.backend,
            max_txn_ops=cfg.max_txn_ops,
            heartbeat_ms=cfg.heartbeat_interval_ms,
            election_ms=cfg.election_timeout_ms,
            expired_retry_interval=self.request_timeout,
            on_unsynced=self._wake.set,
        )
        if self.log_store.is_new and joined is None:
            self.log_store.bootstrap(sorted(p.id for p in self.peers))
        snap = self.log_store.storage.snapshot()
        self.conf = snap.metadata.conf_state
        self.node = RaftNode(
            Config(
                id=self.id,
                rng=random.Random(),
                election_tick=cfg.election_ticks,
                heartbeat_tick=1,
                applied=snap.metadata.index,
            ),
            self.log_store.storage,
        )
        self.transport = PeerTransport(
            self.id,
            self.cluster_id,
            self._receive,
            on_unreachable=self.node.report_unreachable,
            on_snapshot_status=self.node.report_snapshot,
            snapshot_source=self._backend_image,
            describe=lambda: describe_members(self.cluster_id, self.members()),
            server_ssl=peer_server_context(cfg.peer_tls) if cfg.peer_tls else None,
            client_ssl=peer_client_context(cfg.peer_tls) if cfg.peer_tls else None,
            snapshot_spool=self.log_store.paths.snap_dir,
        )
        peer_url = cfg.listen_peer_urls[0]
        await self.transport.listen(peer_url.host, peer_url.port)
        if self.backend.batch().get("members_removed", self.id.to_bytes(8, "big")):
            log.warning("member %x was removed from the cluster: stopping", self.id)
            self.removed.set()
        # Every member of the current configuration (initial or added since, as stored).
        for info in self.members() if joined is None else joined.members:
            if self.id != info.ID:
                self._set_peer(info)
        loop = self._loop
        self._tasks = [
            loop.create_task(self._tick_loop()),
            loop.create_task(self._ready_loop()),
            loop.create_task(self._publish()),
        ]
        self._wake.set()
        self.release_retired_backend()  # one a crash left behind, if any

    async def stop(self) -> None:
        """Stop serving: fail waiting requests, persist what is pending, close files."""
        self._stopping = True
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
        self._wal_thread.shutdown()  # a write in flight finishes before the close
        self.reads.close(RequestError(*kvconv.ERR_STOPPED))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RequestError(*kvconv.ERR_STOPPED))
        self.backend.close()  # commits the pending batch
        self.log_store.close()

    # -- clients ----------------------------------------------------------------
    def header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.id,
            revision=self.kv.current_revision,
            raft_term=self.node.term,
        )

    def fill_header(self, header: pb.ResponseHeader) -> None:
        kvconv.fill_header(
            header,
            cluster_id=self.cluster_id,
            member_id=self.id,
            raft_term=self.node.term,
            revision=self.kv.current_revision,
        )

    @property
    def max_request_bytes(self) -> int:
        return self.cfg.max_request_bytes

    @property
    def max_txn_ops(self) -> int:
        return self.cfg.max_txn_ops

    @property
    def kv(self) -> KVStore:
        return self.applier.kv

    @property
    def alarms(self) -> Alarms:
        return self.applier.alarms

    @property
    def lessor(self) -> Lessor:
        return self.applier.lessor

    @property
    def hub(self) -> WatchHub:
        return self.applier.hub

    @property
    def auth(self) -> AuthStore:
        return self.applier.auth

    @property
    def applied_index(self) -> int:
        return self.node.log.applied

    @property
    def committed_index(self) -> int:
        return self.node.log.committed

    async def wait_applied(self, index: int) -> None:
        """Until this member has applied raft ``index`` (within the request timeout)."""
        await self._wait_applied(index)

    @property
    def leader(self) -> int:
        return self.node.lead

    async def write(self, request: InternalRequest) -> object:
        """Propose ``request`` through Raft; its response once applied on this member.

        A request that adds data is refused first if it would take the backend to its
        quota (etcd's quota check); this member then raises the NOSPACE alarm.
        """
        self._check_serving()
        added = quota_cost(request)
        if added and self._backend_size() + added >= self.cfg.quota_backend_bytes:
            self._raise_nospace()
            raise RequestError(*kvconv.ERR_NO_SPACE)
        request_id = self._ids.next()
        fut: asyncio.Future[object] = self._loop.create_future()
        self._waiting[request_id] = fut
        try:
            self._proposals.append((encode_request(self.id, request_id, request), fut))
            self._wake.set()
            return await self._within_timeout(fut)
        finally:
            self._waiting.pop(request_id, None)
            if not fut.done():  # dropped, timed out or cancelled (as etcd counts them)
                self.metrics.proposals_failed.inc()

    def _backend_size(self) -> int:
        """The db file, and what the open batch will add to it when it commits."""
        return self.backend.size_bytes() + self.backend.batch().pending_bytes

    def _raise_nospace(self) -> None:
        if self._raising_nospace or any(
            a.memberID == self.id for a in self.alarms.active(pb.NOSPACE)
        ):
            return
        log.warning(
            "the backend (%d bytes) reached its quota of %d bytes: raising the NOSPACE alarm",
            self._backend_size(),
            self.cfg.quota_backend_bytes,
        )
        self._raising_nospace = True

        async def activate() -> None:
            try:
                await self.write(
                    pb.AlarmRequest(
                        action=pb.AlarmRequest.ACTIVATE, memberID=self.id, alarm=pb.NOSPACE
                    )
                )
            except RequestError as exc:
                log.warning("could not raise the NOSPACE alarm: %s", exc)
            finally:
                self._raising_nospace = False

        self._spawn(activate())

    async def change_membership(
        self, kind: ConfChangeType, member_id: int, attrs: pb.Member | None = None
    ) -> None:
        """Propose a membership change; returns once it is applied on this member.

        A change proposed while another is not applied yet waits for it (within the
        request timeout), then is proposed again; still refused, it is reported as etcd's
        "unhealthy cluster". Other refusals the Raft core detects here (this member leads)
        raise etcd's errors. On a follower the proposal is forwarded to the leader, which
        drops a refused one silently: the caller then times out ("etcdserver: request
        timed out").
        """
        request_id = self._ids.next()
        fut: asyncio.Future[object] = self._loop.create_future()
        self._waiting[request_id] = fut
        body = (attrs or pb.Member(ID=member_id)).SerializeToString()
        change = ConfChange(kind, member_id, _CONF_CTX.pack(self.id, request_id) + body)
        try:
            for attempt in range(3):
                try:
                    self.node.propose_conf_change(change)
                    break
                except ProposalDropped as exc:
                    if exc.reason == ProposalDropped.CONF_CHANGE_PENDING and attempt < 2:
                        # Another change (or a new leader's first entry) is not applied
                        # yet: wait for it, then try again.
                        await self._wait_applied(self.node.pending_conf_index)
                        continue
                    spec = _CONF_DROPPED.get(exc.reason, kvconv.ERR_UNHEALTHY)
                    raise RequestError(*spec) from exc
            self._wake.set()
            await self._within_timeout(fut)
        finally:
            self._waiting.pop(request_id, None)

    async def _wait_applied(self, index: int) -> None:
        if self.node.log.applied < index:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._applied_waiters.append((index, waiter))
            self._wake.set()
            await self._within_timeout(waiter)

    async def read(self, request: pb.RangeRequest) -> pb.RangeResponse:
        if not request.serializable:
            await self.linearizable_barrier()
        self._check_serving()
        response = kvconv.do_range(self.kv, request)
        self.fill_header(response.header)
        return response

    async def linearizable_barrier(self) -> None:
        """Wait until this member has applied everything committed before now (ReadIndex)."""
        index = await self._within_timeout(self.reads.read_index())
        await self._wait_applied(index)

    def _request_read_index(self, ctx: bytes) -> None:
        try:
            self.node.read_index(ctx)
        except ProposalDropped as exc:
            raise RequestError(*kvconv.ERR_NO_LEADER) from exc
        self._wake.set()

    async def _within_timeout(self, fut: Awaitable[T]) -> T:
        term = self.node.term
        try:
            async with asyncio.timeout(self.request_timeout):
                return await fut
        except TimeoutError as exc:
            # As etcd: say so when a leader change meanwhile is the likely cause.
            spec = (
                kvconv.ERR_TIMEOUT_DUE_TO_LEADER_FAIL
                if self.node.term != term
                else kvconv.ERR_TIMEOUT
            )
            raise RequestError(*spec) from exc

    # -- the Raft loop ----------------------------------------------------------
    def _receive(self, messages: list[Message]) -> None:
        for m in messages:
            self.node.step_remote(m)
        self._wake.set()

    async def _tick_loop(self) -> None:
        interval = self.cfg.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.node.tick()
            now = self._loop.time()
            try:
                self.backend.commit_if_due(now)
            except BackendQuotaError as exc:
                self._fail(f"backend: {self.backend.path} is full ({exc})")
                return
            except Exception as exc:  # e.g. lmdb.Error (I/O error, disk full) in the commit
                # The batch is gone: going on would move the consistent index past entries
                # that are not in the backend. Stop; a restart replays them from the WAL.
                self._fail(f"backend: commit of {self.backend.path} failed: {exc}")
                return
            self._auto_compact(now)
            self._lease_duties(now)
            if now >= self._next_token_purge:
                self._next_token_purge = now + 1.0
                self.auth.purge_expired_tokens(now)
            self._watch_duties(now)
            self._wake.set()

    def _lease_duties(self, now: float) -> None:
        """The leader revokes expired leases and records remaining TTLs, through Raft."""
        if now < self._next_lease_check or self.node.state != StateType.LEADER:
            return
        self._next_lease_check = now + EXPIRY_CHECK_INTERVAL
        lessor = self.lessor
        if not lessor.is_primary:
            return
        for lease_id in lessor.expired(now):
            self._background_write(pb.LeaseRevokeRequest(ID=lease_id), "revoke expired lease")
        due = lessor.checkpoints_due(now)
        if due:
            checkpoints = [pb.LeaseCheckpoint(ID=i, remaining_TTL=ttl) for i, ttl in due]
            self._background_write(
                pb.LeaseCheckpointRequest(checkpoints=checkpoints), "checkpoint leases"
            )

    def _watch_duties(self, now: float) -> None:
        hub = self.hub
        if hub.unsynced_count:
            hub.sync_unsynced()
        if now >= self._next_progress:
            if self._next_progress:
                hub.progress_tick()
            self._next_progress = now + hub.progress_interval

    def release_retired_backend(self) -> None:
        """Free a replaced backend file's blocks, gradually, in a worker thread.

        See ``backend.replace_retiring``: done at once, it stalls every fsync on the disk.
        """
        path = self.backend.path

        async def run() -> None:
            try:
                await self._loop.run_in_executor(None, release_retired, path)
            except OSError as exc:
                log.warning("could not remove %s: %s", path + RETIRED_SUFFIX, exc)

        self._spawn(run())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of this member's (cancelled by ``stop``)."""
        task = self._loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _background_write(self, request: InternalRequest, what: str) -> None:
        async def run() -> None:
            try:
                await self.write(request)
            except RequestError as exc:
                log.debug("could not %s: %s", what, exc)

        self._spawn(run())

    def _auto_compact(self, now: float) -> None:
        """Only the leader compacts (etcd's compactor pauses on followers)."""
        compactor = self.compactor
        if not compactor.enabled:
            return
        if self.node.state == StateType.LEADER:
            if compactor.paused:
                compactor.resume(now)
        elif not compactor.paused:
            compactor.pause()
        revision = compactor.due(now, self.kv.current_revision)
        if revision is not None:
            self._spawn(self._compact(revision))

    async def _compact(self, revision: int) -> None:
        ok = True
        try:
            await self.write(pb.CompactionRequest(revision=revision))
            log.info("auto-compacted the key-value store at revision %d", revision)
        except RequestError as exc:
            ok = exc == RequestError(*kvconv.ERR_COMPACTED)  # done already: as good
            if not ok:
                log.warning("auto-compaction at revision %d failed: %s", revision, exc)
        self.compactor.result(revision, ok, self._loop.time())

    def _flush_proposals(self) -> None:
        """Hand the writes proposed meanwhile to the Raft core, as one batch."""
        batch, self._proposals = self._proposals, []
        try:
            self.node.propose_batch([data for data, _ in batch])
        except ProposalDropped:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RequestError(*kvconv.ERR_NO_LEADER))
                    self.metrics.proposals_failed.inc()

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    if self._proposals:  # also those proposed while a Ready was written
                        self._flush_proposals()
                    if not self.node.has_ready():
                        break
                    await self._handle(self.node.ready())
                if self.hub.unsynced_count:
                    self.hub.sync_unsynced()  # woken by the hub: watchers behind catch up
        except BackendQuotaError as exc:
            # The backend file is at its hard limit (well above the quota): a committed
            # entry cannot be applied. Stop rather than diverge; the WAL still holds it.
            self._fail(
                f"backend: {self.backend.path} is full ({exc}); restart with a larger "
                "--quota-backend-bytes to apply the remaining entries"
            )
        except Exception as exc:
            log.exception("the Raft loop failed")
            self._fail(f"the Raft loop failed: {exc!r}")

    def _fail(self, reason: str) -> None:
        log.critical("%s", reason)
        self.failure = reason
        self.failed.set()
        # Requests still waiting on this member must not be answered from state the backend
        # no longer holds (etcd treats a failed backend commit as fatal): fail them now.
        self.reads.close(RequestError(*kvconv.ERR_STOPPED))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RequestError(*kvconv.ERR_STOPPED))

    def _check_serving(self) -> None:
        """Refuse to answer once the member has failed (see ``_fail``)."""
        if self.failed.is_set():
            raise RequestError(*kvconv.ERR_STOPPED)

    async def _handle(self, rd: Ready) -> None:
        if self._after_answers:  # still queued: they go before anything newer
            self._send_after_answers()
        messages = rd.messages
        applied_early = 0  # committed entries applied while this Ready's own were written
        if rd.snapshot is not None:
            # A leader's snapshot: its data is the leader's whole backend. Install
            # that first, so the durable snapshot marker is never ahead of it.
            await self._install_backend(rd.snapshot.data)
            rd.snapshot = Snapshot(rd.snapshot.metadata, b"")  # the .snap file keeps metadata
            self.conf = rd.snapshot.metadata.conf_state
            self.log_store.save(rd)  # rare: on the loop, before anything depends on it
        else:
            if self.node.state == StateType.LEADER and messages:
                early = [m for m in messages if m.type in _SENT_BEFORE_PERSISTED]
                if _notices_only(rd, early):
                    self._after_answers = early
                else:
                    self.transport.send(early)
                messages = [m for m in messages if m.type not in _SENT_BEFORE_PERSISTED]
            if rd.must_sync and len(rd.entries) > INLINE_SYNC_MAX_ENTRIES:
                # While this runs, the loop serves requests and steps peers' messages into
                # the Raft core; the core hands out no other Ready until ``advance``.
                writing = self._wal_thread.run(self.log_store.persist, rd)
                # Committed entries already on this member's disk need not wait for the
                # new ones: apply them (and answer their clients) during the write.
                durable = self.node.log.persisted_index()
                try:
                    for entry in rd.committed_entries:
                        if entry.index > durable:
                            break
                        self._apply(entry)
                        applied_early += 1
                finally:
                    await writing
            else:
                self.log_store.persist(rd)  # small: a write and maybe one short fsync
            self.log_store.publish(rd)  # durable before anything depends on it
        # A MsgSnap's data (this member's backend) is produced by the peer's transport
        # when it sends it (``_backend_image``), off this loop.
        self.transport.send(messages)
        for entry in rd.committed_entries[applied_early:]:
            self._apply(entry)
        for rs in rd.read_states:
            self.reads.resolve(rs.request_ctx, rs.index)
        if rd.soft_state is not None:
            now = self._loop.time()
            if rd.soft_state.state == StateType.LEADER:
                log.info("member %x became leader at term %d", self.id, self.node.term)
                # etcd: leases restart from their remaining TTL, plus an election timeout
                self.lessor.promote(now, self.cfg.election_timeout_ms / 1000)
            elif self.lessor.is_primary:
                self.lessor.demote()
            if rd.soft_state.lead != self._lead:
                if rd.soft_state.lead == 0:
                    log.warning("member %x lost its leader %x at term %d", self.id, self._lead,
                                self.node.term)  # fmt: skip
                self._leader_changed(rd.soft_state.lead)
        self.node.advance(rd)
        if self._after_answers:
            # Behind the wake-ups of the clients' handlers that this Ready's apply queued.
            self._loop.call_soon(self._send_after_answers)
        self._after_apply()
        if self.hub.unsynced_count:
            self.hub.sync_unsynced()  # watchers behind catch up without waiting for a tick

    def _send_after_answers(self) -> None:
        batch, self._after_answers = self._after_answers, []
        if batch:
            self.transport.send(batch)

    def _leader_changed(self, lead: int) -> None:
        """As etcd: reads waiting for a read index from the old leader fail at once with
        "leader changed" (clients retry them) instead of waiting for their timeout."""
        if self._lead:
            self.reads.fail_in_flight(RequestError(*kvconv.ERR_LEADER_CHANGED))
        if lead:
            self.metrics.leader_changes.inc()
        self._lead = lead

    def _apply(self, entry: Entry) -> None:
        batch = self.backend.batch()
        applied_before, _ = batch.consistent_index()
        if entry.type == EntryType.CONF_CHANGE:
            change = ConfChange.decode(entry.data)
            self.conf = self.node.apply_conf_change(change)
            self._apply_conf_change(change, replay=entry.index <= applied_before)
        if entry.index <= applied_before:
            return  # already in the backend (restart replay): never apply twice
        if entry.type == EntryType.NORMAL and entry.data:
            proposed = decode_request(entry.data)
            response: (
                Applied
                | pb.MemberListResponse
                | pb.MemberUpdateResponse
                | pb.AlarmResponse
                | RequestError
            )
            try:
                if isinstance(proposed.request, pb.Member):
                    response = self._apply_publish(proposed.request)
                elif isinstance(proposed.request, pb.MemberUpdateRequest):
                    response = self._apply_member_update(proposed.request)
                elif isinstance(proposed.request, pb.AlarmRequest):
                    response = self._apply_alarm(proposed.request)
                else:
                    now = self._loop.time()
                    response = self.applier.apply(proposed.request, now, entry.index)
                    if isinstance(proposed.request, pb.CompactionRequest):
                        log.info(
                            "compacted the key-value store at revision %d (keys in index %d)",
                            proposed.request.revision,
                            len(self.kv.index),
                        )
            except RequestError as exc:
                response = exc  # deterministic: every member refuses it the same way
            fut = self._waiting.get(proposed.request_id) if proposed.origin == self.id else None
            if fut is not None and not fut.done():
                if isinstance(response, RequestError):
                    fut.set_exception(response)
                else:
                    self.fill_header(response.header)
                    fut.set_result(response)
        batch.set_consistent_index(entry.index, entry.term)

    def _apply_alarm(self, req: pb.AlarmRequest) -> pb.AlarmResponse:
        resp = self.alarms.apply(req, self.conf.voters | self.conf.learners)
        for alarm in resp.alarms:
            change = "raised" if req.action == pb.AlarmRequest.ACTIVATE else "cleared"
            log.warning(
                "alarm %s %s for member %x", pb.AlarmType.Name(alarm.alarm), change, alarm.memberID
            )
        return resp

    async def _backend_image(self, m: Message) -> Iterator[bytes]:
        """The committed backend as length-prefixed stream chunks, for a MsgSnap's data.

        Runs when the transport sends ``m``, not in the Raft loop: the batch is
        committed here on the loop (it owns the batch), then the consistent copy,
        the slow part, is made in a worker thread; the chunks are read from that
        copy as they are sent, so the image never exists as one blob.
        """
        backend = self.backend
        backend.commit()
        loop = self._loop
        return _length_prefixed(await loop.run_in_executor(None, backend.snapshot_chunks))

    async def _install_backend(self, image: bytes) -> None:
        """Replace this member's backend with a leader's (checksummed, atomic).

        The image is written, checked and fsynced beside the db in a worker thread
        while the loop serves reads from the old backend (the Raft loop waits here,
        so nothing is applied meanwhile); only the rename and reopen are on the loop.
        """
        path = self.backend.path
        await self._loop.run_in_executor(
            None,
            functools.partial(
                prepare_snapshot, path, _split_image(image), member_ids=(self.id, self.cluster_id)
            ),
        )
        self.backend.batch().abort()  # whatever it held is superseded by the image
        self.backend.close()
        commit_snapshot(path)
        if faults.CRASH:
            faults.crash_point("snapshot-apply")
        self.backend = Backend(path, quota_bytes=hard_limit(self.cfg.quota_backend_bytes))
        self.backend.on_commit = self.metrics.backend_commit.observe
        self.applier.reset(self.backend)
        self.release_retired_backend()
        index = self.backend.consistent_index()[0]
        log.info("installed the leader's backend (consistent index %d)", index)

    def _apply_publish(self, attrs: pb.Member) -> pb.MemberListResponse:
        """A member's name and client URLs; peer URLs already stored (MemberUpdate) stay."""
        key = attrs.ID.to_bytes(8, "big")
        batch = self.backend.batch()
        stored = pb.Member()
        stored.CopyFrom(attrs)
        raw = batch.get("members", key)
        if raw is not None:
            old = pb.Member.FromString(raw)
            if old.peerURLs:
                del stored.peerURLs[:]
                stored.peerURLs.extend(old.peerURLs)
        batch.put("members", key, stored.SerializeToString())
        return pb.MemberListResponse()

    def _apply_conf_change(self, change: ConfChange, *, replay: bool) -> None:
        """The server side of an applied membership change: members bucket and transport.

        On a restart's replay (``replay``) the backend already has it; only the transport
        (which starts from the stored members) is brought up to date again.
        """
        origin = request_id = 0
        attrs = pb.Member(ID=change.node_id)
        if len(change.context) >= _CONF_CTX.size:
            origin, request_id = _CONF_CTX.unpack_from(change.context)
            with contextlib.suppress(DecodeError):
                attrs = pb.Member.FromString(change.context[_CONF_CTX.size :])
        attrs.ID = change.node_id
        key = change.node_id.to_bytes(8, "big")
        batch = self.backend.batch()
        if not replay:
            log.info(
                "membership change applied: %s %x (voters %d, learners %d)",
                change.type.name,
                change.node_id,
                len(self.conf.voters),
                len(self.conf.learners),
            )
        if change.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            stored = pb.Member(ID=change.node_id)
            raw = batch.get("members", key)
            if raw is not None:
                stored.MergeFromString(raw)  # keeps a published name and client URLs
            else:
                initial = {p.id: p for p in self.peers}.get(change.node_id)
                if initial is not None:  # a bootstrap entry: --initial-cluster knows it
                    stored.name = initial.name
                    stored.peerURLs.extend(str(u) for u in initial.peer_urls)
            if attrs.peerURLs:
                del stored.peerURLs[:]
                stored.peerURLs.extend(attrs.peerURLs)
            stored.isLearner = change.node_id in self.conf.learners
            if not replay:
                batch.put("members", key, stored.SerializeToString())
            if change.node_id != self.id:
                self._set_peer(stored)
        elif change.type == ConfChangeType.REMOVE_NODE:
            if not replay:
                batch.delete("members", key)
                batch.put("members_removed", key, b"removed")
            self.transport.remove_peer(change.node_id)
            if change.node_id == self.id:  # also on a restart's replay: it stays removed
                log.warning("member %x was removed from the cluster: stopping", self.id)
                self.removed.set()
        if origin == self.id and not replay:
            fut = self._waiting.get(request_id)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _set_peer(self, info: pb.Member) -> None:
        """Point the transport at ``info``'s first peer URL (a bad or missing one: no route)."""
        if not info.peerURLs:
            return
        try:
            url = parse_url(info.peerURLs[0], "peer-urls")
        except ConfigError:
            log.warning("member %x has an invalid peer URL %r", info.ID, info.peerURLs[0])
            return
        self.transport.set_peer(info.ID, url.host, url.port)

    def _apply_member_update(self, req: pb.MemberUpdateRequest) -> pb.MemberUpdateResponse:
        key = req.ID.to_bytes(8, "big")
        batch = self.backend.batch()
        if req.ID not in self.conf.voters | self.conf.learners:
            raise RequestError(*kvconv.ERR_MEMBER_NOT_FOUND)
        stored = pb.Member(ID=req.ID)
        raw = batch.get("members", key)
        if raw is not None:
            stored.MergeFromString(raw)
        else:
            initial = {p.id: p for p in self.peers}.get(req.ID)
            if initial is not None:
                stored.name = initial.name
        del stored.peerURLs[:]
        stored.peerURLs.extend(req.peerURLs)
        batch.put("members", key, stored.SerializeToString())
        if self.id != req.ID:
            self._set_peer(stored)
        return pb.MemberUpdateResponse()

    def members(self) -> list[pb.Member]:
        """Every member in the current configuration, with its published attributes."""
        batch = self.backend.batch()
        initial = {p.id: p for p in self.peers}
        out = []
        for member_id in sorted(self.conf.voters | self.conf.learners):
            member = pb.Member(ID=member_id, isLearner=member_id in self.conf.learners)
            raw = batch.get("members", member_id.to_bytes(8, "big"))
            if raw is not None:
                member.MergeFromString(raw)
                member.isLearner = member_id in self.conf.learners
            elif member_id in initial:
                member.name = initial[member_id].name
                member.peerURLs.extend(str(u) for u in initial[member_id].peer_urls)
            out.append(member)
        return out

    async def _publish(self) -> None:
        """Tell the cluster this member's name and client URLs, retrying until it sticks."""
        attrs = pb.Member(
            ID=self.id,
            name=self.cfg.name,
            peerURLs=[str(u) for u in self.cfg.initial_advertise_peer_urls],
            clientURLs=[str(u) for u in self.cfg.advertise_client_urls],
        )
        while True:
            raw = self.backend.batch().get("members", self.id.to_bytes(8, "big"))
            if raw is not None:
                stored = pb.Member.FromString(raw)
                if (stored.name, stored.clientURLs) == (attrs.name, attrs.clientURLs):
                    self.published.set()
                    return
            try:
                await self.write(attrs)
                self.published.set()
                return
            except RequestError:
                await asyncio.sleep(self.cfg.election_timeout_ms / 1000)

    def _after_apply(self) -> None:
        applied = self.node.log.applied
        if self._applied_waiters:
            still = []
            for index, waiter in self._applied_waiters:
                if applied >= index:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still.append((index, waiter))
            self._applied_waiters = still
        self.backend.commit_if_due(self._loop.time())
        if self.log_store.snapshot_due(applied):
            self.backend.commit()  # the snapshot must never be ahead of the backend
            self.log_store.snapshot(applied, self.conf)
            log.info(
                "saved a snapshot at raft index %d (term %d, revision %d)",
                applied,
                self.node.term,
                self.kv.current_revision,
            )


def _length_prefixed(chunks: Generator[bytes, None, None]) -> Iterator[bytes]:
    """``chunks`` each behind its 4-byte length; closing this closes ``chunks`` (its file)."""
    try:
        for chunk in chunks:
            yield len(chunk).to_bytes(4, "big") + chunk
    finally:
        chunks.close()


def _split_image(image: bytes) -> Iterator[bytes]:
    """The stream chunks of a ``_backend_image``, one at a time (never all copied at once).

    From a memory map (what the transport hands on), the pages already read are dropped
    from this process as it goes, so reading the image does not add its size to the RSS.
    """
    dropped = 0  # the map's pages below this are dropped
    with memoryview(image) as view:
        at = 0
        while at < len(view):
            size = int.from_bytes(view[at : at + 4], "big")
            yield bytes(view[at + 4 : at + 4 + size])
            at += 4 + size
            if isinstance(image, mmap.mmap) and at - dropped >= _DROP_EVERY:
                upto = at - at % mmap.PAGESIZE
                image.madvise(mmap.MADV_DONTNEED, dropped, upto - dropped)
                dropped = upto
