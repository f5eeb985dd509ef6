"""File systems that fail the way disks do, for testing durable storage.

Both wrap ``OsFileSystem`` over a real temporary directory, so the code under
test reads and writes real files; they only add the failure.

``PowerLossFS`` remembers what a real disk would have made durable: per file,
the length known durable after ``sync()``; per directory, the entries (names
-> files) known durable after ``sync_dir()``. ``power_cut()`` rolls the real
tree back to exactly that: unsynced bytes are lost (or, with an ``rng``, a
random prefix of them survives, as a disk may persist part of an unsynced
write), files created since their directory was last synced vanish, renames
not followed by ``sync_dir`` revert, and removals not followed by ``sync_dir``
come back with their durable content. ``crash_at(n)`` makes the n-th mutating
operation from now raise ``PowerCut`` (a write first puts a random prefix of
its data in the file), and every operation after it too, until ``power_cut()``:
the machine died in the middle of whatever the code was doing.

The simulation, not the real disk, decides what survives, so ``PowerLossFS``
does not really fsync unless asked to (``real_sync=True``); ``NoSyncFS`` is
``OsFileSystem`` without fsyncs, for tests that check logic, not durability.

``FullDiskFS`` has a byte budget. A write that does not fit writes the prefix
that does and raises ``OSError(ENOSPC)``, like a real short write followed by
a failing one; ``sync`` can be told to fail with ENOSPC too; ``grow(n)`` gives
space back, as does removing or truncating files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from dataclasses import dataclass, field

from cluster.storage.fs import AppendFile, OsAppendFile, OsFileSystem

__all__ = ["FullDiskFS", "NoSyncFS", "PowerCut", "PowerLossFS"]


class PowerCut(Exception):
    """The simulated machine lost power; nothing more reaches the disk until ``power_cut()``.

    Deliberately not an ``OSError``: code under test must not be able to
    catch it and carry on as if an I/O call had merely failed.
    """


# -- PowerLossFS -------------------------------------------------------------


@dataclass(eq=False)
class _File:
    """An inode: its durable length, or its durable bytes once it has no live path."""

    durable_len: int = 0
    # The durable content when it can no longer be read from the live file:
    # the file was removed or replaced by a rename, or truncated below durable_len.
    saved: bytes | None = None


@dataclass(eq=False)
class _Dir:
    live: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)


class _PowerLossFile:
    def __init__(self, fs: PowerLossFS, inner: AppendFile, node: _File, path: str) -> None:
        self._fs = fs
        self._inner = inner
        self._node = node
        self._path = path
        self._epoch = fs.epoch
        self._closed = False

    def _check(self) -> None:
        if self._epoch != self._fs.epoch:
            raise OSError(errno.EBADF, "file handle from before a power cut", self._path)
        if self._closed:
            raise ValueError("I/O on a closed file")

    def write(self, data: bytes) -> None:
        self._check()
        if self._fs._step():
            cut = self._fs._rng.randint(0, len(data))
            self._inner.write(bytes(data[:cut]))
            raise PowerCut(f"power cut while writing {self._path}")
        self._inner.write(data)

    def sync(self) -> None:
        self._check()
        self._fs._tick()
        if self._fs.real_sync:
            self._inner.sync()
        self._node.durable_len = self._inner.size()
        self._node.saved = None
        self._fs.syncs += 1

    def truncate(self, size: int) -> None:
        self._check()
        self._fs._tick()
        node = self._node
        if size < node.durable_len and node.saved is None:
            node.saved = self._fs._durable_bytes(node, self._path)
        self._inner.truncate(size)

    def size(self) -> int:
        self._check()
        return self._inner.size()

    def close(self) -> None:
        # Always allowed (also after a crash): closing makes nothing durable.
        if not self._closed:
            self._closed = True
            self._fs._handles.discard(self)
            if self._epoch == self._fs.epoch:
                self._inner.close()


class PowerLossFS:
    """Loses, at ``power_cut()``, everything a real disk had not been told to make durable.

    Everything under ``root`` that exists when the FS is created counts as durable.
    """

    def __init__(
        self, root: str, rng: random.Random | None = None, real_sync: bool = False
    ) -> None:
        self.root = os.path.abspath(root)
        self.inner = OsFileSystem()
        self.real_sync = real_sync
        self.epoch = 0
        self.ops = 0  # mutating operations so far
        self.syncs = 0
        self.power_cuts = 0
        self._partial_rng = rng  # None: unsynced bytes are all lost at a power cut
        self._rng = rng or random.Random(0)
        self._crash_at: int | None = None
        self._dead = False
        self._handles: set[_PowerLossFile] = set()
        self._tree = self._scan(self.root)

    # -- fault injection ----------------------------------------------------
    def crash_at(self, n: int) -> None:
        """Make the ``n``-th mutating operation from now (1 = the next) raise ``PowerCut``."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._crash_at = self.ops + n

    @property
    def crashed(self) -> bool:
        return self._dead

    def _step(self) -> bool:
        """Count one mutating operation; True if the power goes out during it."""
        if self._dead:
            raise PowerCut("the power is out")
        self.ops += 1
        if self._crash_at is not None and self.ops >= self._crash_at:
            self._crash_at = None
            self._dead = True
            return True
        return False

    def _tick(self) -> None:
        if self._step():
            raise PowerCut("power cut")

    def _alive(self) -> None:
        if self._dead:
            raise PowerCut("the power is out")

    def power_cut(self) -> None:
        """Roll the real directory tree back to what was durable; invalidate every open handle."""
        live_paths = self._live_paths()
        desired = self._desired(self._tree, live_paths)
        for handle in list(self._handles):
            with contextlib.suppress(OSError):
                handle._inner.close()
        self._handles.clear()
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        self._write_tree(self.root, desired)
        self._tree = self._scan(self.root)
        self.epoch += 1
        self.power_cuts += 1
        self._dead = False
        self._crash_at = None

    # -- bookkeeping --------------------------------------------------------
    def _scan(self, path: str) -> _Dir:
        d = _Dir()
        for name in os.listdir(path):
            full = os.path.join(path, name)
            node: _File | _Dir
            if os.path.isdir(full):
                node = self._scan(full)
            else:
                node = _File(durable_len=os.path.getsize(full))
            d.live[name] = node
            d.durable[name] = node
        return d

    def _live_paths(self) -> dict[int, str]:
        out: dict[int, str] = {}

        def walk(d: _Dir, path: str) -> None:
            for name, node in d.live.items():
                full = os.path.join(path, name)
                if isinstance(node, _Dir):
                    walk(node, full)
                else:
                    out[id(node)] = full

        walk(self._tree, self.root)
        return out

    def _durable_bytes(self, node: _File, path: str | None) -> bytes:
        if node.saved is not None:
            return node.saved
        assert path is not None, "a file without a live path must have saved bytes"
        with open(path, "rb") as f:
            return f.read(node.durable_len)

    def _desired(self, d: _Dir, live_paths: dict[int, str]) -> dict[str, bytes | dict]:
        out: dict[str, bytes | dict] = {}
        for name, node in d.durable.items():
            if isinstance(node, _Dir):
                out[name] = self._desired(node, live_paths)
                continue
            path = live_paths.get(id(node))
            data = self._durable_bytes(node, path)
            if self._partial_rng is not None and node.saved is None and path is not None:
                with open(path, "rb") as f:
                    current = f.read()
                if current[: len(data)] == data and len(current) > len(data):
                    keep = self._partial_rng.randint(0, len(current) - len(data))
                    data = current[: len(data) + keep]
            out[name] = data
        return out

    def _write_tree(self, path: str, tree: dict[str, bytes | dict]) -> None:
        for name, content in tree.items():
            full = os.path.join(path, name)
            if isinstance(content, dict):
                os.mkdir(full, 0o700)
                self._write_tree(full, content)
            else:
                with open(full, "wb") as f:
                    f.write(content)

    def _split(self, path: str) -> tuple[_Dir, str]:
        """The live directory node holding ``path``, and its last component."""
        full = os.path.abspath(path)
        rel = os.path.relpath(full, self.root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            raise ValueError(f"{path} is outside {self.root}")
        parts = rel.split(os.sep)
        d = self._tree
        for part in parts[:-1]:
            node = d.live.get(part)
            if not isinstance(node, _Dir):
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            d = node
        return d, parts[-1]

    def _dir(self, path: str) -> _Dir:
        if os.path.abspath(path) == self.root:
            return self._tree
        parent, name = self._split(path)
        node = parent.live.get(name)
        if not isinstance(node, _Dir):
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        return node

    def _detach(self, node: _File | _Dir, path: str) -> None:
        """``node`` is losing its live path: keep its durable bytes in memory."""
        if isinstance(node, _File) and node.saved is None:
            node.saved = self._durable_bytes(node, path)

    # -- FileSystem ---------------------------------------------------------
    def open_append(self, path: str) -> AppendFile:
        parent, name = self._split(path)
        node = parent.live.get(name)
        if node is None:
            self._tick()  # creating a file is a mutation
            inner = self.inner.open_append(path)
            node = _File()
            parent.live[name] = node
        elif isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        else:
            self._alive()
            inner = self.inner.open_append(path)
        handle = _PowerLossFile(self, inner, node, path)
        self._handles.add(handle)
        return handle

    def open_log(self, path: str) -> AppendFile:
        return self.open_append(path)  # modelled without reserved space

    def read_bytes(self, path: str) -> bytes:
        self._alive()
        return self.inner.read_bytes(path)

    def listdir(self, path: str) -> list[str]:
        self._alive()
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        self._alive()
        return self.inner.exists(path)

    def makedirs(self, path: str) -> None:
        self._alive()
        if self._is_root_or_above(path):
            return
        rel = os.path.relpath(os.path.abspath(path), self.root)
        d, at = self._tree, self.root
        for part in rel.split(os.sep):
            at = os.path.join(at, part)
            node = d.live.get(part)
            if node is None:
                self._tick()
                os.mkdir(at, 0o700)
                node = _Dir()
                d.live[part] = node
            elif not isinstance(node, _Dir):
                raise FileExistsError(errno.EEXIST, "not a directory", at)
            d = node

    def remove(self, path: str) -> None:
        parent, name = self._split(path)
        node = parent.live.get(name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        self._tick()
        self._detach(node, path)
        self.inner.remove(path)
        del parent.live[name]

    def rename(self, src: str, dst: str) -> None:
        src_parent, src_name = self._split(src)
        dst_parent, dst_name = self._split(dst)
        node = src_parent.live.get(src_name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", src)
        old = dst_parent.live.get(dst_name)
        if isinstance(node, _Dir):
            # A directory moves as a whole; like rename(2) it may replace an empty one.
            if old is not None and (not isinstance(old, _Dir) or old.live):
                raise OSError(errno.ENOTEMPTY, "target exists and is not an empty directory", dst)
            self._tick()
            self.inner.rename(src, dst)
            del src_parent.live[src_name]
            dst_parent.live[dst_name] = node
            return
        self._tick()
        if old is not None and old is not node:
            self._detach(old, dst)
        self.inner.rename(src, dst)
        del src_parent.live[src_name]
        dst_parent.live[dst_name] = node

    def sync_dir(self, path: str) -> None:
        if self._is_root_or_above(path):  # the root always survives
            self._tick()
            if self.real_sync:
                self.inner.sync_dir(path)
            if os.path.abspath(path) == self.root:
                self._tree.durable = dict(self._tree.live)
            return
        d = self._dir(path)
        self._tick()
        if self.real_sync:
            self.inner.sync_dir(path)
        d.durable = dict(d.live)

    def _is_root_or_above(self, path: str) -> bool:
        full = os.path.abspath(path)
        return full == self.root or self.root.startswith(full.rstrip(os.sep) + os.sep)


# -- FullDiskFS --------------------------------------------------------------


class _FullDiskFile:
    def __init__(self, fs: FullDiskFS, inner: AppendFile) -> None:
        self._fs = fs
        self._inner = inner

    def write(self, data: bytes) -> None:
        fs = self._fs
        if len(data) > fs.free:
            fit = fs.free
            if fit:
                self._inner.write(bytes(data[:fit]))
                fs.free = 0
            fs.enospc_count += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._inner.write(data)
        fs.free -= len(data)

    def sync(self) -> None:
        fs = self._fs
        if fs.fail_syncs > 0:
            fs.fail_syncs -= 1
            fs.enospc_count += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._inner.sync()

    def truncate(self, size: int) -> None:
        before = self._inner.size()
        if size > before and size - before > self._fs.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._inner.truncate(size)
        self._fs.free += before - size

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


class FullDiskFS:
    """A disk with ``free`` bytes left; files that already exist cost nothing."""

    def __init__(self, free: int) -> None:
        self.inner = OsFileSystem()
        self.free = free
        self.fail_syncs = 0  # the next this many syncs raise ENOSPC
        self.enospc_count = 0

    def grow(self, n: int) -> None:
        self.free += n

    def open_append(self, path: str) -> AppendFile:
        return _FullDiskFile(self, self.inner.open_append(path))

    def open_log(self, path: str) -> AppendFile:
        return self.open_append(path)  # free space counts written bytes only

    def read_bytes(self, path: str) -> bytes:
        return self.inner.read_bytes(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def makedirs(self, path: str) -> None:
        self.inner.makedirs(path)

    def remove(self, path: str) -> None:
        size = os.path.getsize(path)
        self.inner.remove(path)
        self.free += size

    def rename(self, src: str, dst: str) -> None:
        replaced = os.path.getsize(dst) if os.path.exists(dst) and src != dst else 0
        self.inner.rename(src, dst)
        self.free += replaced

    def sync_dir(self, path: str) -> None:
        self.inner.sync_dir(path)


# -- NoSyncFS ----------------------------------------------------------------


class _NoSyncFile(OsAppendFile):
    __slots__ = ()

    def sync(self) -> None:
        pass


class NoSyncFS(OsFileSystem):
    """``OsFileSystem`` minus the fsyncs: same files, same bytes, much faster."""

    def open_append(self, path: str) -> AppendFile:
        return _NoSyncFile(path)

    def open_log(self, path: str) -> AppendFile:
        return _NoSyncFile(path)

    def sync_dir(self, path: str) -> None:
        pass
