"""Throughput of the write-ahead log against the bare disk it sits on.

Each WAL row appends batches of entries, one ``save`` (one write + one
fdatasync) per batch, for about ``--seconds``. The raw row is the floor the WAL
is measured against: an ``os.write`` + ``os.fsync`` loop of records of the
same size (an entry's WAL record: 13-byte header + 17-byte entry header +
data) in the same directory, in the same run. Files are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

from cluster.raft import Entry
from cluster.storage.fs import CountingFileSystem
from cluster.storage.wal import WAL

RECORD_OVERHEAD = 13 + 17  # WAL record header + encoded entry header


@dataclass
class WalBenchResult:
    kind: str  # "wal" or "raw"
    batch: int
    entries: int
    fsyncs: int
    bytes: int
    seconds: float

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds

    @property
    def fsyncs_per_second(self) -> float:
        return self.fsyncs / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "entries_per_second": self.entries_per_second,
            "fsyncs_per_second": self.fsyncs_per_second,
            "mb_per_second": self.mb_per_second,
        }


def run_wal(directory: str, batch: int, entry_size: int, seconds: float) -> WalBenchResult:
    fs = CountingFileSystem()
    wal_dir = os.path.join(directory, f"wal-{batch}")
    wal = WAL.create(wal_dir, b"bench", fs=fs)
    data = os.urandom(entry_size)
    index = 0
    entries = 0
    elapsed = 0.0
    syncs_before, written_before = fs.syncs, fs.written
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            items = [Entry(1, index + i + 1, data=data) for i in range(batch)]
            start = time.perf_counter()
            wal.save(None, items, sync=True)
            elapsed += time.perf_counter() - start
            index += batch
            entries += batch
    finally:
        wal.close()
        shutil.rmtree(wal_dir, ignore_errors=True)
    return WalBenchResult(
        "wal", batch, entries, fs.syncs - syncs_before, fs.written - written_before, elapsed
    )


def run_raw(directory: str, record_size: int, seconds: float) -> WalBenchResult:
    path = os.path.join(directory, "raw")
    record = os.urandom(record_size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    count = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            os.write(fd, record)
            os.fsync(fd)
            count += 1
            now = time.perf_counter()
        elapsed = now - start
    finally:
        os.close(fd)
        os.remove(path)
    return WalBenchResult("raw", 1, count, count, count * record_size, elapsed)


ALTERNATIONS = 8


def _add(a: WalBenchResult, b: WalBenchResult) -> WalBenchResult:
    return WalBenchResult(
        a.kind,
        a.batch,
        a.entries + b.entries,
        a.fsyncs + b.fsyncs,
        a.bytes + b.bytes,
        a.seconds + b.seconds,
    )


def add_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = workloads.add_parser(
        "wal", help="WAL appends (entries/s, fsyncs/s) next to a raw write+fsync loop"
    )
    p.add_argument(
        "--dir",
        default=os.path.join("var", "bench"),
        help="directory on the disk to measure (a temporary directory is made inside it)",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each row")
    p.add_argument("--batches", default="1,64,1024", help="comma-separated entries per save")
    p.add_argument("--entry-size", type=int, default=256, help="bytes of data per entry")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _makedirs(path: str) -> list[str]:
    """Create ``path`` and its missing parents; the ones created, deepest first."""
    created = []
    at = os.path.abspath(path)
    while not os.path.exists(at):
        created.append(at)
        at = os.path.dirname(at)
    os.makedirs(path, exist_ok=True)
    return created


def run(args: argparse.Namespace) -> int:
    created = _makedirs(args.dir)
    work = tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir)
    record_size = RECORD_OVERHEAD + args.entry_size
    try:
        results = []
        raw = WalBenchResult("raw", 1, 0, 0, 0, 0.0)
        for batch in (int(b) for b in args.batches.split(",")):
            if batch != 1:
                results.append(run_wal(work, batch, args.entry_size, args.seconds))
                continue
            # The batch-1 row and the raw loop alternate in short slices, so both
            # see the same disk: its fsync latency drifts by 2x or more over seconds.
            wal = WalBenchResult("wal", 1, 0, 0, 0, 0.0)
            for _ in range(ALTERNATIONS):
                slice_seconds = args.seconds / ALTERNATIONS
                wal = _add(wal, run_wal(work, 1, args.entry_size, slice_seconds))
                raw = _add(raw, run_raw(work, record_size, slice_seconds))
            results.append(wal)
        if not raw.entries:
            raw = run_raw(work, record_size, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for path in created:
            try:
                os.rmdir(path)
            except OSError:
                break
    single = next((r for r in results if r.batch == 1), None)
    ratio = single.entries_per_second / raw.entries_per_second if single else None
    if args.json:
        out = {
            "dir": os.path.abspath(args.dir),
            "entry_size": args.entry_size,
            "record_size": record_size,
            "rows": [r.as_dict() for r in [*results, raw]],
            "wal_over_raw_batch_1": ratio,
        }
        print(json.dumps(out))
        return 0
    print(
        f"WAL appends of {args.entry_size}-byte entries ({record_size}-byte records), "
        f"one save (write + fdatasync) per batch, in {os.path.abspath(args.dir)}"
    )
    print(
        f"{'':4} {'batch':>6} {'entries':>10} {'fsyncs':>8} {'seconds':>8} "
        f"{'entries/s':>12} {'fsyncs/s':>10} {'MB/s':>8}"
    )
    for r in [*results, raw]:
        print(
            f"{r.kind:4} {r.batch:>6} {r.entries:>10} {r.fsyncs:>8} {r.seconds:>8.2f} "
            f"{r.entries_per_second:>12,.0f} {r.fsyncs_per_second:>10,.0f} "
            f"{r.mb_per_second:>8.2f}"
        )
    print(f"raw = os.write + os.fsync of one {record_size}-byte record per iteration")
    if ratio is not None:
        print(f"WAL/raw at batch 1: {ratio:.2f}")
    return 0
