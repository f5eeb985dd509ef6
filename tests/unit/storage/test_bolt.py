"""bbolt files written by ``BoltWriter``: read back by our reader and by etcdctl (bbolt itself)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from cluster.mvcc.revision import Revision
from cluster.storage.bolt import PAGE_SIZE, BoltWriter, fnv1a_64, read_bolt

Buckets = list[tuple[bytes, list[tuple[bytes, bytes]]]]


def write(path: Path, buckets: Buckets, sha: bool = False) -> bytes:
    with path.open("w+b") as f:
        w = BoltWriter(f)
        for name, items in buckets:
            w.write_bucket(name, items)
        size = w.finish()
        f.seek(0)
        data = f.read()
    assert len(data) == size and size % PAGE_SIZE == 0
    if sha:
        with path.open("ab") as f:
            f.write(hashlib.sha256(data).digest())
    return data


def big_buckets() -> Buckets:
    revs = [(Revision(i).to_bytes(), os.urandom(i % 60)) for i in range(1, 30001)]
    revs[10] = (revs[10][0], os.urandom(3 * PAGE_SIZE + 5))  # a leaf with overflow pages
    return [
        (b"auth", []),
        (b"key", revs),  # a three-level tree
        (b"lease", [(b"%05d" % i + b"x" * 3000, b"") for i in range(40)]),  # big branch keys
        (b"meta", [(b"consistent_index", (9).to_bytes(8, "big"))]),
    ]


def test_fnv1a_64() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C


def test_round_trip(tmp_path: Path) -> None:
    buckets = big_buckets()
    data = write(tmp_path / "db", buckets)
    assert read_bolt(data) == dict(buckets)


def test_empty_file_has_meta_freelist_and_root(tmp_path: Path) -> None:
    data = write(tmp_path / "db", [])
    assert len(data) == 4 * PAGE_SIZE
    assert read_bolt(data) == {}


def test_keys_and_buckets_must_come_in_order(tmp_path: Path) -> None:
    with (tmp_path / "db").open("w+b") as f:
        w = BoltWriter(f)
        b = w.bucket(b"m")
        b.put(b"b", b"")
        with pytest.raises(ValueError, match="not after"):
            b.put(b"a", b"")
        with pytest.raises(ValueError, match="still open"):
            w.bucket(b"n")
        b.close()
        with pytest.raises(ValueError, match="not after"):
            w.bucket(b"a")
        with pytest.raises(ValueError, match="empty key"):
            w.bucket(b"z").put(b"", b"")


@pytest.mark.etcdctl
def test_etcdctl_snapshot_status_reads_and_checks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    buckets = big_buckets()
    data = write(path, buckets, sha=True)
    done = subprocess.run(
        ["etcdctl", "snapshot", "status", str(path), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert done.returncode == 0, done.stderr  # bbolt's tx.Check found nothing
    status = json.loads(done.stdout)
    assert status["revision"] == 30000
    assert status["totalKey"] == sum(len(items) for _, items in buckets)
    assert status["totalSize"] == len(data)
