"""The Raft state machine, driven by its caller.

The caller feeds it time (``tick``), peer messages (``step``) and requests
(``propose``, ``read_index``, ...), then collects the work to do as a
``Ready`` batch and reports it done with ``advance``. Nothing here touches a
socket, a thread, a clock or a disk, and the only randomness (the election
timeout) comes from the ``random.Random`` in the config, so a run is fully
determined by its inputs.
"""

from __future__ import annotations

import contextlib
import enum
import random
from dataclasses import dataclass, field

from .errors import CompactedError, ProposalDropped, RaftError
from .log import MemoryStorage, RaftLog
from .progress import Progress, ProgressState, ProgressTracker, VoteResult
from .readindex import ReadOnlyQueue
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    SoftState,
    StateType,
)

CAMPAIGN_TRANSFER = b"CampaignTransfer"
"""Context of a vote request caused by a leader transfer: it overrides leases."""

LEARNER_READY_RATIO = 0.9
"""A learner may be promoted once its log holds this share of the leader's."""

_RESPONSE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.PRE_VOTE_RESP,
    }
)


# Vote messages carry the term they campaign for; proposals and read requests
# forwarded to the leader are treated like local messages there (term 0).
_TERM_SET_BY_CALLER = frozenset(
    {
        MessageType.VOTE,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE,
        MessageType.PRE_VOTE_RESP,
        MessageType.PROP,
        MessageType.READ_INDEX,
    }
)


_FROM_LEADER = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})


class CampaignType(enum.Enum):
    PRE_ELECTION = "pre-election"
    ELECTION = "election"
    TRANSFER = "transfer"


@dataclass(slots=True)
class Config:
    id: int
    rng: random.Random
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int | None = 1 << 20
    max_committed_size_per_ready: int | None = None
    max_inflight_msgs: int = 2
    check_quorum: bool = True
    pre_vote: bool = True
    disable_proposal_forwarding: bool = False

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")


@dataclass(slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    lead: int
    state: StateType
    applied: int
    last_index: int
    lead_transferee: int
    progress: dict[int, Progress] = field(default_factory=dict)


class RaftNode:
    def __init__(self, config: Config, storage: MemoryStorage) -> None:
        config.validate()
        self.id = config.id
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.max_size_per_msg = config.max_size_per_msg
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.disable_proposal_forwarding = config.disable_proposal_forwarding

        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        hard_state, conf_state = storage.initial_state()
        self.trk = ProgressTracker(config.max_inflight_msgs)
        self.trk.apply_conf_state(conf_state, self.log.last_index() + 1)
        self.is_learner = self.id in conf_state.learners

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnlyQueue()
        self.pending_read_index: list[Message] = []
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        # The last entry this leader appended from another member's proposal; on becoming
        # leader, its whole log (it cannot tell who proposed the earlier entries).
        self.forwarded_index = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout

        if not hard_state.is_empty():
            self._load_hard_state(hard_state)
        if config.applied:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)
        self._prev_soft = self.soft_state()
        self._prev_hard = self.hard_state()

    def __repr__(self) -> str:
        return (
            f"RaftNode(id={self.id} {self.state.name} term={self.term} lead={self.lead} "
            f"last={self.log.last_index()} commit={self.log.committed})"
        )

    # ===================================================================
    # The driver's interface
    # ===================================================================
    def tick(self) -> None:
        if self.state == StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        self.step(Message(MessageType.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        """Propose one entry; raises ``ProposalDropped`` if it cannot be accepted here."""
        self.step(
            Message(MessageType.PROP, frm=self.id, entries=[Entry(0, 0, EntryType.NORMAL, data)])
        )

    def propose_batch(self, items: list[bytes]) -> None:
        entries = [Entry(0, 0, EntryType.NORMAL, data) for data in items]
        self.step(Message(MessageType.PROP, frm=self.id, entries=entries))

    def propose_conf_change(self, change: ConfChange) -> None:
        entry = Entry(0, 0, EntryType.CONF_CHANGE, change.encode())
        self.step(Message(MessageType.PROP, frm=self.id, entries=[entry]))

    def read_index(self, request_ctx: bytes) -> None:
        """Ask for a linearizable read point; it arrives as a ``ReadState`` in a later Ready.

        ``request_ctx`` identifies the request and must be unique among pending reads.
        """
        if not request_ctx:
            raise ValueError("a read index request needs a non-empty context")
        self.step(Message(MessageType.READ_INDEX, frm=self.id, context=request_ctx))

    def transfer_leader(self, transferee: int) -> None:
        self.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, node_id: int) -> None:
        self.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        self.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=failed))

    def step_remote(self, m: Message) -> None:
        """Step a message received from a peer (local message kinds are refused)."""
        if m.type in LOCAL_MESSAGES:
            raise RaftError(f"raft: cannot step {m.type.name} as a peer message")
        if m.frm not in self.trk.progress and m.type in _RESPONSE_TYPES:
            return  # a response from a node that is no longer a member
        # A forwarded request that cannot be accepted here is dropped (it may even
        # have started on this node, when it was a follower): its proposer times out.
        with contextlib.suppress(ProposalDropped):
            self.step(m)

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed membership change; returns the new configuration."""
        kind, node_id = change.type, change.node_id
        if kind == ConfChangeType.ADD_NODE:
            self._add_node(node_id, learner=False)
        elif kind == ConfChangeType.ADD_LEARNER_NODE:
            pr = self.trk.progress.get(node_id)
            if pr is None or pr.is_learner:
                self._add_node(node_id, learner=True)
        elif kind == ConfChangeType.REMOVE_NODE:
            self._remove_node(node_id)
        return self.trk.conf_state()

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def status(self) -> Status:
        progress = {}
        if self.state == StateType.LEADER:
            progress = dict(self.trk.progress)
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            commit=self.log.committed,
            lead=self.lead,
            state=self.state,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            lead_transferee=self.lead_transferee,
            progress=progress,
        )

    def has_ready(self) -> bool:
        if self.msgs or self.read_states:
            return True
        unstable = self.log.unstable
        if unstable.entries or unstable.snapshot is not None:
            return True
        if self.log.has_next_committed_entries():
            return True
        soft, hard = self._prev_soft, self._prev_hard
        return (
            self.lead != soft.lead
            or self.state != soft.state
            or self.term != hard.term
            or self.vote != hard.vote
            or self.log.committed != hard.commit
        )

    def ready(self) -> Ready:
        log = self.log
        soft, hard = self._prev_soft, self._prev_hard
        vote_changed = self.term != hard.term or self.vote != hard.vote
        entries = log.unstable_entries()
        committed = log.next_committed_entries()
        rd = Ready(
            soft_state=(
                self.soft_state() if self.lead != soft.lead or self.state != soft.state else None
            ),
            hard_state=(
                self.hard_state() if vote_changed or log.committed != hard.commit else None
            ),
            read_states=self.read_states,
            entries=entries,
            snapshot=log.unstable.snapshot,
            committed_entries=committed,
            messages=self.msgs,
            must_sync=bool(entries) or vote_changed,
            forwarded_committed=(
                self.state == StateType.LEADER
                and bool(committed)
                and self.forwarded_index >= committed[0].index
            ),
        )
        self.msgs = []
        self.read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has persisted, sent and applied everything in ``rd``."""
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        applied = 0
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.metadata.index)
            applied = rd.snapshot.metadata.index
        if rd.committed_entries:
            applied = rd.committed_entries[-1].index
        if applied:
            self.log.applied_to(applied)
        if self.state == StateType.LEADER:
            # The leader counts its own copy only once it is on disk.
            own = self.trk.progress.get(self.id)
            persisted = self.log.persisted_index()
            if own is not None and own.maybe_update(persisted) and self._maybe_commit():
                self._bcast_append()

    def _load_hard_state(self, hard_state: HardState) -> None:
        if not self.log.committed <= hard_state.commit <= self.log.last_index():
            raise RaftError(
                f"hard state commit {hard_state.commit} is out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hard_state.commit
        self.term = hard_state.term
        self.vote = hard_state.vote

    # ===================================================================
    # Role changes
    # ===================================================================
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._abort_leader_transfer()
        self.trk.reset_votes()
        next_index = self.log.last_index() + 1
        for node_id, pr in self.trk.progress.items():
            pr.reset(next_index)
            if node_id == self.id:
                pr.match = self.log.persisted_index()
        self.pending_conf_index = 0
        self.read_only.clear()
        self.pending_read_index = []

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER

    def _become_pre_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise RaftError("invalid transition [leader -> pre-candidate]")
        # Term and vote stay as they are: a pre-vote changes nothing durable.
        self.trk.reset_votes()
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise RaftError("invalid transition [leader -> candidate]")
        self._reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def _become_leader(self) -> None:
        if self.state == StateType.FOLLOWER:
            raise RaftError("invalid transition [follower -> leader]")
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        own = self.trk.progress[self.id]
        own.become_replicate()
        own.match = self.log.persisted_index()
        own.recent_active = True
        self.forwarded_index = self.log.last_index()
        # The no-op entry commits the previous terms' entries (and ReadIndex needs it).
        self._append_entries([Entry(0, 0)])
        # No membership change until an entry of this term is applied: it rules
        # out the single-server-change hazard of a new leader with a stale config.
        self.pending_conf_index = self.log.last_index()

    def _reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _promotable(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and self.log.unstable.snapshot is None

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # ===================================================================
    # Time
    # ===================================================================
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self._past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MessageType.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MessageType.CHECK_QUORUM, frm=self.id))
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self._abort_leader_transfer()  # the transfer did not finish in time
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MessageType.BEAT, frm=self.id))

    # ===================================================================
    # Stepping messages
    # ===================================================================
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if in_lease and not forced:
                    # We heard from a live leader within the minimum election
                    # timeout: a disruptive (e.g. partitioned) node is ignored.
                    return
            if m.type == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes are for a future term; we bump it when we win
            elif m.type in _FROM_LEADER:
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (
                MessageType.HEARTBEAT,
                MessageType.APP,
            ):
                # A stale leader (e.g. just back from a partition) learns our term
                # and steps down, instead of our pre-votes failing forever.
                self._send(Message(MessageType.APP_RESP, to=m.frm))
            elif m.type == MessageType.PRE_VOTE:
                self._send(
                    Message(MessageType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True)
                )
            return

        kind = m.type
        if kind == MessageType.HUP:
            self._hup(CampaignType.TRANSFER if m.context == CAMPAIGN_TRANSFER else None)
        elif kind in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.state == StateType.LEADER:
            self._step_leader(m)
        elif self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        resp_type = (
            MessageType.VOTE_RESP if m.type == MessageType.VOTE else MessageType.PRE_VOTE_RESP
        )
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MessageType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp_type, to=m.frm, term=m.term))
            if m.type == MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp_type, to=m.frm, term=self.term, reject=True))

    def _hup(self, campaign: CampaignType | None) -> None:
        if self.state == StateType.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_change():
            return  # our configuration may be about to change; wait until it is applied
        if campaign is None:
            campaign = CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION
        self._campaign(campaign)

    def _has_unapplied_conf_change(self) -> bool:
        log = self.log
        if log.committed <= log.applied:
            return False
        try:
            pending = log.slice(max(log.applied + 1, log.first_index()), log.committed + 1)
        except CompactedError:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in pending)

    def _campaign(self, campaign: CampaignType) -> None:
        if campaign == CampaignType.PRE_ELECTION:
            self._become_pre_candidate()
            vote_type = MessageType.PRE_VOTE
            term = self.term + 1
        else:
            self._become_candidate()
            vote_type = MessageType.VOTE
            term = self.term
        if self._poll(self.id, True) == VoteResult.WON:
            # A single-voter cluster wins at once.
            if campaign == CampaignType.PRE_ELECTION:
                self._campaign(CampaignType.ELECTION)
            else:
                self._become_leader()
            return
        context = CAMPAIGN_TRANSFER if campaign == CampaignType.TRANSFER else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for node_id in sorted(self.trk.voters):
            if node_id == self.id:
                continue
            self._send(
                Message(
                    vote_type,
                    to=node_id,
                    term=term,
                    index=last_index,
                    log_term=last_term,
                    context=context,
                )
            )

    def _poll(self, node_id: int, granted: bool) -> VoteResult:
        self.trk.record_vote(node_id, granted)
        return self.trk.tally_votes()[2]

    # -- leader ------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        kind = m.type
        if kind == MessageType.APP_RESP:  # the hot path first
            pr = self.trk.progress.get(m.frm)
            if pr is not None:
                self._handle_append_response(m, pr)
            return
        if kind == MessageType.BEAT:
            self._bcast_heartbeat()
            return
        if kind == MessageType.CHECK_QUORUM:
            if not self.trk.quorum_active(self.id):
                self.become_follower(self.term, NONE)
            for node_id, other in self.trk.progress.items():
                if node_id != self.id:
                    other.recent_active = False
            return
        if kind == MessageType.PROP:
            self._leader_propose(m)
            return
        if kind == MessageType.READ_INDEX:
            if not self._committed_entry_in_current_term():
                self.pending_read_index.append(m)
            elif self.trk.is_singleton():
                self._respond_read_index(m, self.log.committed)
            else:
                self._send_read_index(m)
            return

        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return
        if kind == MessageType.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)
        elif kind == MessageType.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a heartbeat response before probing again.
            pr.probe_sent = True
        elif kind == MessageType.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif kind == MessageType.TRANSFER_LEADER:
            self._handle_transfer_leader(m.frm, pr)

    def _leader_propose(self, m: Message) -> None:
        local = m.frm in (NONE, self.id)
        if not m.entries:
            raise RaftError("raft: proposal without entries")
        try:
            if self.id not in self.trk.progress:
                raise ProposalDropped(ProposalDropped.NOT_A_MEMBER)
            if self.lead_transferee != NONE:
                raise ProposalDropped(ProposalDropped.TRANSFERRING)
            conf_offset = -1
            for i, entry in enumerate(m.entries):
                if entry.type == EntryType.CONF_CHANGE:
                    self._check_conf_change(entry, conf_offset >= 0)
                    conf_offset = i
        except ProposalDropped:
            if local:
                raise
            return  # a forwarded proposal: the proposer times out and retries
        first = self.log.last_index() + 1
        self._append_entries(m.entries)
        if not local:
            self.forwarded_index = self.log.last_index()
        if conf_offset >= 0:
            self.pending_conf_index = first + conf_offset
        self._bcast_append()

    def _check_conf_change(self, entry: Entry, another_in_batch: bool) -> None:
        if another_in_batch or self.pending_conf_index > self.log.applied:
            raise ProposalDropped(ProposalDropped.CONF_CHANGE_PENDING)
        change = ConfChange.decode(entry.data)
        pr = self.trk.progress.get(change.node_id)
        if change.type == ConfChangeType.ADD_NODE:
            if pr is None:
                return
            if not pr.is_learner:
                raise ProposalDropped(ProposalDropped.MEMBER_EXISTS)
            if pr.match < LEARNER_READY_RATIO * self.log.last_index():
                raise ProposalDropped(ProposalDropped.LEARNER_NOT_READY)
        elif change.type == ConfChangeType.ADD_LEARNER_NODE:
            if pr is not None:
                raise ProposalDropped(ProposalDropped.MEMBER_EXISTS)
        elif change.type == ConfChangeType.REMOVE_NODE:
            if pr is None:
                raise ProposalDropped(ProposalDropped.UNKNOWN_MEMBER)
            if not pr.is_learner and len(self.trk.voters) == 1:
                raise ProposalDropped(ProposalDropped.LAST_VOTER)
        elif pr is None:
            raise ProposalDropped(ProposalDropped.UNKNOWN_MEMBER)

    def _append_entries(self, entries: list[Entry]) -> None:
        index = self.log.last_index()
        term = self.term
        for entry in entries:
            index += 1
            entry.term = term
            entry.index = index
        self.log.append(entries)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of the terms the follower cannot have.
                next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)[0]
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while pr.next <= self.log.last_index() and self._maybe_send_append(
            m.frm, send_if_empty=False
        ):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()  # an append may have been lost: make room to retry
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None or not self.trk.has_quorum(acks):
            return
        for status in self.read_only.advance(m.context):
            self._respond_read_index(status.request, status.index)

    def _handle_transfer_leader(self, transferee: int, pr: Progress) -> None:
        if pr.is_learner:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return
            self._abort_leader_transfer()
        if transferee == self.id:
            return
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send_timeout_now(transferee)
        else:
            self._send_append(transferee)

    def _send_timeout_now(self, to: int) -> None:
        self._send(Message(MessageType.TIMEOUT_NOW, to=to))

    def _maybe_commit(self) -> bool:
        if not self.log.maybe_commit(self.trk.committed(), self.term):
            return False
        if self.pending_read_index and self._committed_entry_in_current_term():
            pending, self.pending_read_index = self.pending_read_index, []
            for m in pending:
                if self.trk.is_singleton():
                    self._respond_read_index(m, self.log.committed)
                else:
                    self._send_read_index(m)
        return True

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _send_read_index(self, m: Message) -> None:
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self._bcast_heartbeat(m.context)

    def _respond_read_index(self, m: Message, index: int) -> None:
        if m.frm in (NONE, self.id):
            self.read_states.append(ReadState(index, m.context))
        else:
            self._send(
                Message(MessageType.READ_INDEX_RESP, to=m.frm, index=index, context=m.context)
            )

    # -- sending -----------------------------------------------------------
    def _send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self.id  # a forwarded request keeps its origin (e.g. the transferee)
        if m.type not in _TERM_SET_BY_CALLER:
            m.term = self.term
        self.msgs.append(m)

    def _bcast_append(self) -> None:
        for node_id in self.trk.progress:
            if node_id != self.id:
                self._send_append(node_id)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_ctx()
        committed = self.log.committed
        for node_id, pr in self.trk.progress.items():
            if node_id != self.id:
                self._send(
                    Message(
                        MessageType.HEARTBEAT,
                        to=node_id,
                        commit=min(pr.match, committed),
                        context=ctx,
                    )
                )

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        entries: list[Entry] | None = None
        if prev_term is not None:
            try:
                entries = self.log.entries(pr.next, self.max_size_per_msg)
            except CompactedError:
                entries = None
        if prev_term is None or entries is None:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MessageType.APP,
                to=to,
                index=prev_index,
                log_term=prev_term,
                entries=entries,
                commit=self.log.committed,
            )
        )
        if entries:
            if pr.state == ProgressState.REPLICATE:
                last = entries[-1].index
                pr.next = last + 1
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a member that may be down
        snapshot = self.log.snapshot()
        if snapshot.is_empty():
            raise RaftError("need non-empty snapshot")
        self._send(Message(MessageType.SNAP, to=to, snapshot=snapshot))
        pr.become_snapshot(snapshot.metadata.index)
        return True

    # -- candidate ---------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        kind = m.type
        my_resp = (
            MessageType.PRE_VOTE_RESP
            if self.state == StateType.PRE_CANDIDATE
            else MessageType.VOTE_RESP
        )
        if kind == MessageType.PROP or kind == MessageType.READ_INDEX:
            self._drop(m, ProposalDropped.NO_LEADER)
        elif kind in _FROM_LEADER:
            self.become_follower(m.term, m.frm)
            self._handle_from_leader(m)
        elif kind == my_resp:
            result = self._poll(m.frm, not m.reject)
            if result == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self._campaign(CampaignType.ELECTION)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result == VoteResult.LOST:
                # A pre-candidate's term is unchanged; a candidate stays in its new term.
                self.become_follower(self.term, NONE)

    # -- follower ----------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        kind = m.type
        if kind == MessageType.PROP:
            if self.lead == NONE or self.disable_proposal_forwarding:
                self._drop(m, ProposalDropped.NO_LEADER)
            else:
                self._forward(m)
        elif kind in _FROM_LEADER:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_from_leader(m)
        elif kind == MessageType.TRANSFER_LEADER:
            if self.lead != NONE:
                self._forward(m)
        elif kind == MessageType.TIMEOUT_NOW:
            # Leader transfer: campaign at once, past any pre-vote or lease.
            self._hup(CampaignType.TRANSFER)
        elif kind == MessageType.READ_INDEX:
            if self.lead == NONE:
                self._drop(m, ProposalDropped.NO_LEADER)
            else:
                self._forward(m)
        elif kind == MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _forward(self, m: Message) -> None:
        m.to = self.lead
        self._send(m)

    def _drop(self, m: Message, reason: str) -> None:
        if m.frm in (NONE, self.id):
            raise ProposalDropped(reason)

    def _handle_from_leader(self, m: Message) -> None:
        if m.type == MessageType.APP:
            self._handle_append(m)
        elif m.type == MessageType.HEARTBEAT:
            self._handle_heartbeat(m)
        else:
            self._handle_snapshot(m)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MessageType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(Message(MessageType.APP_RESP, to=m.frm, index=last))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                MessageType.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(MessageType.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._restore(m):
            self._send(Message(MessageType.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MessageType.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, m: Message) -> bool:
        assert m.snapshot is not None
        meta = m.snapshot.metadata
        if meta.index <= self.log.committed:
            return False
        # A member added after the snapshot was taken is not in its configuration
        # yet; it learns of itself from the entries that follow.
        cs = meta.conf_state
        if self.log.match_term(meta.index, meta.term):
            # We already have the entries it covers: fast-forward the commit index.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(m.snapshot)
        self.trk.apply_conf_state(cs, self.log.last_index() + 1)
        self.is_learner = self.id in cs.learners
        return True

    # -- membership --------------------------------------------------------
    def _add_node(self, node_id: int, learner: bool) -> None:
        pr = self.trk.add(node_id, self.log.last_index() + 1, learner)
        if node_id == self.id:
            self.is_learner = pr.is_learner
        self._after_conf_change()

    def _remove_node(self, node_id: int) -> None:
        self.trk.remove(node_id)
        if node_id == self.lead_transferee:
            self._abort_leader_transfer()
        if node_id == self.id:
            self.is_learner = False
            if self.state == StateType.LEADER:
                self._hand_off_leadership()
                self.become_follower(self.term, NONE)
            return
        self._after_conf_change()

    def _after_conf_change(self) -> None:
        if self.state != StateType.LEADER or not self.trk.voters:
            return
        if self._maybe_commit():
            self._bcast_append()  # the quorum may have shrunk
        else:
            for node_id in self.trk.progress:
                if node_id != self.id:
                    self._maybe_send_append(node_id, send_if_empty=False)

    def _hand_off_leadership(self) -> None:
        """A removed leader asks its most up-to-date voter to campaign at once."""
        last = self.log.last_index()
        caught_up = [
            node_id
            for node_id in sorted(self.trk.voters)
            if self.trk.progress[node_id].match == last
        ]
        if caught_up:
            self._send_timeout_now(caught_up[0])


def bootstrap(storage: MemoryStorage, voters: list[int]) -> None:
    """Write the initial configuration into a new member's storage.

    Like etcd, the starting members are ADD_NODE entries at indexes 1..n of
    term 1, already committed, so a member that joins later and replays the
    log from the start learns them too.
    """
    if storage.last_index() != 0 or not storage.hard_state.is_empty():
        raise RaftError("can only bootstrap an empty storage")
    entries = [
        Entry(1, i + 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, v).encode())
        for i, v in enumerate(voters)
    ]
    storage.append(entries)
    storage.set_hard_state(HardState(term=1, vote=NONE, commit=len(entries)))
