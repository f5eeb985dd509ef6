"""Alarms (etcd's NOSPACE and CORRUPT), and the backend quota that raises NOSPACE.

Alarms are cluster state: raised and cleared by ``AlarmRequest`` entries that go
through Raft, kept in the backend's ``alarm`` bucket (key: the encoded
``AlarmMember``, as etcd), so every member refuses the same writes at the same
index. While NOSPACE is raised, the applier refuses every request that would
add data (a Put, a Txn with a Put in either branch, a LeaseGrant) with
"etcdserver: mvcc: database space exceeded"; deletes and compactions go on, so
an operator can make room, defragment and ``etcdctl alarm disarm``.

The quota is etcd's ``backendQuota``: a request that adds data is refused before
it is proposed when the db file plus the request's cost would reach
``--quota-backend-bytes``; the member then raises NOSPACE for itself.
"""

from __future__ import annotations

from collections.abc import Collection

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.storage.backend import Backend

ALARM_BUCKET = "alarm"
KV_OVERHEAD = 256  # etcd's kvOverhead: the bookkeeping a stored revision costs
LEASE_OVERHEAD = 64  # etcd's leaseOverhead


def quota_cost(request: object) -> int:
    """etcd's quota cost of a request: bytes it may add (0: it adds nothing)."""
    if isinstance(request, pb.PutRequest):
        return KV_OVERHEAD + len(request.key) + len(request.value)
    if isinstance(request, pb.TxnRequest):
        return max(_ops_cost(request.success), _ops_cost(request.failure))
    if isinstance(request, pb.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


def _ops_cost(ops: object) -> int:
    total = 0
    for op in ops:  # type: ignore[attr-defined]
        if op.WhichOneof("request") == "request_put":
            total += quota_cost(op.request_put)
    return total


def hard_limit(quota: int) -> int:
    """The LMDB map size for a quota: room above it, as bbolt grows past etcd's quota.

    The quota is enforced before proposing; what was proposed before the alarm
    applies must still fit, or members would fail to apply committed entries.
    """
    return max(2 * quota, quota + 64 * 1024 * 1024)


def describe(alarm: pb.AlarmMember) -> str:
    """etcd's text for an alarm in Status.errors (``AlarmMember.String()``)."""
    return f"memberID:{alarm.memberID} alarm:{pb.AlarmType.Name(alarm.alarm)} "


class Alarms:
    """The raised alarms, as applied; read from and written to the backend's batch."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._active: dict[tuple[int, int], pb.AlarmMember] = {}
        self.reload()

    def reload(self) -> None:
        """Read the bucket again (after the backend was replaced or rebuilt)."""
        self._active = {}
        for key, _ in self.backend.batch().range(ALARM_BUCKET, b"", b"\xff" * 32):
            alarm = pb.AlarmMember.FromString(key)
            self._active[(alarm.memberID, alarm.alarm)] = alarm

    def active(self, alarm: int = pb.NONE) -> list[pb.AlarmMember]:
        """Raised alarms (of type ``alarm``; NONE: all), by member id then type."""
        return [a for _, a in sorted(self._active.items()) if alarm in (pb.NONE, a.alarm)]

    @property
    def nospace(self) -> bool:
        return any(a.alarm == pb.NOSPACE for a in self._active.values())

    def refuses(self, request: object) -> bool:
        """Whether the applier must refuse ``request`` (NOSPACE and it adds data)."""
        return self.nospace and quota_cost(request) > 0

    def apply(self, req: pb.AlarmRequest, members: Collection[int]) -> pb.AlarmResponse:
        """An ACTIVATE or DEACTIVATE entry; the alarms it changed, as etcd answers."""
        resp = pb.AlarmResponse()
        alarm = pb.AlarmMember(memberID=req.memberID, alarm=req.alarm)
        key = (alarm.memberID, alarm.alarm)
        batch = self.backend.batch()
        if req.action == pb.AlarmRequest.ACTIVATE:
            if req.alarm == pb.NONE or req.memberID not in members:
                return resp  # etcd ignores an alarm for a member it does not know
            if key not in self._active:
                batch.put(ALARM_BUCKET, alarm.SerializeToString(), b"")
                self._active[key] = alarm
            resp.alarms.append(alarm)
        elif req.action == pb.AlarmRequest.DEACTIVATE and key in self._active:
            batch.delete(ALARM_BUCKET, alarm.SerializeToString())
            del self._active[key]
            resp.alarms.append(alarm)
        return resp
