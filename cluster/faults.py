"""Fault injection for real member processes: named crash points and a power-loss file system.

Both are armed by environment variables and cost nothing when unarmed (the hooks test the
module constant ``CRASH``; ``file_system()`` returns the plain ``OsFileSystem``):

- ``ETCD_PY_CRASH=<point>[:<n>]``: the member exits at once with status 137 (as if SIGKILLed:
  no cleanup, no flush, no atexit) the ``n``-th time (default 1) it reaches ``<point>``, after
  one line on stderr naming it. The points are ``POINTS``.
- ``ETCD_PY_POWER_LOSS=1``: WAL and snapshot files are written through ``PowerLossFileSystem``,
  which keeps every write since the file's last fsync in this process's memory and hands it to
  the OS only at fsync. A SIGKILL (or a crash point) then loses exactly what was not fsynced,
  as a power cut would; without it the OS page cache would keep those bytes. The LMDB backend
  commits synchronously (``sync=True``) and is not affected. Directory operations (create,
  rename, remove) still reach the OS at once: the storage code syncs the directory after each.

The harness (``tests/robustness``) uses both against three real members.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Final

from cluster.storage.fs import AppendFile, FileSystem, OsAppendFile, OsFileSystem

log = logging.getLogger(__name__)

CRASH_ENV: Final = "ETCD_PY_CRASH"
POWER_LOSS_ENV: Final = "ETCD_PY_POWER_LOSS"
EXIT_STATUS: Final = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

POINTS: Final[dict[str, str]] = {
    "wal-before-save": "a Ready batch is about to be written to the WAL (durable.py)",
    "wal-after-save": "a Ready batch is in the WAL (fsynced), nothing sent or applied yet",
    "backend-before-commit": "the backend batch is about to be committed (backend.py)",
    "backend-after-commit": "the backend batch is committed, the caller not told yet",
    "snapshot-save": "a .snap file is written, its WAL marker not yet (durable.py)",
    "snapshot-apply": "a follower put the leader's backend in place; the Ready is not saved",
    "compact-mid": "a compaction wrote scheduledCompactRev, removed nothing yet (store.py)",
}


@dataclass
class CrashPlan:
    """Crash at ``point`` the ``n``-th time it is reached; ``reached`` counts so far."""

    point: str
    n: int = 1
    reached: int = 0


def parse_crash(spec: str) -> CrashPlan:
    """``<point>[:<n>]`` as ``ETCD_PY_CRASH`` takes it; ValueError naming what is wrong."""
    point, sep, count = spec.strip().partition(":")
    if point not in POINTS:
        raise ValueError(
            f"{CRASH_ENV}={spec!r}: unknown crash point {point!r} (one of {', '.join(POINTS)})"
        )
    if not sep:
        return CrashPlan(point)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{CRASH_ENV}={spec!r}: {count!r} is not a count of 1 or more")
    return CrashPlan(point, int(count))


def _crash_from_env() -> CrashPlan | None:
    """The plan ``ETCD_PY_CRASH`` asks for; a bad one stops the process with one line."""
    spec = os.environ.get(CRASH_ENV, "")
    try:
        return parse_crash(spec) if spec else None
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def _power_loss_from_env() -> bool:
    return os.environ.get(POWER_LOSS_ENV, "") not in ("", "0")


CRASH: CrashPlan | None = _crash_from_env()
"""The armed crash point; None (the hooks' whole cost is testing it) when unarmed."""

POWER_LOSS: bool = _power_loss_from_env()

_exit = os._exit  # replaced by in-process tests


def crash_point(name: str) -> None:
    """Exit with status 137 if ``name`` is the armed point reached for the ``n``-th time.

    Call sites guard it, so an unarmed member does not even make the call::

        if faults.CRASH: faults.crash_point("wal-before-save")
    """
    plan = CRASH
    if plan is None or plan.point != name:
        return
    plan.reached += 1
    if plan.reached < plan.n:
        return
    line = f"crash point {name} reached (time {plan.reached}): exiting with status {EXIT_STATUS}"
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(2, f"{line} ({CRASH_ENV})\n".encode())
    finally:
        _exit(EXIT_STATUS)


# -- power loss ------------------------------------------------------------------------------


class PowerLossFile:
    """An append-only file whose writes stay in memory until ``sync``.

    ``size`` counts them; ``truncate`` takes back unsynced bytes first; ``close`` drops them
    (closing makes nothing durable).
    """

    def __init__(self, fs: PowerLossFileSystem, path: str) -> None:
        self._fs = fs
        self._inner = OsAppendFile(path)
        self._pending = bytearray()
        self.path = path

    @property
    def pending(self) -> bytes:
        """What was written and not yet synced."""
        return bytes(self._pending)

    def write(self, data: bytes) -> None:
        self._pending += data

    def sync(self) -> None:
        if self._pending:
            start = self._inner.size()
            try:
                self._inner.write(bytes(self._pending))
            finally:  # a short write (ENOSPC): what reached the file is no longer pending
                del self._pending[: self._inner.size() - start]
        self._inner.sync()

    def truncate(self, size: int) -> None:
        on_disk = self._inner.size()
        if size >= on_disk:
            del self._pending[size - on_disk :]
            return
        self._pending.clear()
        self._inner.truncate(size)

    def size(self) -> int:
        return self._inner.size() + len(self._pending)

    def close(self) -> None:
        self._pending.clear()
        self._fs._forget(self)
        self._inner.close()


class PowerLossFileSystem(OsFileSystem):
    """``OsFileSystem`` whose files hold unsynced writes in memory (see the module docstring).

    Reads see those writes too, as they would through the page cache.
    """

    def __init__(self) -> None:
        self._open: weakref.WeakSet[PowerLossFile] = weakref.WeakSet()

    def open_append(self, path: str) -> AppendFile:
        f = PowerLossFile(self, path)
        self._open.add(f)
        return f

    def open_log(self, path: str) -> AppendFile:
        return self.open_append(path)  # no space reserved: unsynced writes stay in memory

    def _forget(self, f: PowerLossFile) -> None:
        self._open.discard(f)

    def read_bytes(self, path: str) -> bytes:
        data = super().read_bytes(path)
        for f in list(self._open):
            if f.path == path:
                data += f.pending
        return data

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        for f in list(self._open):
            if f.path == src:
                f.path = dst

    def remove(self, path: str) -> None:
        super().remove(path)
        for f in list(self._open):
            if f.path == path:
                f.path = ""  # the inode lives on while open, under no name


_warned = False


def file_system() -> FileSystem:
    """The file system for a member's WAL and snapshots: ``PowerLossFileSystem`` when
    ``ETCD_PY_POWER_LOSS`` is set, else ``OsFileSystem``."""
    global _warned
    if not POWER_LOSS:
        return OsFileSystem()
    if not _warned:
        _warned = True
        log.warning(
            "%s is set: WAL and snapshot writes stay in memory until fsync (power-loss test)",
            POWER_LOSS_ENV,
        )
    return PowerLossFileSystem()
