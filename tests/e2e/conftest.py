"""Fixtures shared by the e2e tests: 3-member clusters of real processes (see procs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.config import GRPC_SERVERS
from tests.e2e.procs import Cluster, running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster for one test, ready once etcdctl sees a leader; killed afterwards."""
    with running(tmp_path) as c:
        yield c


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with ``BOTH_GRPC_SERVERS = True`` runs its ``module_cluster`` tests twice:
    members on grpcio's server, then on pygrpc-native (``--experimental-grpc-server``)."""
    if "module_cluster" in metafunc.fixturenames and getattr(
        metafunc.module, "BOTH_GRPC_SERVERS", False
    ):
        metafunc.parametrize("grpc_server", GRPC_SERVERS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def grpc_server(request: pytest.FixtureRequest) -> str:
    """The members' ``--experimental-grpc-server``: grpcio unless parametrized."""
    return str(getattr(request, "param", "grpcio"))


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory, grpc_server: str) -> Iterator[Cluster]:
    """One cluster shared by a module's tests (each uses its own keys); for tests that
    neither stop members nor depend on the store's global state beyond their own writes."""
    env = {"ETCD_EXPERIMENTAL_GRPC_SERVER": grpc_server}
    with running(tmp_path_factory.mktemp("cluster"), env=env) as c:
        yield c
