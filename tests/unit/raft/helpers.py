"""Helpers shared by the Raft unit tests.

Two kinds: bare ``RaftNode`` objects driven by hand (``new_node``, ``drain``,
``deliver``), and a simulated ``Cluster`` whose network traffic is observed
(``cluster``, ``record_sent``, ``run_rounds``, ...).
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from cluster.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    RaftNode,
    Snapshot,
    SnapshotMetadata,
)

from .sim import Cluster, NodeOptions

ET = 10  # election tick of the hand-driven nodes

# ---------------------------------------------------------------------------
# Bare nodes driven by hand
# ---------------------------------------------------------------------------


def _config(
    node_id: int,
    rng: random.Random,
    *,
    pre_vote: bool,
    check_quorum: bool,
    max_inflight: int,
    max_size_per_msg: int | None,
) -> Config:
    return Config(
        id=node_id,
        rng=rng,
        election_tick=ET,
        applied=1,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        max_inflight_msgs=max_inflight,
        max_size_per_msg=max_size_per_msg,
    )


def new_node(
    node_id: int,
    voters: Sequence[int],
    log_terms: Sequence[int] = (),
    *,
    term: int | None = None,
    vote: int = NONE,
    pre_vote: bool = False,
    check_quorum: bool = False,
    seed: int = 0,
    max_inflight: int = 2,
    max_size_per_msg: int | None = 1 << 20,
) -> RaftNode:
    """A node whose storage holds a snapshot at index 1 (term 1, config ``voters``)
    followed by entries 2, 3, ... with the given terms; ``term`` defaults to the last one."""
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMetadata(1, 1, ConfState(frozenset(voters)))))
    storage.append([Entry(t, i + 2, data=b"e%d" % (i + 2)) for i, t in enumerate(log_terms)])
    storage.set_hard_state(HardState(max([1, *log_terms]) if term is None else term, vote, 1))
    cfg = _config(
        node_id,
        random.Random(seed * 7919 + node_id),
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        max_inflight=max_inflight,
        max_size_per_msg=max_size_per_msg,
    )
    return RaftNode(cfg, storage)


def reboot(node: RaftNode) -> RaftNode:
    """The same member restarted from its storage (unpersisted state is lost), with the
    settings ``new_node`` gave it (rng as for seed 0)."""
    cfg = _config(
        node.id,
        random.Random(node.id),
        pre_vote=node.pre_vote,
        check_quorum=node.check_quorum,
        max_inflight=node.trk.max_inflight,
        max_size_per_msg=node.max_size_per_msg,
    )
    return RaftNode(cfg, node.log.storage)


def drain(node: RaftNode) -> list[Message]:
    """Run the node's Ready loop like a driver (persist, send, advance); return what it sent."""
    out: list[Message] = []
    storage = node.log.storage
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        out.extend(rd.messages)
        node.advance(rd)
    return out


def deliver(
    nodes: dict[int, RaftNode],
    msgs: list[Message],
    allow: Callable[[Message], bool] = lambda m: True,
) -> list[Message]:
    """Deliver ``msgs`` and every reply they cause until quiet; return the messages dropped."""
    dropped: list[Message] = []
    queue = deque(msgs)
    while queue:
        m = queue.popleft()
        if m.to not in nodes or not allow(m):
            dropped.append(m)
            continue
        target = nodes[m.to]
        target.step(dataclasses.replace(m, entries=[dataclasses.replace(e) for e in m.entries]))
        queue.extend(drain(target))
    return dropped


def of_type(msgs: list[Message], kind: MessageType, to: int | None = None) -> list[Message]:
    """The messages of type ``kind`` (and addressed to ``to``, if given)."""
    return [m for m in msgs if m.type == kind and (to is None or m.to == to)]


# ---------------------------------------------------------------------------
# The simulated cluster
# ---------------------------------------------------------------------------


def cluster(size: int = 3, leader: int = 1, *, seed: int, **opts: Any) -> Cluster:
    """A ``size``-node cluster (``NodeOptions(**opts)``) with ``leader`` elected and
    everything committed and applied."""
    c = Cluster(range(1, size + 1), seed=seed, opts=NodeOptions(**opts))
    c.elect(leader)
    assert c.leader() == leader
    return c


def on_send(c: Cluster, hook: Callable[[Message], None]) -> None:
    """From now on call ``hook`` with every message a node hands to the network, before
    the network sees it (so also with the ones it then drops)."""
    original = c.net.send

    def send(m: Message) -> bool:
        hook(m)
        return original(m)

    c.net.send = send  # type: ignore[method-assign]


def record_sent(c: Cluster) -> list[Message]:
    """Record every message the nodes hand to the network (including ones it then drops)."""
    sent: list[Message] = []
    on_send(c, sent.append)
    return sent


def heartbeat(c: Cluster, leader: int) -> None:
    """One leader tick (a heartbeat) without the other nodes' clocks moving."""
    c.raft(leader).tick()
    c.process(c.nodes[leader])


def run_rounds(c: Cluster, leader: int, follower: int) -> list[ProgressState]:
    """Deliver until quiet, returning the leader's progress state for ``follower``
    after every delivery round."""
    pr = c.raft(leader).trk.progress[follower]
    states = []
    while c.net.pending():
        c.deliver_round()
        states.append(pr.state)
    return states


def join_as_learner(c: Cluster, leader: int, node_id: int) -> None:
    """Start an empty node and add it as a learner through ``leader``; let it settle."""
    c.add_empty_node(node_id)
    c.propose_conf_change(leader, ConfChange(ConfChangeType.ADD_LEARNER_NODE, node_id))
    c.stabilize()
    c.tick(3)
    assert c.raft(node_id).is_learner
