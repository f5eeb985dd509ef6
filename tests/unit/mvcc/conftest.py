"""Fixtures: a store on a fresh backend, and reopening it as after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.mvcc import KVStore
from cluster.storage.backend import Backend

QUOTA = 64 * 1024 * 1024


class Member:
    """A backend and the store over it; ``restart`` closes both and reopens them."""

    def __init__(self, path: str, **store_args: object) -> None:
        self.path = path
        self.store_args = store_args
        self.backend = Backend(path, quota_bytes=QUOTA)
        self.store = KVStore(self.backend, **store_args)  # type: ignore[arg-type]

    def restart(self) -> KVStore:
        self.backend.close()  # commits the batch, as on a clean shutdown
        self.backend = Backend(self.path, quota_bytes=QUOTA)
        self.store = KVStore(self.backend, **self.store_args)  # type: ignore[arg-type]
        return self.store

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(str(tmp_path / "member" / "snap" / "db"))
    yield m
    m.close()


@pytest.fixture
def kv(member: Member) -> KVStore:
    return member.store
