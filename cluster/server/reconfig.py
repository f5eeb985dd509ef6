"""etcd's ``--strict-reconfig-check``: refuse membership changes that would lose quorum.

The rules are etcd's (v3.5 server/etcdserver/server.go and membership/cluster.go):
a member counts as *started* once it has a name (an initial member, or an added
one that has started and published itself); a peer counts as *connected* once
this member's stream to it has been up for ``HEALTH_INTERVAL``.

- Adding a voter needs a quorum of the grown voter set started (a one-member
  cluster may always grow to two); any add needs every voter connected.
- Promoting a learner counts the learner as a started voter.
- Removing a voter needs a quorum of the remaining voters started; removing a
  peer that is down is always allowed; otherwise the connected voters, less the
  one leaving, must still be a quorum of the remaining ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cluster.proto.etcdserverpb import rpc_pb2 as pb

from . import kvconv
from .kvconv import RequestError

HEALTH_INTERVAL = 5.0  # seconds, etcd's HealthInterval

# peer id -> when its stream came up (None: down); the local member is always up.
ActiveSince = Callable[[int], float | None]


def _voters(members: Sequence[pb.Member]) -> list[pb.Member]:
    return [m for m in members if not m.isLearner]


def _started(member: pb.Member) -> bool:
    return bool(member.name)


def _connected_since(
    members: Sequence[pb.Member], local_id: int, active_since: ActiveSince, since: float
) -> int:
    count = 0
    for member in members:
        if local_id == member.ID:
            count += 1
            continue
        up = active_since(member.ID)
        if up is not None and up <= since:
            count += 1
    return count


def check_add(
    members: Sequence[pb.Member],
    *,
    learner: bool,
    local_id: int,
    active_since: ActiveSince,
    now: float,
) -> None:
    voters = _voters(members)
    if not learner:
        size = len(voters) + 1
        started = sum(_started(m) for m in voters)
        if not (started == 1 and size == 2) and started < size // 2 + 1:
            raise RequestError(*kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS)
    since = now - HEALTH_INTERVAL
    if _connected_since(voters, local_id, active_since, since) != len(voters):
        raise RequestError(*kvconv.ERR_UNHEALTHY)


def check_promote(members: Sequence[pb.Member]) -> None:
    voters = _voters(members)
    size = len(voters) + 1
    started = 1 + sum(_started(m) for m in voters)
    if started < size // 2 + 1:
        raise RequestError(*kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS)


def check_remove(
    members: Sequence[pb.Member],
    member_id: int,
    *,
    local_id: int,
    active_since: ActiveSince,
    now: float,
) -> None:
    voters = _voters(members)
    if all(member_id != m.ID for m in voters):
        return  # a learner: never part of the quorum
    remaining = [m for m in voters if member_id != m.ID]
    if sum(_started(m) for m in remaining) < len(remaining) // 2 + 1:
        raise RequestError(*kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS)
    if member_id != local_id and active_since(member_id) is None:
        return  # a member that is down is not part of the active quorum
    active = _connected_since(voters, local_id, active_since, now - HEALTH_INTERVAL)
    if active - 1 < 1 + (len(voters) - 1) // 2:
        raise RequestError(*kvconv.ERR_UNHEALTHY)
