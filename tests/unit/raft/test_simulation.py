"""Randomized, seeded runs of whole clusters under faults (see sim.py).

``make test`` runs seeds 0..RAFT_SIM_SEEDS-1 (1000 by default); ``make soak``
runs 100,000. A failure names its seed, and ``python -m tests.unit.raft.sim
--seed N --trace`` replays it step for step.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cluster.raft import NONE, HardState, RaftNode
from cluster.raft.log import RaftLog

from .sim import InvariantViolation, RandomRun, run_seed

FAST_SEEDS = 1000
CHUNK = 50
SOAK_SEEDS = max(int(os.environ.get("RAFT_SIM_SEEDS", "100000")), FAST_SEEDS)
SOAK_CHUNK = 500


@pytest.mark.parametrize("first", range(0, FAST_SEEDS, CHUNK))
def test_random_runs_stay_safe_and_live(first: int) -> None:
    for seed in range(first, first + CHUNK):
        run_seed(seed)


@pytest.mark.soak
@pytest.mark.parametrize("first", range(FAST_SEEDS, SOAK_SEEDS, SOAK_CHUNK))
def test_soak_random_runs(first: int) -> None:
    for seed in range(first, min(first + SOAK_CHUNK, SOAK_SEEDS)):
        run_seed(seed)


def test_runs_exercise_every_fault_and_feature() -> None:
    """The random runs are not vacuous: faults happen and every mechanism is used."""
    totals: Counter[str] = Counter()
    reads = elections = 0
    for seed in range(60):
        run = RandomRun(seed)
        result = run.run()
        totals.update(run.cluster.stats)
        reads += result.reads
        elections += result.elections
    for event in (
        "crash",
        "crash-point",
        "torn-write",
        "restart",
        "partition",
        "isolate",
        "heal",
        "snapshot",
        "restore",
        "conf",
        "transfer",
        "new-node",
    ):
        assert totals[event] > 0, f"no {event!r} event in 60 random runs"
    assert reads > 100
    assert elections > 100


def test_the_same_seed_replays_the_same_run() -> None:
    first, second = RandomRun(7), RandomRun(7)
    first.run()
    second.run()
    assert list(first.cluster.trace) == list(second.cluster.trace)


# -- the checker catches real bugs ---------------------------------------------
# Each test plants a classic Raft bug and requires the random runs to catch it,
# so a checker that silently stopped checking would fail here.


def _first_violation(seeds: range) -> str | None:
    for seed in seeds:
        try:
            run_seed(seed)
        except InvariantViolation as exc:
            return str(exc)
    return None


@contextmanager
def _patched(owner: type, name: str, replacement: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def test_checker_catches_votes_for_stale_logs() -> None:
    with _patched(RaftLog, "is_up_to_date", lambda self, last_index, term: True):
        found = _first_violation(range(200))
    assert found is not None and "seed=" in found and "replay:" in found


def test_checker_catches_a_vote_forgotten_on_restart() -> None:
    original = RaftNode._load_hard_state

    def forget_vote(self: RaftNode, hard_state: HardState) -> None:
        original(self, HardState(hard_state.term, NONE, hard_state.commit))

    with _patched(RaftNode, "_load_hard_state", forget_vote):
        found = _first_violation(range(1000))
    assert found is not None


def test_checker_catches_reads_without_a_quorum_round() -> None:
    def answer_at_once(self: RaftNode, m: object) -> None:
        self._respond_read_index(m, self.log.committed)  # type: ignore[arg-type]

    with _patched(RaftNode, "_send_read_index", answer_at_once):
        found = _first_violation(range(300))
    assert found is not None and "stale read" in found
