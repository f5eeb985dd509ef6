"""The Cluster service's membership changes on a real single-member cluster in this process.

The servicer's request methods (``member_add`` ...) raise ``RequestError`` with etcd's codes
and messages; the gRPC methods answer those with ``context.abort``. Members added here never
start: like etcd, the cluster lists them (with an empty name) and keeps trying to reach them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from cluster.bench.ports import free_ports
from cluster.config import compute_member_id, parse_url
from cluster.proto.etcdserverpb import rpc_pb2 as pb
from cluster.server import kvconv
from cluster.server.cluster import ClusterServicer
from cluster.server.kvconv import RequestError
from cluster.server.requests import decode_request, encode_request
from tests.unit.server.live import LiveMember, start_member


def _url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def _ids(members: list[pb.Member] | object) -> dict[int, pb.Member]:
    assert not isinstance(members, pb.Member)
    return {m.ID: m for m in members}  # type: ignore[attr-defined]


async def test_add_learner_is_listed_and_can_be_removed(live: LiveMember) -> None:
    m = live.member
    svc = ClusterServicer(m)
    url = _url()
    before = int(time.time())
    resp = await svc.member_add(pb.MemberAddRequest(peerURLs=[url], isLearner=True))
    # etcd's id for an added member: peer URLs, token and the time of the request
    token = m.cfg.initial_cluster_token
    want_id = resp.member.ID
    assert want_id in {
        compute_member_id([parse_url(url, "x")], token, t)
        for t in range(before, int(time.time()) + 1)
    }
    assert resp.member == pb.Member(ID=want_id, peerURLs=[url], isLearner=True)
    assert resp.header.member_id == m.id
    listed = _ids(resp.members)
    assert set(listed) == {m.id, want_id}
    assert listed[want_id].isLearner and listed[want_id].name == ""
    assert want_id in m.conf.learners
    assert want_id in m.transport._peers

    # the same peer URL again; the member's own URL
    for again in (url, str(m.cfg.initial_advertise_peer_urls[0])):
        with pytest.raises(RequestError) as e:
            await svc.member_add(pb.MemberAddRequest(peerURLs=[again]))
        assert e.value == RequestError(*kvconv.ERR_PEER_URL_EXIST)

    # promoting a learner that never started: not in sync with the leader
    with pytest.raises(RequestError) as e:
        await svc.member_promote(pb.MemberPromoteRequest(ID=want_id))
    assert e.value == RequestError(*kvconv.ERR_LEARNER_NOT_READY)

    removed = await svc.member_remove(pb.MemberRemoveRequest(ID=want_id))
    assert set(_ids(removed.members)) == {m.id}
    assert want_id not in m.conf.learners | m.conf.voters
    batch = m.backend.batch()
    key = want_id.to_bytes(8, "big")
    assert batch.get("members", key) is None
    assert batch.get("members_removed", key) is not None
    assert want_id not in m.transport._peers
    assert not m.removed.is_set()


async def test_errors_for_unknown_members_and_voters(live: LiveMember) -> None:
    m = live.member
    svc = ClusterServicer(m)
    with pytest.raises(RequestError) as e:
        await svc.member_remove(pb.MemberRemoveRequest(ID=0x1234))
    assert e.value == RequestError(*kvconv.ERR_MEMBER_NOT_FOUND)
    assert e.value.message == "etcdserver: member not found"
    with pytest.raises(RequestError) as e:
        await svc.member_promote(pb.MemberPromoteRequest(ID=m.id))
    assert e.value.message == "etcdserver: can only promote a learner member"
    with pytest.raises(RequestError) as e:
        await svc.member_promote(pb.MemberPromoteRequest(ID=0x1234))
    assert e.value == RequestError(*kvconv.ERR_MEMBER_NOT_FOUND)
    with pytest.raises(RequestError) as e:
        await svc.member_update(pb.MemberUpdateRequest(ID=0x1234, peerURLs=[_url()]))
    assert e.value == RequestError(*kvconv.ERR_MEMBER_NOT_FOUND)
    for bad in ([], ["not a url"], ["ftp://127.0.0.1:1"]):
        with pytest.raises(RequestError) as e:
            await svc.member_add(pb.MemberAddRequest(peerURLs=bad))
        assert e.value == RequestError(*kvconv.ERR_MEMBER_BAD_URLS)
    # the only voter cannot be removed: etcd's strict reconfig check says so first ...
    with pytest.raises(RequestError) as e:
        await svc.member_remove(pb.MemberRemoveRequest(ID=m.id))
    assert e.value == RequestError(*kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS)
    # ... and without it, the Raft core refuses
    m.cfg = dataclasses.replace(m.cfg, strict_reconfig_check=False)
    with pytest.raises(RequestError) as e:
        await svc.member_remove(pb.MemberRemoveRequest(ID=m.id))
    assert e.value == RequestError(*kvconv.ERR_REMOVE_LAST_VOTER)


async def test_strict_reconfig_check_keeps_a_quorum_of_started_members(
    live: LiveMember,
) -> None:
    m = live.member
    svc = ClusterServicer(m)
    # a learner while every voter (only this one) is connected
    learner = await svc.member_add(pb.MemberAddRequest(peerURLs=[_url()], isLearner=True))
    # one member may grow to two even though the second never starts ...
    first = await svc.member_add(pb.MemberAddRequest(peerURLs=[_url()]))
    # ... but a third voter would leave only one of three started: refused, nothing changes
    with pytest.raises(RequestError) as e:
        await svc.member_add(pb.MemberAddRequest(peerURLs=[_url()]))
    assert e.value == RequestError(*kvconv.ERR_NOT_ENOUGH_STARTED_MEMBERS)
    assert m.conf.voters == {m.id, first.member.ID}
    # a learner is not counted, but every voter must be connected: the new one never is
    with pytest.raises(RequestError) as e:
        await svc.member_add(pb.MemberAddRequest(peerURLs=[_url()], isLearner=True))
    assert e.value == RequestError(*kvconv.ERR_UNHEALTHY)
    assert m.conf.learners == {learner.member.ID}


async def test_changes_proposed_together_are_applied_one_after_the_other(
    live: LiveMember,
) -> None:
    # The second finds the first pending in the Raft core: it waits for it, then goes through.
    svc = ClusterServicer(live.member)
    first, second = await asyncio.gather(
        svc.member_add(pb.MemberAddRequest(peerURLs=[_url()], isLearner=True)),
        svc.member_add(pb.MemberAddRequest(peerURLs=[_url()], isLearner=True)),
    )
    assert {first.member.ID, second.member.ID} == set(live.member.conf.learners)


async def test_a_change_right_after_the_election(tmp_path: Path) -> None:
    # A new leader's own first entry counts as a pending change until it is applied.
    lm = await start_member(tmp_path / "m0")
    try:
        await lm.wait_leader()
        added = await ClusterServicer(lm.member).member_add(
            pb.MemberAddRequest(peerURLs=[_url()], isLearner=True)
        )
        assert added.member.ID in lm.member.conf.learners
    finally:
        await lm.stop()


async def test_update_peer_urls_of_an_added_member(live: LiveMember) -> None:
    m = live.member
    svc = ClusterServicer(m)
    added = await svc.member_add(pb.MemberAddRequest(peerURLs=[_url()], isLearner=True))
    new_url = _url()
    resp = await svc.member_update(pb.MemberUpdateRequest(ID=added.member.ID, peerURLs=[new_url]))
    assert list(_ids(resp.members)[added.member.ID].peerURLs) == [new_url]
    assert m.transport._peers[added.member.ID].port == parse_url(new_url, "x").port
    # a URL another member uses
    own = str(m.cfg.initial_advertise_peer_urls[0])
    with pytest.raises(RequestError) as e:
        await svc.member_update(pb.MemberUpdateRequest(ID=added.member.ID, peerURLs=[own]))
    assert e.value == RequestError(*kvconv.ERR_PEER_URL_EXIST)
    # this member publishes its name and client URLs; its stored peer URLs stay
    async with asyncio.timeout(5):
        while not _ids(m.members())[m.id].clientURLs:
            await asyncio.sleep(0.02)
    mine = _ids(m.members())[m.id]
    assert (mine.name, list(mine.peerURLs)) == ("m0", [own])


def test_member_update_request_entry_round_trip() -> None:
    req = pb.MemberUpdateRequest(ID=7, peerURLs=["http://10.0.0.1:2380"])
    decoded = decode_request(encode_request(3, 9, req))
    assert (decoded.origin, decoded.request_id, decoded.request) == (3, 9, req)
