"""etcd's strict reconfiguration rules (``cluster.server.reconfig``), case by case."""

from __future__ import annotations

import pytest

from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.server import kvconv, reconfig
from cluster.server.kvconv import RequestError

NOW = 100.0
LONG_AGO = NOW - reconfig.HEALTH_INTERVAL - 1


def _members(started: int, unstarted: int = 0, learners: int = 0) -> list[pb.Member]:
    out = [pb.Member(ID=i + 1, name=f"m{i + 1}") for i in range(started)]
    out += [pb.Member(ID=100 + i) for i in range(unstarted)]
    out += [pb.Member(ID=200 + i, name=f"l{i}", isLearner=True) for i in range(learners)]
    return out


def _up(*ids: int, since: float = LONG_AGO) -> reconfig.ActiveSince:
    return lambda peer: since if peer in ids else None


def _refused(spec: kvconv.ErrorSpec, check: object, *args: object, **kw: object) -> None:
    with pytest.raises(RequestError) as e:
        check(*args, **kw)  # type: ignore[operator]
    assert e.value == RequestError(*spec)


def test_add_needs_a_started_quorum_of_the_grown_cluster() -> None:
    three = _members(3)
    reconfig.check_add(three, learner=False, local_id=1, active_since=_up(2, 3), now=NOW)
    # 3 started of 5 after the add: still a quorum
    four = _members(3, unstarted=1)
    reconfig.check_add(four, learner=False, local_id=1, active_since=_up(2, 3, 100), now=NOW)
    # 3 started of 6: not
    five = _members(3, unstarted=2)
    _refused(
        kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS,
        reconfig.check_add,
        five,
        learner=False,
        local_id=1,
        active_since=_up(2, 3, 100, 101),
        now=NOW,
    )
    # a learner is not counted against the quorum
    reconfig.check_add(five, learner=True, local_id=1, active_since=_up(2, 3, 100, 101), now=NOW)


def test_add_needs_every_voter_connected_for_the_health_interval() -> None:
    three = _members(3)
    _refused(
        kvconv.ERR_UNHEALTHY,
        reconfig.check_add,
        three,
        learner=True,
        local_id=1,
        active_since=_up(2),
        now=NOW,
    )
    _refused(
        kvconv.ERR_UNHEALTHY,
        reconfig.check_add,
        three,
        learner=False,
        local_id=1,
        active_since=_up(2, 3, since=NOW - 1),  # connected, but only just
        now=NOW,
    )


def test_promote_counts_the_learner_as_started() -> None:
    reconfig.check_promote(_members(1, learners=1))
    reconfig.check_promote(_members(2, unstarted=1, learners=1))
    _refused(kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS, reconfig.check_promote, _members(1, 2, 1))


def test_remove_keeps_an_active_quorum() -> None:
    three = _members(3)
    reconfig.check_remove(three, 3, local_id=1, active_since=_up(2, 3), now=NOW)
    # member 3 is down: removing it is always allowed
    reconfig.check_remove(three, 3, local_id=1, active_since=_up(2), now=NOW)
    # removing a live member while another is down would leave one of two active
    _refused(
        kvconv.ERR_UNHEALTHY,
        reconfig.check_remove,
        three,
        2,
        local_id=1,
        active_since=_up(2),
        now=NOW,
    )
    # removing the only started voter of the remaining ones
    _refused(
        kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS,
        reconfig.check_remove,
        _members(2, unstarted=1),
        2,
        local_id=1,
        active_since=_up(2, 100),
        now=NOW,
    )
    # a learner is never part of the quorum
    reconfig.check_remove(_members(1, learners=1), 200, local_id=1, active_since=_up(), now=NOW)
