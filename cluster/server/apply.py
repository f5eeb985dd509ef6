"""The applier: a committed client request applied to the store, the lessor and the alarms.

Every member applies the same entries in the same order, so everything here is
deterministic given the entry: lease ids are chosen by the proposer, times only
set leader-local expiries. Each write's changes then go to the lessor (which key
is attached to which lease) and to the watch hub (``cluster.watch``).
Membership entries are the member's own business (``member.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.auth import AuthStore
from cluster.lease import (
    LeaseError,
    Lessor,
    min_lease_ttl,
)
from cluster.mvcc import KVStore
from cluster.mvcc.kv import KeyValue
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.storage.backend import Backend
from cluster.watch import WatchHub

from . import kvconv
from .alarms import Alarms
from .authz import apply_auth
from .kvconv import RequestError
from .requests import AuthRequest

LeaseRequest = pb.LeaseGrantRequest | pb.LeaseRevokeRequest | pb.LeaseCheckpointRequest
Applied = (
    kvconv.WriteResponse
    | pb.LeaseGrantResponse
    | pb.LeaseRevokeResponse
    | pb.LeaseCheckpointResponse
)


class Applier:
    """The store, lessor, alarms and watch hub over one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_txn_ops: int,
        heartbeat_ms: int,
        election_ms: int,
        expired_retry_interval: float,
        on_unsynced: Callable[[], None] | None = None,
    ) -> None:
        self.lessor = Lessor(
            backend,
            min_ttl=min_lease_ttl(heartbeat_ms, election_ms),
            checkpointing=True,
            expired_retry_interval=expired_retry_interval,
        )
        self._max_txn_ops = max_txn_ops
        self.kv = KVStore(backend, lease_exists=self.lessor.exists, max_txn_ops=max_txn_ops)
        self._attach_leased_keys()
        self.alarms = Alarms(backend)
        self.auth = AuthStore(backend)
        self.hub = WatchHub(self.kv, on_unsynced=on_unsynced)

    def reset(self, backend: Backend) -> None:
        """Start over from another backend (the leader's, installed by a snapshot)."""
        self.kv.release()
        self.lessor = Lessor(
            backend,
            min_ttl=self.lessor.min_ttl,
            checkpointing=self.lessor.checkpointing,
            expired_retry_interval=self.lessor.expired_retry_interval,
        )
        self.kv = KVStore(backend, lease_exists=self.lessor.exists, max_txn_ops=self._max_txn_ops)
        self._attach_leased_keys()
        self.alarms = Alarms(backend)
        self.auth = AuthStore(backend)
        self.hub.restore(self.kv)

    def _attach_leased_keys(self) -> None:
        # Collected while the store scanned the backend: ranging over every key here
        # instead took seconds and a copy of the whole store in memory with 1M keys.
        self.lessor.recover_attachments(self.kv.loaded_leases().items())

    # -- applying ---------------------------------------------------------------------------
    def apply(self, request: object, now: float, index: int = 0) -> Applied:
        """The response to ``request`` (the entry at raft ``index``); ``RequestError`` for one
        refused (nothing changed)."""
        if isinstance(request, pb.AlarmRequest):
            raise TypeError("alarms are applied by the member (they need the membership)")
        if isinstance(request, AuthRequest):
            return apply_auth(self.auth, request, index, now)  # type: ignore[no-any-return]
        if self.alarms.refuses(request):
            raise RequestError(*kvconv.ERR_NO_SPACE)
        if isinstance(request, pb.LeaseGrantRequest):
            return self._grant(request, now)
        if isinstance(request, pb.LeaseRevokeRequest):
            return self._revoke(request)
        if isinstance(request, pb.LeaseCheckpointRequest):
            for cp in request.checkpoints:
                self.lessor.checkpoint(cp.ID, cp.remaining_TTL, now)
            return pb.LeaseCheckpointResponse()
        changes: list[KeyValue] = []
        response = kvconv.apply_request(self.kv, request, changes=changes)  # type: ignore[arg-type]
        self._changed(changes)
        return response

    def _grant(self, req: pb.LeaseGrantRequest, now: float) -> pb.LeaseGrantResponse:
        try:
            lease = self.lessor.grant(req.ID, req.TTL, now)
        except LeaseError as exc:
            raise RequestError.from_error(exc) from exc
        return pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)

    def _revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        try:
            keys = self.lessor.revoke(req.ID)
        except LeaseError as exc:
            raise RequestError.from_error(exc) from exc
        if keys:
            result = self.kv.delete_keys(keys)
            self._changed(result.changes)
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = self.kv.current_revision
        return resp

    def _changed(self, changes: list[KeyValue]) -> None:
        if not changes:
            return
        for kv in changes:
            self.lessor.rebind(kv.key, kv.lease if kv.create_revision else 0)
        self.hub.notify(self.kv.current_revision, changes)
