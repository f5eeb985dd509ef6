"""``python -m tests.robustness [--runs N] [--seed S]``: seeded runs and a table of results.

Seeds S, S+1, ... S+N-1 (the seed picks the fault: seed % 9 is kill_follower, kill_leader,
stop_leader, partition, crash_point, power_loss, partition_snapshot, delay_drop, disk_full;
disk_full is skipped where a tmpfs cannot be mounted in a private mount namespace). Exits 1 if
any run failed; each failed run's report, history and logs are under
tests/artifacts/robustness/<seed>/ (``--keep`` writes them for passing runs too; ``--recheck
DIR`` runs the checkers again on such a directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import ARTIFACTS, RunConfig, RunResult, recheck, run, table, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.robustness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=1, help="number of runs (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--duration", type=float, default=RunConfig.duration,
                        help="seconds of traffic per run")  # fmt: skip
    parser.add_argument("--clients", type=int, default=RunConfig.clients_per_member,
                        help="clients per member")  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help=f"write passing runs' artifacts too (to {ARTIFACTS})"
    )
    parser.add_argument(
        "--recheck", type=Path, metavar="DIR",
        help="only run the checkers again on a run's artifacts (tests/artifacts/robustness/N)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.recheck is not None:
        print(recheck(args.recheck))
        return 0
    results: list[RunResult] = []
    for seed in range(args.seed, args.seed + args.runs):
        cfg = RunConfig(seed, args.duration, args.clients, keep=args.keep)
        result = run(cfg)
        results.append(result)
        said = verdict(result) if result.passed else f"FAIL, see {result.artifact_dir}/report.txt"
        print(f"seed {seed}: {result.plan}: {said} ({result.seconds:.1f} s)", flush=True)
        if not result.passed:
            print(result.report(cfg), flush=True)
    print()
    print(table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
