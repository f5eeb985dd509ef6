"""Throughput of the bare Raft core: three in-process nodes over an instant network.

Each round proposes ``batch`` entries to the leader and drives every node
(persist to memory, deliver, apply) until the leader has applied them, so the
figure is what the core costs per committed entry with no I/O at all.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import deque
from dataclasses import asdict, dataclass

from cluster.raft import (
    ConfChange,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    RaftNode,
    StateType,
    bootstrap,
)

COMPACT_EVERY = 50_000


@dataclass
class RaftBenchResult:
    batch: int
    entries: int
    seconds: float

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds


class InstantCluster:
    def __init__(self, size: int = 3, seed: int = 1) -> None:
        ids = list(range(1, size + 1))
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        for node_id in ids:
            storage = MemoryStorage()
            bootstrap(storage, ids)
            self.storages[node_id] = storage
            cfg = Config(id=node_id, rng=random.Random(seed + node_id), max_size_per_msg=None)
            self.nodes[node_id] = RaftNode(cfg, storage)
        self.inbox: deque[Message] = deque()
        self.pump()
        self.nodes[1].campaign()
        self.pump()
        if self.nodes[1].state != StateType.LEADER:
            raise RuntimeError("node 1 did not become leader")
        self.leader = self.nodes[1]

    def pump(self, touched: set[int] | None = None) -> None:
        """Drive the nodes until nothing is left to persist, send or apply.

        Only nodes that were stepped (``touched``, all at first) can have work.
        """
        nodes, storages, inbox = self.nodes, self.storages, self.inbox
        pending = set(nodes) if touched is None else touched
        while pending:
            for node_id in pending:
                node = nodes[node_id]
                while node.has_ready():
                    self._handle_ready(node, storages[node_id])
            pending = set()
            while inbox:
                m = inbox.popleft()
                nodes[m.to].step(m)
                pending.add(m.to)

    def _handle_ready(self, node: RaftNode, storage: MemoryStorage) -> None:
        rd = node.ready()
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        self.inbox.extend(rd.messages)
        for entry in rd.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                node.apply_conf_change(ConfChange.decode(entry.data))
        node.advance(rd)

    def compact(self) -> None:
        for node_id, node in self.nodes.items():
            storage = self.storages[node_id]
            applied = node.log.applied
            if applied - storage.first_index() > COMPACT_EVERY:
                storage.create_snapshot(applied, node.trk.conf_state(), b"")
                storage.compact(applied)


def run_batch(batch: int, total: int, payload: bytes) -> RaftBenchResult:
    cluster = InstantCluster()
    leader = cluster.leader
    items = [payload] * batch
    rounds = max(1, total // batch)
    start_applied = leader.log.applied
    start = time.perf_counter()
    for i in range(rounds):
        leader.propose_batch(items)
        cluster.pump({leader.id})
        if i % 64 == 63:
            cluster.compact()
    seconds = time.perf_counter() - start
    done = leader.log.applied - start_applied
    if done < rounds * batch:
        raise RuntimeError(f"only {done} of {rounds * batch} entries were applied")
    return RaftBenchResult(batch, rounds * batch, seconds)


def add_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = workloads.add_parser("raft", help="committed entries/s of the bare Raft core (3 nodes)")
    p.add_argument("--batches", default="1,64,1024", help="comma-separated entries per proposal")
    p.add_argument("--seconds", type=float, default=2.0, help="approximate duration of each run")
    p.add_argument("--val-size", type=int, default=64, help="bytes of data per entry")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    payload = b"x" * args.val_size
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        # A short calibration run sizes the real one to about --seconds.
        probe = run_batch(batch, max(batch, 2000), payload)
        total = max(batch, int(probe.entries_per_second * args.seconds))
        results.append(run_batch(batch, total, payload))
    if args.json:
        print(
            json.dumps([asdict(r) | {"entries_per_second": r.entries_per_second} for r in results])
        )
        return 0
    print("Raft core, 3 nodes in one process, instant network, no I/O")
    print(f"{'batch':>6} {'entries':>10} {'seconds':>8} {'entries/s':>12}")
    for r in results:
        print(f"{r.batch:>6} {r.entries:>10} {r.seconds:>8.2f} {r.entries_per_second:>12,.0f}")
    return 0
