"""Seeded robustness runs against real member processes (see ``harness``).

``make test`` runs one short run per fault kind (seeds 0-8: kill_follower, kill_leader,
stop_leader, partition, crash_point, power_loss, partition_snapshot, delay_drop, disk_full),
each of which must also have injected its fault (reached its crash point, sent the snapshot,
filled the disk...; the disk_full run is an expected failure while it shows only the open
server bugs of ``test_server_bugs``), and one against members with a planted bug, which must
fail. The
``robustness`` marker selects the longer set (``make robustness``: ``ROBUSTNESS_RUNS`` runs,
12 by default, from seed ``ROBUSTNESS_SEED``, 100 by default). A failed run says where its
report, history and logs are and how to replay it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.robustness.faults import FAULTS, FaultPlan
from tests.robustness.harness import RunConfig, RunResult, run, table

PLANTED = Path(__file__).parent / "planted"

pytestmark = pytest.mark.etcdctl  # Cluster.converged uses etcdctl (HashKV)


def _explain(cfg: RunConfig, result: RunResult) -> str:
    return f"{result.report(cfg)}\nartifacts: {result.artifact_dir}"


CI_RUNS = 12  # every fault kind at least once, the first three kinds twice


@pytest.mark.parametrize("seed", range(CI_RUNS), ids=lambda s: f"{s}-{FAULTS[s % len(FAULTS)]}")
def test_seeded_runs_cover_every_fault_kind(seed: int) -> None:
    cfg = RunConfig(seed, duration=6.0)
    result = run(cfg)
    assert result.fault == FAULTS[seed % len(FAULTS)]
    if result.skipped:
        pytest.skip(f"{result.fault}: {result.skipped}")
    assert result.passed, _explain(cfg, result)
    assert result.injected, f"the fault was not injected as planned\n{_explain(cfg, result)}"
    assert result.checked_ops > 200, "too little traffic to prove anything"


def test_a_planted_stale_read_bug_is_caught(tmp_path: Path) -> None:
    """Members whose linearizable reads skip ReadIndex, and a partition that isolates the
    leader: the isolated leader answers stale reads, and the checks must say so."""
    seed = next(
        s
        for s in range(3, 400, len(FAULTS))
        if FaultPlan.choose(s, random.Random(s), 5.0).target_leader
    )
    env = {"PYTHONPATH": str(PLANTED), "ROBUSTNESS_PLANT": "stale-reads"}
    cfg = RunConfig(seed, duration=5.0, member_env=env, artifacts=tmp_path)
    result = run(cfg)
    assert result.fault == "partition"
    assert result.linearizable is False, _explain(cfg, result)
    assert "NOT linearizable" in result.lin_detail
    assert not result.passed


@pytest.mark.robustness
@pytest.mark.timeout(1800)
def test_many_runs() -> None:
    runs = int(os.environ.get("ROBUSTNESS_RUNS", "12"))
    first = int(os.environ.get("ROBUSTNESS_SEED", "100"))
    results = []
    for seed in range(first, first + runs):
        cfg = RunConfig(seed)
        results.append(run(cfg))
    print()
    print(table(results))
    failed = [r for r in results if not r.passed]
    assert not failed, "\n\n".join(_explain(RunConfig(r.seed), r) for r in failed)
