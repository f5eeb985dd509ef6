"""Fixtures for the console tests: a real cluster the console talks to, users in each role.

``cluster_endpoints`` is one member of our own cluster for the whole session;
``etcd_endpoints`` a real etcd (Debian's etcd-server) for the runs that prove the console
works against both. ``console_cluster`` points the console at ours (``console.etcd.reset()``
after changing the setting) and ``ns`` gives each test a key prefix of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from pytest_django import Settings

from console import etcd
from console.roles import EDITORS, VIEWERS
from tests.client.servers import ETCD, Servers, etcd_available, factory


@pytest.fixture(scope="session")
def cluster_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with factory("ours")(tmp_path_factory.mktemp("console-cluster"), 1) as servers:
        yield servers.endpoints


@pytest.fixture(scope="session")
def etcd_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if not etcd_available():
        pytest.fail(f"etcd binary missing at {ETCD} (apt-get install etcd-server)")
    with factory("etcd")(tmp_path_factory.mktemp("console-etcd"), 1) as servers:
        yield servers


@pytest.fixture
def console_cluster(settings: Settings, cluster_endpoints: list[str]) -> Iterator[list[str]]:
    """The console connected to our cluster for this test."""
    settings.CONSOLE_ETCD_ENDPOINTS = cluster_endpoints
    etcd.reset()
    yield cluster_endpoints
    etcd.reset()


@pytest.fixture
def console_etcd(settings: Settings, etcd_servers: Servers) -> Iterator[list[str]]:
    """The console connected to a real etcd for this test."""
    settings.CONSOLE_ETCD_ENDPOINTS = etcd_servers.endpoints
    etcd.reset()
    yield etcd_servers.endpoints
    etcd.reset()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    return f"/t/{name}-{uuid.uuid4().hex[:8]}/"


def _user(name: str, group: str | None) -> User:
    user = User.objects.create_user(username=name, password=f"{name}-pass-123")
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def viewer(db: None) -> User:
    return _user("vera", VIEWERS)


@pytest.fixture
def editor(db: None) -> User:
    return _user("ed", EDITORS)
