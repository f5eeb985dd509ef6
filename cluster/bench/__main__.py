"""Entry point: ``python -m cluster.bench <workload> [flags]``."""

from __future__ import annotations

import argparse
import sys

from . import compare, large, load, raft, wal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.bench", description="Benchmarks of this etcd-style store."
    )
    workloads = parser.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    raft.add_parser(workloads)
    wal.add_parser(workloads)
    load.add_parsers(workloads)
    compare.add_parser(workloads)
    large.add_parser(workloads)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
