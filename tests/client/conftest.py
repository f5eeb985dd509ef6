"""Fixtures for the client tests: servers (see servers.py), clients and per-test key prefixes.

Every test here that uses a server fixture is marked ``etcd_server``. With the default server
factory (real etcd) they skip when the etcd binary is missing, except under ``CI=true``, where
the binary is expected and its absence fails the tests loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cluster.client import AsyncClient, Client
from tests.client.servers import ETCD, Servers, etcd_available, factory, selected_names

HERE = Path(__file__).resolve().parent
SERVER_FIXTURES = {"server", "cluster3"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use a server ``etcd_server``; skip them without etcd outside CI."""
    mine = [
        item
        for item in items
        if HERE in Path(str(item.path)).resolve().parents
        and SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    for item in mine:
        item.add_marker(pytest.mark.etcd_server)
    if etcd_available() or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason=f"etcd is not installed at {ETCD} (apt-get install etcd-server)")
    for item in mine:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "etcd" in callspec.params.values():
            item.add_marker(skip)


def _start(name: str, tmp: Path, size: int) -> Iterator[Servers]:
    if name == "etcd" and not etcd_available():
        pytest.fail(f"etcd binary missing at {ETCD} (CI=true: it must be installed)")
    with factory(name)(tmp, size) as servers:
        yield servers


@pytest.fixture(scope="session", params=selected_names())
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """One single-member server per kind (real etcd, ours), shared by the session's tests
    (each uses its own key prefix)."""
    yield from _start(request.param, tmp_path_factory.mktemp(f"{request.param}1"), 1)


@pytest.fixture(params=selected_names())
def cluster3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Servers]:
    """A fresh 3-member cluster of each kind for one test (failover tests kill members)."""
    yield from _start(request.param, tmp_path, 3)


@pytest.fixture
def endpoints(server: Servers) -> list[str]:
    return server.endpoints


@pytest.fixture
def client(endpoints: list[str]) -> Iterator[Client]:
    with Client(endpoints) as c:
        yield c


@pytest.fixture
async def aclient(endpoints: list[str]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(endpoints) as c:
        yield c


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own: ``/t/<test name>-<random>/``."""
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    return f"/t/{name}-{uuid.uuid4().hex[:8]}/"
