"""The file operations durable storage needs, behind one small interface.

``OsFileSystem`` is the real thing. Tests substitute file systems that lose
everything not yet synced at a simulated power cut, or that run out of space,
so the WAL and snapshot code is exercised against those failures directly.
"""

from __future__ import annotations

import os
from typing import Protocol


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

    def read_bytes(self, path: str) -> bytes: ...

    def listdir(self, path: str) -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals inside directory ``path`` durable."""


class OsAppendFile:
    __slots__ = ("_fd", "_size", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        os.close(self._fd)


class OsFileSystem:
    def open_append(self, path: str) -> AppendFile:
        return OsAppendFile(path)

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
