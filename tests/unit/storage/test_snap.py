"""Snapshot files: format, verification of every byte, fallback, retention, crash safety."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.raft import ConfState, Snapshot, SnapshotMetadata
from cluster.storage.fs import OsFileSystem
from cluster.storage.snap import (
    EmptySnapshotError,
    SnapshotCorruptError,
    SnapshotError,
    Snapshotter,
    snapshot_name,
)
from tests.unit.storage.faultfs import FullDiskFS, PowerCut, PowerLossFS

CS = ConfState(frozenset({1, 2, 3}), frozenset({4}))


def snap(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    payload = b"state@%d" % index if data is None else data
    return Snapshot(SnapshotMetadata(index, term, CS), payload)


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_round_trip(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    original = snap(0x2711, term=0xE, data=bytes(range(256)) * 3)
    path = ss.save(original)
    assert os.path.basename(path) == "000000000000000e-0000000000002711.snap"
    assert files(tmp_path) == ["000000000000000e-0000000000002711.snap"]  # no .tmp left
    assert ss.read(path) == original
    assert ss.load() == original


def test_round_trip_with_empty_data_and_no_learners(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    original = Snapshot(SnapshotMetadata(5, 2, ConfState(frozenset({7}))), b"")
    ss.save(original)
    assert ss.load() == original


def test_empty_snapshot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmptySnapshotError):
        Snapshotter(str(tmp_path)).save(Snapshot())
    assert issubclass(EmptySnapshotError, SnapshotError)
    assert files(tmp_path) == []


def test_load_of_an_empty_directory_is_none(tmp_path: Path) -> None:
    assert Snapshotter(str(tmp_path)).load() is None
    assert Snapshotter(str(tmp_path)).load(acceptable=set()) is None


def test_load_picks_the_highest_index_then_term(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    # Lexical order of names (term first) would pick term 9; the highest index wins.
    for index, term in [(100, 9), (300, 2), (200, 5), (300, 3), (50, 12)]:
        ss.save(snap(index, term))
    loaded = ss.load()
    assert loaded is not None
    assert (loaded.metadata.index, loaded.metadata.term) == (300, 3)
    assert ss.names() == [
        snapshot_name(3, 300),
        snapshot_name(2, 300),
        snapshot_name(5, 200),
        snapshot_name(9, 100),
        snapshot_name(12, 50),
    ]


def test_unrelated_files_are_ignored(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    ss.save(snap(10))
    for name in ["db", "db-lock", "notes.txt", "0000000000000001-0000000000000063.snap.broken"]:
        (tmp_path / name).write_bytes(b"junk")
    loaded = ss.load()
    assert loaded is not None and loaded.metadata.index == 10
    assert ss.names() == [snapshot_name(1, 10)]


def test_acceptable_set_filters_snapshots_the_wal_does_not_know(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    for index in (10, 20, 30):
        ss.save(snap(index, term=2))
    loaded = ss.load(acceptable={(10, 2), (20, 2)})
    assert loaded is not None and loaded.metadata.index == 20
    # (index, term) must both match: the same index at another term does not qualify.
    loaded = ss.load(acceptable={(30, 3), (10, 2)})
    assert loaded is not None and loaded.metadata.index == 10
    assert ss.load(acceptable={(40, 2)}) is None
    # Skipped files are left alone, not set aside.
    assert len(ss.names()) == 3 and not [n for n in files(tmp_path) if n.endswith(".broken")]


def _small_file(tmp_path: Path) -> tuple[Snapshotter, Path, bytes]:
    ss = Snapshotter(str(tmp_path))
    path = Path(ss.save(snap(7, term=3, data=b"abc")))
    return ss, path, path.read_bytes()


class _ContentFS(OsFileSystem):
    """Reads return ``content`` (no disk I/O: hundreds of variants stay fast)."""

    content = b""

    def read_bytes(self, path: str) -> bytes:
        return self.content


def test_every_flipped_bit_is_detected(tmp_path: Path) -> None:
    _, path, good = _small_file(tmp_path)
    assert len(good) < 100
    fs = _ContentFS()
    ss = Snapshotter(str(tmp_path), fs)
    for offset in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[offset] ^= 1 << bit
            fs.content = bytes(bad)
            with pytest.raises(SnapshotCorruptError) as err:
                ss.read(str(path))
            assert err.value.path == str(path)
            assert str(err.value).startswith(f"snap: {path}: offset {err.value.offset}: ")
            assert 0 <= err.value.offset <= len(good)


def test_a_flipped_bit_anywhere_in_the_newest_falls_back_to_the_older(tmp_path: Path) -> None:
    ss, path, good = _small_file(tmp_path)
    older = snap(5, term=3)
    ss.save(older)
    broken = path.with_name(path.name + ".broken")
    for offset in range(len(good)):
        bad = bytearray(good)
        bad[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(bad))
        assert ss.load(acceptable={(7, 3), (5, 3)}) == older, f"offset {offset}"
        assert not path.exists() and broken.read_bytes() == bytes(bad)
        broken.unlink()


def _flip(at: int, mask: int = 0x01) -> Callable[[bytearray], None]:
    def damage(data: bytearray) -> None:
        data[at] ^= mask

    return damage


@pytest.mark.parametrize(
    "damage, offset, reason",
    [
        (_flip(0), 0, "bad magic"),
        (_flip(7), 6, "unsupported version 0"),
        (_flip(15, 0x04), 79, "truncated: body of 59 bytes, want 63"),  # length 59 -> 63
        (_flip(15, 0x01), 78, "1 trailing bytes"),  # length 59 -> 58
        (_flip(16), 20, "crc mismatch"),  # the stored CRC itself
        (_flip(-1), 20, "crc mismatch"),  # the last data byte
    ],
)
def test_corruption_reports_offset_and_reason(
    tmp_path: Path, damage: Callable[[bytearray], None], offset: int, reason: str
) -> None:
    ss, path, good = _small_file(tmp_path)
    assert len(good) == 20 + 16 + (4 + 3 * 8) + (4 + 8) + 3  # header, metadata, b"abc"
    bad = bytearray(good)
    damage(bad)
    path.write_bytes(bytes(bad))
    with pytest.raises(SnapshotCorruptError) as err:
        ss.read(str(path))
    assert err.value.reason.startswith(reason)
    assert err.value.offset == offset
    assert str(err.value) == f"snap: {path}: offset {err.value.offset}: {err.value.reason}"


@pytest.mark.parametrize("keep", [0, 1, 19, 20, 30, -1])
def test_truncated_file_is_detected(tmp_path: Path, keep: int) -> None:
    ss, path, good = _small_file(tmp_path)
    cut = good[:keep] if keep >= 0 else good[:-1]
    path.write_bytes(cut)
    with pytest.raises(SnapshotCorruptError) as err:
        ss.read(str(path))
    assert err.value.offset == len(cut)
    assert "empty file" in err.value.reason if keep == 0 else "truncated" in err.value.reason


def test_trailing_bytes_are_detected(tmp_path: Path) -> None:
    ss, path, good = _small_file(tmp_path)
    path.write_bytes(good + b"\x00")
    with pytest.raises(SnapshotCorruptError) as err:
        ss.read(str(path))
    assert err.value.offset == len(good)
    assert "trailing" in err.value.reason


def test_bad_metadata_is_detected_even_with_a_good_crc(tmp_path: Path) -> None:
    import struct

    import crc32c

    ss = Snapshotter(str(tmp_path))
    body = struct.pack(">QQ", 7, 3) + struct.pack(">I", 1000)  # claims 1000 voters
    header = struct.pack(">6sHQI", b"etsnap", 1, len(body), crc32c.crc32c(body))
    path = tmp_path / snapshot_name(3, 7)
    path.write_bytes(header + body)
    with pytest.raises(SnapshotCorruptError, match=r"offset 20: bad metadata"):
        ss.read(str(path))


def test_a_file_whose_name_disagrees_with_its_metadata_is_refused(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    path = Path(ss.save(snap(7, term=3)))
    renamed = path.with_name(snapshot_name(3, 8))
    path.rename(renamed)
    with pytest.raises(SnapshotCorruptError, match="file name says term 3 index 8"):
        ss.read(str(renamed))
    assert ss.load() is None
    assert files(tmp_path) == [renamed.name + ".broken"]


def test_corrupt_newest_falls_back_to_older_and_is_renamed_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ss = Snapshotter(str(tmp_path))
    ss.save(snap(10))
    ss.save(snap(20))
    newest = Path(ss.save(snap(30)))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="cluster.storage.snap"):
        loaded = ss.load()
    assert loaded == snap(20)
    assert files(tmp_path) == sorted(
        [snapshot_name(1, 10), snapshot_name(1, 20), newest.name + ".broken"]
    )
    assert (tmp_path / (newest.name + ".broken")).read_bytes() == bytes(data)
    [record] = caplog.records
    assert newest.name in record.getMessage() and "offset" in record.getMessage()
    assert "crc mismatch" in record.getMessage() and ".broken" in record.getMessage()


def test_every_corrupt_snapshot_is_set_aside_until_a_good_one(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    for index in (10, 20, 30):
        ss.save(snap(index))
    (tmp_path / snapshot_name(1, 30)).write_bytes(b"")  # an empty file
    (tmp_path / snapshot_name(1, 20)).write_bytes(b"garbage" * 10)
    assert ss.load() == snap(10)
    assert ss.names() == [snapshot_name(1, 10)]
    (tmp_path / snapshot_name(1, 10)).write_bytes(b"x")
    assert ss.load() is None
    assert len([n for n in files(tmp_path) if n.endswith(".broken")]) == 3


def test_corrupt_snapshot_outside_the_acceptable_set_is_left_alone(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    ss.save(snap(10))
    (tmp_path / snapshot_name(1, 20)).write_bytes(b"garbage")
    assert ss.load(acceptable={(10, 1)}) == snap(10)
    assert snapshot_name(1, 20) in files(tmp_path)


class _DeniedFS(OsFileSystem):
    def read_bytes(self, path: str) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", path)


def test_io_errors_propagate_and_nothing_is_set_aside(tmp_path: Path) -> None:
    Snapshotter(str(tmp_path)).save(snap(10))
    ss = Snapshotter(str(tmp_path), _DeniedFS())
    with pytest.raises(PermissionError):
        ss.load()
    with pytest.raises(FileNotFoundError):
        Snapshotter(str(tmp_path)).read(str(tmp_path / snapshot_name(1, 99)))
    assert files(tmp_path) == [snapshot_name(1, 10)]


def test_purge_keeps_the_newest_and_removes_stale_temp_files(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    for index in range(1, 9):
        ss.save(snap(index * 10))
    stale = tmp_path / (snapshot_name(1, 90) + ".tmp")
    stale.write_bytes(b"half a snapshot")
    (tmp_path / "db").write_bytes(b"backend")
    (tmp_path / "db.tmp").write_bytes(b"backend being installed")  # not ours to remove
    broken = tmp_path / (snapshot_name(1, 5) + ".broken")
    broken.write_bytes(b"evidence")

    removed = ss.purge(keep=5)
    assert sorted(removed) == sorted(
        [str(tmp_path / snapshot_name(1, i)) for i in (10, 20, 30)] + [str(stale)]
    )
    assert ss.names() == [snapshot_name(1, i) for i in (80, 70, 60, 50, 40)]
    assert {"db", "db.tmp", broken.name} <= set(files(tmp_path))
    assert ss.purge(keep=5) == []
    assert ss.load() == snap(80)


def test_purge_with_keep_zero_keeps_every_snapshot(tmp_path: Path) -> None:
    ss = Snapshotter(str(tmp_path))
    for index in (1, 2, 3):
        ss.save(snap(index))
    assert ss.purge(keep=0) == []
    assert len(ss.names()) == 3
    assert [os.path.basename(p) for p in ss.purge(keep=1)] == [
        snapshot_name(1, 2),
        snapshot_name(1, 1),
    ]


def test_a_disk_full_save_leaves_the_old_snapshot(tmp_path: Path) -> None:
    Snapshotter(str(tmp_path)).save(snap(10))
    fs = FullDiskFS(free=30)
    ss = Snapshotter(str(tmp_path), fs)
    with pytest.raises(OSError) as err:
        ss.save(snap(20, data=b"x" * 100))
    assert err.value.errno == errno.ENOSPC
    assert ss.names() == [snapshot_name(1, 10)]
    assert ss.load() == snap(10)
    fs.grow(1000)
    ss.save(snap(20, data=b"x" * 100))  # the leftover temp file is replaced
    assert ss.load() == snap(20, data=b"x" * 100)
    assert files(tmp_path) == [snapshot_name(1, 10), snapshot_name(1, 20)]


def test_a_power_cut_at_any_point_of_save_leaves_the_old_or_the_new_snapshot(
    tmp_path: Path,
) -> None:
    Snapshotter(str(tmp_path)).save(snap(10))
    new = snap(20, data=b"y" * 300)
    outcomes = set()
    step = 1
    while True:
        fs = PowerLossFS(str(tmp_path))
        ss = Snapshotter(str(tmp_path), fs)
        fs.crash_at(step)
        try:
            ss.save(new)
        except PowerCut:
            pass
        else:
            break
        fs.power_cut()
        loaded = Snapshotter(str(tmp_path)).load()
        assert loaded in (snap(10), new)
        outcomes.add(loaded.metadata.index if loaded else 0)
        assert not [n for n in files(tmp_path) if n.endswith(".broken")]
        step += 1
    assert step > 3  # every operation of the save was interrupted once
    assert outcomes == {10}  # nothing is durable before the directory fsync
    fs.power_cut()  # the completed save survives a power cut
    assert Snapshotter(str(tmp_path)).load() == new
