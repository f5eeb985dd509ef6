"""Fixtures shared by the e2e tests: 3-member clusters of real processes (see procs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import Cluster, running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster for one test, ready once etcdctl sees a leader; killed afterwards."""
    with running(tmp_path) as c:
        yield c


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster shared by a module's tests (each uses its own keys); for tests that
    neither stop members nor depend on the store's global state beyond their own writes."""
    with running(tmp_path_factory.mktemp("cluster")) as c:
        yield c
