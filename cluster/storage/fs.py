"""The file operations durable storage needs, behind one small interface.

``OsFileSystem`` is the real thing. Tests substitute file systems that lose
everything not yet synced at a simulated power cut, or that run out of space,
so the WAL and snapshot code is exercised against those failures directly.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

log = logging.getLogger(__name__)


class AppendFile(Protocol):
    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Make every byte written so far durable (fdatasync)."""

    def truncate(self, size: int) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    def open_append(self, path: str) -> AppendFile:
        """Open ``path`` for appending, creating it if missing."""

    def open_log(self, path: str) -> AppendFile:
        """``open_append`` for a log that is fsynced after every few appends: where it can,
        the file system reserves disk space ahead of the writes (``OsAppendFile``)."""

    def read_bytes(self, path: str) -> bytes: ...

    def listdir(self, path: str) -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals inside directory ``path`` durable."""


# The space a log file reserves at a time (``OsAppendFile``'s ``allocate_step``).
LOG_ALLOCATE_STEP = 1 << 20


class OsAppendFile:
    """A file written at its end; ``size`` is where the next write goes.

    With ``allocate_step``, disk space is reserved ahead of the writes, that much at a time
    (``posix_fallocate``), so an append's fdatasync need not also record a new file length
    in the file system's journal: with three members syncing on one disk here, that made
    a one-client put ~5% faster. The reserved tail reads as zeros; ``truncate`` and
    ``close`` give it back (a crash leaves it, and the WAL's reader cuts it).
    """

    __slots__ = ("_allocated", "_fd", "_size", "_step", "path")

    def __init__(self, path: str, allocate_step: int = 0) -> None:
        self.path = path
        self._step = allocate_step
        # Written at ``_size`` (its one writer keeps it), not O_APPEND: with space reserved,
        # the file's length is past the end of the writes.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._allocated = self._size

    def write(self, data: bytes) -> None:
        if self._step and self._size + len(data) > self._allocated:
            self._reserve(self._size + len(data))
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._size)
            self._size += written
            view = view[written:]

    def _reserve(self, end: int) -> None:
        grow = max(end - self._allocated, self._step)
        try:
            os.posix_fallocate(self._fd, self._allocated, grow)
        except OSError:
            # Disk full, or no room to reserve a whole step: write without reserving (a
            # write that does not fit fails by itself, as it would without reserving).
            log.debug("%s: could not reserve %d bytes ahead", self.path, grow, exc_info=True)
            self._trim()
            return
        self._allocated += grow

    def _trim(self) -> None:
        """Give back the reserved tail: the file ends where the writes do."""
        if self._allocated > self._size:
            os.ftruncate(self._fd, self._size)
            self._allocated = self._size

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size
        self._allocated = size

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        try:
            if self._allocated > self._size:
                self._trim()
                os.fdatasync(self._fd)  # a later reader finds the end where the writes end
        finally:
            os.close(self._fd)


class OsFileSystem:
    def open_append(self, path: str) -> AppendFile:
        return OsAppendFile(path)

    def open_log(self, path: str) -> AppendFile:
        return OsAppendFile(path, LOG_ALLOCATE_STEP)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _CountingFile:
    def __init__(self, fs: CountingFileSystem, inner: AppendFile) -> None:
        self._fs = fs
        self._inner = inner

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self._fs.written += len(data)

    def sync(self) -> None:
        self._inner.sync()
        self._fs.syncs += 1
        self._fs.synced_at.append(self._fs.written)

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


class CountingFileSystem(OsFileSystem):
    """The real file system, counting the fsyncs (files and directories) and bytes issued.

    ``synced_at`` holds, for each file fsync, the bytes written (to any file) before it.
    """

    def __init__(self) -> None:
        self.syncs = 0
        self.written = 0
        self.synced_at: list[int] = []

    def open_append(self, path: str) -> AppendFile:
        return _CountingFile(self, super().open_append(path))

    def open_log(self, path: str) -> AppendFile:
        return _CountingFile(self, super().open_log(path))

    def sync_dir(self, path: str) -> None:
        super().sync_dir(path)
        self.syncs += 1


def write_file_atomically(fs: FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never a mix."""
    tmp = path + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    f = fs.open_append(tmp)
    try:
        f.write(data)
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.sync_dir(os.path.dirname(path) or ".")
