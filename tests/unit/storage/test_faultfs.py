"""The fault-injecting file systems do what the WAL tests rely on."""

from __future__ import annotations

import errno
import os
import random

import pytest

from tests.unit.storage.faultfs import FullDiskFS, PowerCut, PowerLossFS


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path)


# -- PowerLossFS ---------------------------------------------------------------


def test_unsynced_bytes_are_lost_synced_bytes_survive(root):
    fs = PowerLossFS(root)
    d = os.path.join(root, "d")
    fs.makedirs(d)
    fs.sync_dir(root)
    path = os.path.join(d, "f")
    f = fs.open_append(path)
    fs.sync_dir(d)
    f.write(b"durable")
    f.sync()
    f.write(b"-volatile")
    assert _read(path) == b"durable-volatile"
    fs.power_cut()
    assert _read(path) == b"durable"


def test_random_prefix_of_unsynced_bytes_may_survive(root):
    seen = set()
    for seed in range(30):
        sub = os.path.join(root, str(seed))
        os.mkdir(sub)
        fs = PowerLossFS(sub, rng=random.Random(seed))
        path = os.path.join(sub, "f")
        f = fs.open_append(path)
        fs.sync_dir(sub)
        f.write(b"abc")
        f.sync()
        f.write(b"0123456789")
        fs.power_cut()
        data = _read(path)
        assert data.startswith(b"abc")
        assert b"abc0123456789".startswith(data)
        seen.add(len(data))
    assert len(seen) > 3  # really random, not all or nothing


def test_creation_without_sync_dir_disappears(root):
    fs = PowerLossFS(root)
    f = fs.open_append(os.path.join(root, "new"))
    f.write(b"x")
    f.sync()  # the data is durable, the directory entry is not
    fs.power_cut()
    assert not os.path.exists(os.path.join(root, "new"))


def test_directory_creation_needs_parent_sync(root):
    fs = PowerLossFS(root)
    fs.makedirs(os.path.join(root, "a", "b"))
    fs.sync_dir(os.path.join(root, "a"))
    fs.power_cut()
    assert os.listdir(root) == []
    fs.makedirs(os.path.join(root, "a", "b"))
    fs.sync_dir(root)
    fs.power_cut()
    assert os.listdir(root) == ["a"]
    assert os.listdir(os.path.join(root, "a")) == []  # b was not synced into a


def test_rename_without_sync_dir_reverts(root):
    fs = PowerLossFS(root)
    tmp, final = os.path.join(root, "x.tmp"), os.path.join(root, "x")
    f = fs.open_append(tmp)
    f.write(b"payload")
    f.sync()
    f.close()
    fs.sync_dir(root)
    fs.rename(tmp, final)
    fs.power_cut()
    assert sorted(os.listdir(root)) == ["x.tmp"]
    assert _read(tmp) == b"payload"
    fs.rename(tmp, final)
    fs.sync_dir(root)
    fs.power_cut()
    assert sorted(os.listdir(root)) == ["x"]
    assert _read(final) == b"payload"


def test_rename_over_existing_file_reverts_to_old_content(root):
    with open(os.path.join(root, "cfg"), "wb") as f:
        f.write(b"old")
    fs = PowerLossFS(root)  # existing files count as durable
    f2 = fs.open_append(os.path.join(root, "cfg.tmp"))
    f2.write(b"new")
    f2.sync()
    f2.close()
    fs.rename(os.path.join(root, "cfg.tmp"), os.path.join(root, "cfg"))
    assert _read(os.path.join(root, "cfg")) == b"new"
    fs.power_cut()
    assert sorted(os.listdir(root)) == ["cfg"]
    assert _read(os.path.join(root, "cfg")) == b"old"


def test_removal_without_sync_dir_comes_back_with_durable_content(root):
    fs = PowerLossFS(root)
    path = os.path.join(root, "seg")
    f = fs.open_append(path)
    f.write(b"kept")
    f.sync()
    f.write(b"lost")
    f.close()
    fs.sync_dir(root)
    fs.remove(path)
    assert not os.path.exists(path)
    fs.power_cut()
    assert _read(path) == b"kept"
    fs.remove(path)
    fs.sync_dir(root)
    fs.power_cut()
    assert not os.path.exists(path)


def test_unsynced_truncate_reverts(root):
    fs = PowerLossFS(root)
    path = os.path.join(root, "f")
    f = fs.open_append(path)
    fs.sync_dir(root)
    f.write(b"0123456789")
    f.sync()
    f.truncate(4)
    f.write(b"ab")
    assert _read(path) == b"0123ab"
    fs.power_cut()
    assert _read(path) == b"0123456789"
    f = fs.open_append(path)
    f.truncate(4)
    f.sync()
    fs.power_cut()
    assert _read(path) == b"0123"


def test_handles_are_invalid_after_power_cut_and_fs_is_usable(root):
    fs = PowerLossFS(root)
    path = os.path.join(root, "f")
    f = fs.open_append(path)
    fs.sync_dir(root)
    fs.power_cut()
    with pytest.raises(OSError) as exc:
        f.write(b"x")
    assert exc.value.errno == errno.EBADF
    f.close()  # closing a stale handle is harmless
    g = fs.open_append(path)
    g.write(b"y")
    g.sync()
    g.close()
    assert _read(path) == b"y"


def test_crash_at_stops_the_machine_mid_operation(root):
    fs = PowerLossFS(root, rng=random.Random(3))
    path = os.path.join(root, "f")
    f = fs.open_append(path)
    fs.sync_dir(root)
    f.write(b"a" * 10)
    f.sync()
    fs.crash_at(1)
    with pytest.raises(PowerCut):
        f.write(b"b" * 100)
    assert fs.crashed
    with pytest.raises(PowerCut):
        f.sync()  # nothing runs any more
    with pytest.raises(PowerCut):
        fs.listdir(root)
    f.close()
    fs.power_cut()
    assert not fs.crashed
    data = _read(path)
    assert data[:10] == b"a" * 10 and set(data[10:]) <= {ord("b")}


def test_crash_at_counts_mutating_operations(root):
    fs = PowerLossFS(root)
    fs.crash_at(3)
    f = fs.open_append(os.path.join(root, "f"))  # 1: creation
    f.write(b"x")  # 2
    fs.read_bytes(os.path.join(root, "f"))  # reads do not count
    with pytest.raises(PowerCut):
        f.sync()  # 3
    fs.power_cut()
    assert os.listdir(root) == []


# -- FullDiskFS ----------------------------------------------------------------


def test_full_disk_writes_a_prefix_then_raises_enospc(root):
    fs = FullDiskFS(free=10)
    path = os.path.join(root, "f")
    f = fs.open_append(path)
    f.write(b"0123")
    with pytest.raises(OSError) as exc:
        f.write(b"abcdefghij")
    assert exc.value.errno == errno.ENOSPC
    assert _read(path) == b"0123abcdef"  # the part that fitted landed
    assert f.size() == 10 and fs.free == 0
    f.truncate(4)  # taking bytes back frees them
    assert fs.free == 6
    fs.grow(100)
    f.write(b"abcdefghij")
    f.sync()
    assert _read(path) == b"0123abcdefghij"


def test_full_disk_sync_failure_and_removal_frees_space(root):
    fs = FullDiskFS(free=100)
    path = os.path.join(root, "f")
    f = fs.open_append(path)
    f.write(b"x" * 60)
    fs.fail_syncs = 1
    with pytest.raises(OSError) as exc:
        f.sync()
    assert exc.value.errno == errno.ENOSPC
    f.sync()  # only the configured number of syncs fail
    f.close()
    fs.remove(path)
    assert fs.free == 100
    assert fs.enospc_count == 1
