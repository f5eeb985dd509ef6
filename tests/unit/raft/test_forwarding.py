"""Requests forwarded between members: refused ones are dropped, never raised at the receiver."""

from __future__ import annotations

from collections import deque

import pytest

from cluster.raft import Entry, Message, MessageType, ProposalDropped, RaftNode, Ready, StateType

from .helpers import drain, new_node
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


# -- which commits a client of another member waits for --------------------------------


def _run_recording(nodes: dict[int, RaftNode], first: list[Message]) -> list[tuple[int, Ready]]:
    """Deliver ``first`` and every message it causes until quiet, handling each node's
    Readies as a driver does; return (node, Ready) for each Ready with committed entries."""
    seen: list[tuple[int, Ready]] = []
    queue = deque(first)

    def handle(node_id: int) -> None:
        node = nodes[node_id]
        storage = node.log.storage
        while node.has_ready():
            rd = node.ready()
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            if rd.committed_entries:
                seen.append((node_id, rd))
            queue.extend(rd.messages)
            node.advance(rd)

    for node_id in nodes:
        handle(node_id)
    while queue:
        m = queue.popleft()
        nodes[m.to].step_remote(m)
        handle(m.to)
    return seen


def _data(rd: Ready) -> list[bytes]:
    return [e.data for e in rd.committed_entries if e.data]


def test_a_leader_marks_commits_of_entries_proposed_through_another_member() -> None:
    # Entries 2 and 3 of term 1, not known to be committed: a new leader cannot tell who
    # proposed them, so its first commit (them and its no-op) is marked.
    nodes = {i: new_node(i, [1, 2, 3], log_terms=[1, 1]) for i in (1, 2, 3)}
    nodes[1].campaign()
    elected = _run_recording(nodes, [])
    assert nodes[1].state == StateType.LEADER
    assert [(rd.committed_entries[0].index, rd.forwarded_committed)
            for n, rd in elected if n == 1] == [(2, True)]  # fmt: skip

    nodes[1].propose(b"local")
    seen = _run_recording(nodes, [])
    assert [(n, _data(rd), rd.forwarded_committed) for n, rd in seen] == [
        (1, [b"local"], False),
        (2, [b"local"], False),
        (3, [b"local"], False),
    ]

    nodes[2].propose(b"via 2")
    seen = _run_recording(nodes, [])
    assert [(n, _data(rd), rd.forwarded_committed) for n, rd in seen] == [
        (1, [b"via 2"], True),
        (2, [b"via 2"], False),  # followers send no commit notices: never marked
        (3, [b"via 2"], False),
    ]

    nodes[1].propose(b"local again")  # after the forwarded one committed: unmarked
    seen = _run_recording(nodes, [])
    assert [(n, rd.forwarded_committed) for n, rd in seen if n == 1] == [(1, False)]


def test_a_commit_of_local_and_forwarded_entries_together_is_marked() -> None:
    nodes = {i: new_node(i, [1, 2, 3]) for i in (1, 2, 3)}
    nodes[1].campaign()
    _run_recording(nodes, [])
    nodes[2].propose(b"via 2")
    forwarded = drain(nodes[2])
    nodes[1].propose(b"local")  # appended first; the forwarded entry right after it
    nodes[1].step_remote(forwarded[0])
    acks = []
    for m in drain(nodes[1]):  # the leader's appends; it persists its own copy
        nodes[m.to].step_remote(m)
        acks += drain(nodes[m.to])
    for ack in acks:  # all acknowledged before the leader's next Ready: one commit
        nodes[1].step_remote(ack)
    rd = nodes[1].ready()
    assert (_data(rd), rd.forwarded_committed) == ([b"local", b"via 2"], True)
