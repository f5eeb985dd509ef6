"""A deterministic simulated cluster for the Raft core.

Every node is a ``RaftNode`` driven exactly as a member drives it (persist,
send, apply, advance) over a simulated network and clock. Faults (loss,
duplication, delay and so reordering, partitions, crashes that lose what was
not persisted, membership changes, leader transfers) are chosen from one
seeded ``random.Random``, so a seed replays the same run step for step.

Safety invariants are checked as the run goes (see ``InvariantChecker``); a
violation raises ``InvariantViolation`` carrying the seed and a trace.

Replay a seed with:  python -m tests.unit.raft.sim --seed N [--trace]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import pickle
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    ReadState,
    Ready,
    Snapshot,
    StateType,
    bootstrap,
)


class InvariantViolation(AssertionError):
    pass


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------
class InvariantChecker:
    """Raft's safety properties, checked incrementally as nodes persist and apply."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        # (index, term) -> (type, data, term of the previous entry); by induction
        # equal (index, term) then means equal logs up to that index.
        self.entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.applied: list[tuple[int, int, bytes]] = [(0, 0, b"")]  # index -> (term, type, data)
        self.read_floor: dict[bytes, int] = {}
        self.reads_checked = 0

    @property
    def max_applied(self) -> int:
        return len(self.applied) - 1

    def on_leader(self, node: RaftNode) -> None:
        term = node.term
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise InvariantViolation(f"two leaders in term {term}: {other} and {node.id}")
        # Leader completeness: the new leader holds every entry ever applied.
        first = node.log.first_index()
        for index in range(max(first, 1), len(self.applied)):
            want = self.applied[index][0]
            have = node.log.term(index)
            if have != want:
                raise InvariantViolation(
                    f"leader {node.id} of term {term} lacks committed entry {index} "
                    f"(term {want}); its log has term {have}"
                )

    def on_persist(self, node_id: int, entries: list[Entry], prev_term: int | None) -> None:
        for entry in entries:
            key = (entry.index, entry.term)
            record = (int(entry.type), entry.data, prev_term)
            seen = self.entries.setdefault(key, record)
            if seen != record and not (seen[:2] == record[:2] and None in (seen[2], record[2])):
                raise InvariantViolation(
                    f"log matching: node {node_id} persisted entry {key} as {record}, "
                    f"another node holds {seen}"
                )
            prev_term = entry.term

    def on_apply(self, node_id: int, entry: Entry) -> None:
        record = (entry.term, int(entry.type), entry.data)
        if entry.index < len(self.applied):
            if self.applied[entry.index] != record:
                raise InvariantViolation(
                    f"state machine safety: node {node_id} applied {record} at index "
                    f"{entry.index}, another node applied {self.applied[entry.index]}"
                )
        elif entry.index == len(self.applied):
            self.applied.append(record)
        else:
            raise InvariantViolation(
                f"node {node_id} applied index {entry.index} with a gap (global {self.max_applied})"
            )

    def on_read_issued(self, ctx: bytes) -> None:
        self.read_floor[ctx] = self.max_applied

    def on_read_state(self, node_id: int, rs: ReadState) -> None:
        floor = self.read_floor.get(rs.request_ctx)
        if floor is None:
            raise InvariantViolation(f"node {node_id} got a read state for unknown {rs}")
        if rs.index < floor:
            raise InvariantViolation(
                f"stale read: node {node_id} got read index {rs.index} for {rs.request_ctx!r}, "
                f"but index {floor} was acknowledged before the read was issued"
            )
        self.reads_checked += 1


# ---------------------------------------------------------------------------
# Nodes, state machine, network
# ---------------------------------------------------------------------------
@dataclass
class StateMachine:
    """Applied normal entries, in order; snapshots are its pickled form."""

    index: int = 0
    values: list[bytes] = field(default_factory=list)

    def snapshot_data(self) -> bytes:
        return pickle.dumps((self.index, self.values))

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> StateMachine:
        if snapshot.is_empty():
            return cls()
        index, values = pickle.loads(snapshot.data)
        return cls(index, list(values))


@dataclass
class NodeOptions:
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 2
    max_size_per_msg: int | None = 1 << 20
    snapshot_every: int | None = None  # applied entries between snapshots
    keep_after_snapshot: int = 0  # entries kept in the log behind a snapshot
    leader_sends_before_persist: bool = False  # the member's parallel WAL write


class SimNode:
    def __init__(self, node_id: int, storage: MemoryStorage, opts: NodeOptions, seed: int) -> None:
        self.id = node_id
        self.storage = storage
        self.opts = opts
        self.seed = seed
        self.restarts = 0
        self.raft: RaftNode | None = None
        self.sm = StateMachine()
        self.conf = ConfState()
        self.read_states: list[ReadState] = []
        self.start()

    @property
    def alive(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        snap = self.storage.snapshot()
        self.sm = StateMachine.from_snapshot(snap)
        self.conf = snap.metadata.conf_state
        rng = random.Random(self.seed * 1_000_003 + self.id * 1009 + self.restarts)
        o = self.opts
        cfg = Config(
            id=self.id,
            rng=rng,
            election_tick=o.election_tick,
            heartbeat_tick=o.heartbeat_tick,
            applied=snap.metadata.index,
            max_inflight_msgs=o.max_inflight,
            max_size_per_msg=o.max_size_per_msg,
            check_quorum=o.check_quorum,
            pre_vote=o.pre_vote,
        )
        self.raft = RaftNode(cfg, self.storage)

    def crash(self) -> None:
        self.raft = None
        self.restarts += 1
        self.read_states = []

    def node(self) -> RaftNode:
        if self.raft is None:
            raise RuntimeError(f"node {self.id} is down")
        return self.raft


@dataclass
class NetworkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 0  # in delivery rounds; a tick has several rounds


class SimNetwork:
    def __init__(self, rng: random.Random, faults: NetworkFaults) -> None:
        self.rng = rng
        self.faults = faults
        self.cut: set[tuple[int, int]] = set()  # directed links that drop everything
        self.down: set[int] = set()
        self.drop_types: set[MessageType] = set()
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.now = 0  # delivery round
        self.sent = 0
        self.dropped = 0

    def blocked(self, frm: int, to: int) -> bool:
        return frm in self.down or to in self.down or (frm, to) in self.cut

    def send(self, m: Message) -> bool:
        """Queue ``m`` for delivery; False if it is lost at once."""
        self.sent += 1
        f = self.faults
        if self.blocked(m.frm, m.to) or m.type in self.drop_types:
            self.dropped += 1
            return False
        if f.drop and self.rng.random() < f.drop:
            self.dropped += 1
            return False
        copies = 2 if f.duplicate and self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(0, f.max_delay) if f.max_delay else 0
            self._seq += 1
            heapq.heappush(self._queue, (self.now + delay, self._seq, m))
        return True

    def due(self) -> list[Message]:
        out = []
        while self._queue and self._queue[0][0] <= self.now:
            out.append(heapq.heappop(self._queue)[2])
        return out

    def pending(self) -> int:
        return len(self._queue)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups (links within a group stay)."""
        sets = [set(g) for g in groups]
        self.cut = {
            (a, b)
            for i, ga in enumerate(sets)
            for j, gb in enumerate(sets)
            if i != j
            for a in ga
            for b in gb
        }

    def isolate(self, node_id: int, all_ids: Iterable[int]) -> None:
        others = [i for i in all_ids if i != node_id]
        self.partition([node_id], others)

    def heal(self) -> None:
        self.cut = set()
        self.drop_types = set()


def _copy_message(m: Message) -> Message:
    """What a real wire does: the receiver gets its own copy."""
    entries = m.entries
    if m.type == MessageType.PROP:
        entries = [Entry(e.term, e.index, e.type, e.data) for e in entries]
    else:
        entries = list(entries)
    return dataclasses.replace(m, entries=entries)


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------
class Cluster:
    """Drives RaftNodes over a SimNetwork, checking invariants all along."""

    ROUNDS_PER_TICK = 4

    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        seed: int = 0,
        opts: NodeOptions | None = None,
        faults: NetworkFaults | None = None,
        trace_size: int = 3000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.opts = opts or NodeOptions()
        self.net = SimNetwork(random.Random(seed ^ 0x5EED), faults or NetworkFaults())
        self.check = InvariantChecker()
        self.trace: deque[tuple[object, ...]] = deque(maxlen=trace_size)
        self.stats: Counter[str] = Counter()
        # Called as (node id, point name) at each crash point of the Ready loop.
        self.crash_points: Callable[[int, str], bool] | None = None
        self.ticks = 0
        self.nodes: dict[int, SimNode] = {}
        # (sender, receiver, failed): a transport reports how a snapshot send ended.
        self._snapshot_status: list[tuple[int, int, bool]] = []
        ids = list(ids)
        for node_id in ids:
            storage = MemoryStorage()
            bootstrap(storage, ids)
            self.nodes[node_id] = SimNode(node_id, storage, self.opts, seed)
        self.process_all()

    # -- observation -------------------------------------------------------
    def log(self, *event: object) -> None:
        self.trace.append((self.ticks, *event))
        self.stats[str(event[0])] += 1

    def format_trace(self, last: int | None = None) -> str:
        events = list(self.trace)[-last:] if last else list(self.trace)
        return "\n".join(f"t={e[0]:<5} " + " ".join(map(str, e[1:])) for e in events)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def raft(self, node_id: int) -> RaftNode:
        return self.nodes[node_id].node()

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        best: RaftNode | None = None
        for n in self.live():
            r = n.node()
            if r.state == StateType.LEADER and (best is None or r.term > best.term):
                best = r
        return best.id if best else None

    def applied_values(self, node_id: int) -> list[bytes]:
        return self.nodes[node_id].sm.values

    # -- driving -----------------------------------------------------------
    def process(self, sn: SimNode) -> None:
        """Handle every Ready of one node, as a member's loop would."""
        while sn.raft is not None and sn.raft.has_ready():
            r = sn.raft
            rd = r.ready()
            # A leader may send before its own fsync (it counts itself only after
            # advance); anything that changes term or vote must be durable first.
            hs = sn.storage.hard_state
            send_first = (
                self.opts.leader_sends_before_persist
                and r.state == StateType.LEADER
                and (
                    rd.hard_state is None
                    or (rd.hard_state.term, rd.hard_state.vote) == (hs.term, hs.vote)
                )
            )
            if send_first:
                self._send_all(rd)
            if self._crash_point(sn, "before-persist"):
                return
            if rd.entries and self._crash_point(sn, "torn-persist"):
                self._persist_torn(sn, rd)
                return
            self._persist(sn, rd)
            if self._crash_point(sn, "after-persist"):
                return
            if not send_first:
                self._send_all(rd)
            if self._crash_point(sn, "after-send"):
                return
            self._apply(sn, rd)
            r.advance(rd)
            if rd.soft_state is not None:
                self.log("state", sn.id, rd.soft_state.state.name, "term", r.term, "lead", r.lead)
                if rd.soft_state.state == StateType.LEADER:
                    self.check.on_leader(r)
            self._maybe_snapshot(sn)

    def _send_all(self, rd: Ready) -> None:
        for m in rd.messages:
            self.log("send", m.frm, "->", m.to, _describe(m))
            if not self.net.send(m) and m.type == MessageType.SNAP:
                self._snapshot_status.append((m.frm, m.to, True))

    def _crash_point(self, sn: SimNode, point: str) -> bool:
        """Crash ``sn`` here if the run's crash-point policy says so."""
        if self.crash_points is None or not self.crash_points(sn.id, point):
            return False
        self.log("crash-point", sn.id, point)
        self.crash(sn.id)
        return True

    def _persist_torn(self, sn: SimNode, rd: Ready) -> None:
        """Power lost mid-write: a prefix of the entries reached the disk, nothing else.

        This is what a WAL leaves after truncating a torn last record: entries are
        written before the hard state, so the hard state of this batch is lost.
        """
        if rd.snapshot is not None:
            return
        keep = rd.entries[: self.rng.randrange(len(rd.entries))]
        if keep:
            prev_term = sn.storage.term(keep[0].index - 1)
            sn.storage.append(keep)
            self.check.on_persist(sn.id, keep, prev_term)
        self.log("torn-write", sn.id, f"kept {len(keep)} of {len(rd.entries)} entries")

    def _persist(self, sn: SimNode, rd: Ready) -> None:
        st = sn.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            first = rd.entries[0].index
            try:
                prev_term: int | None = st.term(first - 1)
            except Exception:
                prev_term = None
            st.append(rd.entries)
            self.check.on_persist(sn.id, rd.entries, prev_term)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)

    def _apply(self, sn: SimNode, rd: Ready) -> None:
        r = sn.node()
        if rd.snapshot is not None:
            sn.sm = StateMachine.from_snapshot(rd.snapshot)
            sn.conf = rd.snapshot.metadata.conf_state
            self.log("restore", sn.id, "snapshot", rd.snapshot.metadata.index)
        for e in rd.committed_entries:
            self.check.on_apply(sn.id, e)
            if e.type == EntryType.CONF_CHANGE:
                change = ConfChange.decode(e.data)
                sn.conf = r.apply_conf_change(change)
                self.log("conf", sn.id, change.type.name, change.node_id, "at", e.index)
            elif e.data:
                sn.sm.values.append(e.data)
            sn.sm.index = e.index
        for rs in rd.read_states:
            self.check.on_read_state(sn.id, rs)
            sn.read_states.append(rs)

    def _maybe_snapshot(self, sn: SimNode) -> None:
        every = self.opts.snapshot_every
        st = sn.storage
        if not every or sn.sm.index - st.snapshot().metadata.index < every:
            return
        st.create_snapshot(sn.sm.index, sn.conf, sn.sm.snapshot_data())
        upto = sn.sm.index - self.opts.keep_after_snapshot
        if upto > st.first_index() - 1:
            st.compact(upto)
        self.log("snapshot", sn.id, "at", sn.sm.index)

    def process_all(self) -> None:
        for sn in self.nodes.values():
            self.process(sn)

    def deliver_round(self) -> int:
        """Deliver the messages due this round; returns how many arrived."""
        delivered = 0
        for m in self.net.due():
            target = self.nodes.get(m.to)
            if target is None or target.raft is None or self.net.blocked(m.frm, m.to):
                if m.type == MessageType.SNAP:
                    self._snapshot_status.append((m.frm, m.to, True))
                continue
            if m.type == MessageType.SNAP:
                self._snapshot_status.append((m.frm, m.to, False))
            delivered += 1
            self.log("recv", m.frm, "->", m.to, _describe(m))
            target.raft.step_remote(_copy_message(m))
            self.process(target)
        self._report_snapshots()
        self.net.now += 1
        return delivered

    def _report_snapshots(self) -> None:
        reports, self._snapshot_status = self._snapshot_status, []
        for frm, to, failed in reports:
            sender = self.nodes[frm]
            if sender.raft is not None:
                self.log("snap-status", frm, "->", to, "failed" if failed else "ok")
                sender.raft.report_snapshot(to, failed)
                self.process(sender)

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Deliver messages (no time passes) until the network is quiet."""
        self.process_all()
        for _ in range(max_rounds):
            if not self.net.pending():
                return
            self.deliver_round()
        raise RuntimeError("network did not quiesce")

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.ticks += 1
            for sn in self.nodes.values():
                if sn.raft is not None:
                    sn.raft.tick()
                    self.process(sn)
            for _ in range(self.ROUNDS_PER_TICK):
                self.deliver_round()

    def run_until(self, done: Callable[[], bool], max_ticks: int) -> bool:
        for _ in range(max_ticks):
            if done():
                return True
            self.tick()
        return done()

    # -- actions -----------------------------------------------------------
    def elect(self, node_id: int) -> None:
        """Make ``node_id`` campaign and let the election finish."""
        self.raft(node_id).campaign()
        self.stabilize()

    def propose(self, node_id: int, data: bytes) -> None:
        self.log("propose", node_id, data)
        self.raft(node_id).propose(data)
        self.process(self.nodes[node_id])

    def propose_conf_change(self, node_id: int, change: ConfChange) -> None:
        self.log("propose-conf", node_id, change.type.name, change.node_id)
        self.raft(node_id).propose_conf_change(change)
        self.process(self.nodes[node_id])

    def read_index(self, node_id: int, ctx: bytes) -> None:
        self.check.on_read_issued(ctx)
        self.log("read-index", node_id, ctx)
        self.raft(node_id).read_index(ctx)
        self.process(self.nodes[node_id])

    def transfer_leader(self, node_id: int, transferee: int) -> None:
        self.log("transfer", node_id, "->", transferee)
        self.raft(node_id).transfer_leader(transferee)
        self.process(self.nodes[node_id])

    def crash(self, node_id: int) -> None:
        """Power loss: everything not yet persisted is gone."""
        self.log("crash", node_id)
        self.nodes[node_id].crash()
        self.net.down.add(node_id)

    def restart(self, node_id: int) -> None:
        self.log("restart", node_id)
        self.net.down.discard(node_id)
        self.nodes[node_id].start()
        self.process(self.nodes[node_id])

    def add_empty_node(self, node_id: int) -> SimNode:
        """A new member process with an empty data dir (not yet in the configuration)."""
        self.log("new-node", node_id)
        sn = SimNode(node_id, MemoryStorage(), self.opts, self.seed)
        self.nodes[node_id] = sn
        return sn

    def partition(self, *groups: Iterable[int]) -> None:
        self.log("partition", [sorted(g) for g in groups])
        self.net.partition(*groups)

    def isolate(self, node_id: int) -> None:
        self.log("isolate", node_id)
        self.net.isolate(node_id, self.nodes)

    def heal(self) -> None:
        self.log("heal")
        self.net.heal()


def _describe(m: Message) -> str:
    parts = [m.type.name, f"term={m.term}"]
    if m.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"idx={m.index}/{m.log_term}")
    if m.entries:
        parts.append(f"ents={m.entries[0].index}..{m.entries[-1].index}")
    if m.type in (MessageType.APP, MessageType.HEARTBEAT):
        parts.append(f"commit={m.commit}")
    if m.type == MessageType.APP_RESP:
        parts.append(f"idx={m.index}")
    if m.reject:
        parts.append(f"reject hint={m.reject_hint}/{m.log_term}")
    if m.snapshot is not None:
        parts.append(f"snap={m.snapshot.metadata.index}")
    if m.context:
        parts.append(f"ctx={m.context!r}")
    return " ".join(parts)


# ---------------------------------------------------------------------------
# Randomized runs
# ---------------------------------------------------------------------------
@dataclass
class RunResult:
    seed: int
    ticks: int
    applied: int
    elections: int
    reads: int
    heal_ticks: int
    summary: str


class RandomRun:
    """One seeded run: random traffic and faults, then a heal and a liveness check."""

    FAULT_TICKS = 250
    LIVENESS_BOUND_TICKS = 400  # after healing, a proposal must commit within this

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = self.rng = random.Random(seed)
        size = rng.choice((3, 3, 5))
        self.opts = NodeOptions(
            election_tick=10,
            heartbeat_tick=rng.choice((1, 2, 3)),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            max_inflight=rng.choice((1, 2, 4, 64)),
            max_size_per_msg=rng.choice((None, 1 << 20, 20)),
            snapshot_every=rng.choice((None, 5, 20, 50)),
            keep_after_snapshot=rng.choice((0, 2, 10)),
            leader_sends_before_persist=rng.random() < 0.5,
        )
        self.faults = NetworkFaults(
            drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((0, 1, 4, 12)),
        )
        self.cluster = Cluster(range(1, size + 1), seed, self.opts, self.faults)
        self.p_crash = rng.choice((0.0, 0.005, 0.02))
        p_crash_point = rng.choice((0.0, 0.0, 0.001, 0.005))
        if p_crash_point:
            crash_rng = random.Random(seed ^ 0xC7A5)
            self.cluster.crash_points = lambda _id, _point: crash_rng.random() < p_crash_point
        self.p_partition = rng.choice((0.0, 0.01, 0.05))
        self.p_conf = rng.choice((0.0, 0.01, 0.03))
        self.p_transfer = rng.choice((0.0, 0.005, 0.02))
        self.p_propose = rng.choice((0.3, 0.8))
        self.next_value = 0
        self.next_read = 0
        self.next_id = size + 1
        self.removed: set[int] = set()

    def describe(self) -> str:
        return f"seed={self.seed} opts={self.opts} faults={self.faults}"

    def run(self) -> RunResult:
        c = self.cluster
        try:
            for _ in range(self.FAULT_TICKS):
                self._random_actions()
                c.tick()
            heal_ticks = self._heal_and_check_liveness()
        except (InvariantViolation, Exception) as exc:
            raise InvariantViolation(
                f"{type(exc).__name__}: {exc}\n{self.describe()}\n"
                f"replay: python -m tests.unit.raft.sim --seed {self.seed} --trace\n"
                f"--- last events ---\n{c.format_trace(last=150)}"
            ) from exc
        return RunResult(
            seed=self.seed,
            ticks=c.ticks,
            applied=c.check.max_applied,
            elections=len(c.check.leaders),
            reads=c.check.reads_checked,
            heal_ticks=heal_ticks,
            summary=self.describe(),
        )

    # -- random traffic and faults -----------------------------------------
    def _random_actions(self) -> None:
        c, rng = self.cluster, self.rng
        live = [n.id for n in c.live()]
        if live and rng.random() < self.p_propose:
            for _ in range(rng.choice((1, 1, 3))):
                live = [n.id for n in c.live()]  # a crash point may have struck
                if not live:
                    break
                target = rng.choice(live)
                self.next_value += 1
                with contextlib.suppress(ProposalDropped):
                    c.propose(target, b"v%d" % self.next_value)
        live = [n.id for n in c.live()]
        if live and rng.random() < 0.1:
            target = rng.choice(live)
            self.next_read += 1
            with contextlib.suppress(ProposalDropped):
                c.read_index(target, b"r%d" % self.next_read)
        live = [n.id for n in c.live()]
        if rng.random() < self.p_crash and live and rng.random() < 0.6:
            c.crash(rng.choice(live))
        down = [n.id for n in c.nodes.values() if not n.alive]
        if down and rng.random() < 0.1:
            c.restart(rng.choice(down))
        if rng.random() < self.p_partition:
            self._random_partition()
        if rng.random() < self.p_conf:
            self._random_conf_change()
        if rng.random() < self.p_transfer:
            lead = c.leader()
            if lead is not None:
                voters = sorted(c.raft(lead).trk.voters - {lead})
                if voters:
                    c.transfer_leader(lead, rng.choice(voters))

    def _random_partition(self) -> None:
        c, rng = self.cluster, self.rng
        ids = sorted(c.nodes)
        choice = rng.random()
        if choice < 0.3:
            c.heal()
        elif choice < 0.6:
            lead = c.leader()
            c.isolate(lead if lead is not None and rng.random() < 0.5 else rng.choice(ids))
        else:
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            c.partition(ids[:cut], ids[cut:])

    def _random_conf_change(self) -> None:
        c, rng = self.cluster, self.rng
        lead = c.leader()
        if lead is None:
            return
        r = c.raft(lead)
        voters, learners = r.trk.voters, r.trk.learners
        choice = rng.random()
        try:
            if choice < 0.35 and len(voters) + len(learners) < 6:
                new_id = self.next_id
                self.next_id += 1
                kind = (
                    ConfChangeType.ADD_LEARNER_NODE
                    if rng.random() < 0.6
                    else ConfChangeType.ADD_NODE
                )
                c.propose_conf_change(lead, ConfChange(kind, new_id))
                c.add_empty_node(new_id)
            elif choice < 0.6 and learners:
                c.propose_conf_change(
                    lead, ConfChange(ConfChangeType.ADD_NODE, rng.choice(sorted(learners)))
                )
            elif len(voters) > 3 or (learners and choice < 0.8):
                pool = sorted(learners) if learners and choice < 0.8 else sorted(voters)
                victim = rng.choice(pool)
                c.propose_conf_change(lead, ConfChange(ConfChangeType.REMOVE_NODE, victim))
                self.removed.add(victim)
        except ProposalDropped:
            pass

    # -- liveness ------------------------------------------------------------
    def _heal_and_check_liveness(self) -> int:
        """Heal everything; a leader must emerge and a new proposal must reach every member."""
        c = self.cluster
        c.heal()
        c.net.faults = NetworkFaults()
        c.crash_points = None
        for sn in list(c.nodes.values()):
            if not sn.alive:
                c.restart(sn.id)
        start = c.ticks
        marker = b"liveness-%d" % self.seed
        proposed_at = -100

        def members() -> list[int]:
            lead = c.leader()
            if lead is None:
                return []
            return sorted(c.raft(lead).trk.progress)

        def done() -> bool:
            nonlocal proposed_at
            ids = members()
            if not ids:
                return False
            if all(marker in c.applied_values(i) for i in ids):
                return True
            lead = c.leader()
            if (
                lead is not None
                and marker not in c.applied_values(lead)
                and c.ticks - proposed_at >= 30
            ):
                proposed_at = c.ticks
                with contextlib.suppress(ProposalDropped):
                    c.propose(lead, marker)
            return False

        if not c.run_until(done, self.LIVENESS_BOUND_TICKS):
            lead = c.leader()
            raise InvariantViolation(
                f"liveness: no commit reached every member within {self.LIVENESS_BOUND_TICKS} "
                f"ticks of healing (leader={lead}, members={members()}, "
                f"states={[(n.id, n.node().state.name, n.node().term) for n in c.live()]})"
            )
        return c.ticks - start


def run_seed(seed: int) -> RunResult:
    return RandomRun(seed).run()


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay randomized Raft simulation runs.")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--count", type=int, default=1, help="how many seeds from --seed")
    parser.add_argument("--trace", action="store_true", help="print the whole trace of each run")
    args = parser.parse_args()
    for seed in range(args.seed, args.seed + args.count):
        run = RandomRun(seed)
        try:
            result = run.run()
        finally:
            if args.trace:
                print(run.cluster.format_trace())
        print(
            f"seed {seed}: ok, {result.ticks} ticks, {result.applied} applied, "
            f"{result.elections} terms with a leader, {result.reads} reads checked, "
            f"healed in {result.heal_ticks} ticks"
        )


if __name__ == "__main__":
    main()
