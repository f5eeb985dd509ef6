"""Requests forwarded between members: refused ones are dropped, never raised at the receiver."""

from __future__ import annotations

import pytest

from cluster.raft import Entry, Message, MessageType, ProposalDropped

from .sim import Cluster


def _leader_transferring_to(target: int) -> Cluster:
    c = Cluster((1, 2, 3), seed=3)
    c.elect(1)
    c.isolate(target)  # the transfer cannot finish while the target is cut off
    c.transfer_leader(1, target)
    assert c.raft(1).lead_transferee == target
    return c


def test_local_proposal_during_transfer_raises() -> None:
    c = _leader_transferring_to(3)
    with pytest.raises(ProposalDropped) as err:
        c.raft(1).propose(b"x")
    assert err.value.reason == ProposalDropped.TRANSFERRING


@pytest.mark.parametrize("origin", [2, 1])
def test_forwarded_proposal_refused_by_the_leader_is_dropped(origin: int) -> None:
    """Origin 1 is the leader itself: it proposed as a follower and the request came back."""
    c = _leader_transferring_to(3)
    leader = c.raft(1)
    last = leader.log.last_index()
    forwarded = Message(MessageType.PROP, to=1, frm=origin, entries=[Entry(0, 0, data=b"x")])
    leader.step_remote(forwarded)  # must not raise into the driver's receive loop
    assert leader.log.last_index() == last


def test_forwarded_read_without_leader_is_dropped() -> None:
    c = Cluster((1, 2, 3), seed=3)  # no election yet: nobody leads
    node = c.raft(2)
    node.step_remote(Message(MessageType.READ_INDEX, to=2, frm=1, context=b"r1"))
    assert not node.ready().messages
