"""The service registry pages and actions (console/views/services.py) against a real member."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client as DjangoClient
from pytest_django import Settings

from cluster.registry import Registration, Registry
from console import etcd, live

pytestmark = pytest.mark.django_db


@pytest.fixture
def registry(settings: Settings, ns: str, console_cluster: list[str]) -> str:
    settings.CONSOLE_REGISTRY_PREFIX = f"{ns}services"
    return str(settings.CONSOLE_REGISTRY_PREFIX)


@pytest.fixture
def running(registry: str) -> Iterator[Registration]:
    """An instance kept alive as a registering process would."""
    with Registry(etcd.client(), registry).register(
        "api", "api-1", "10.0.0.5", 8080, {"zone": "a"}, ttl=30
    ) as reg:
        yield reg


def as_user(user: User) -> DjangoClient:
    c = DjangoClient()
    c.force_login(user)
    return c


def test_pages_need_a_login(registry: str) -> None:
    for url in ("/services/", "/services/s/api/", "/services/register/"):
        r = DjangoClient().get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/")


def test_list_and_detail_show_instances(viewer: User, running: Registration, registry: str) -> None:
    c = as_user(viewer)
    r = c.get("/services/")
    assert r.status_code == 200
    body = r.content.decode()
    assert 'data-service="api"' in body and f"<code>{registry}/</code>" in body
    assert "Register an instance" not in body  # viewers only read
    assert r.context["config"]["ws"] == "/ws/services/"

    r = c.get("/services/s/api/")
    assert r.status_code == 200
    (inst,) = r.context["instances"]
    assert (inst["id"], inst["endpoint"], inst["metadata"]) == (
        "api-1",
        "10.0.0.5:8080",
        {"zone": "a"},
    )
    assert 0 < inst["ttl"] <= 30 and inst["granted_ttl"] == 30
    assert running.lease is not None and inst["lease"] == f"{running.lease.id:x}"
    assert r.context["config"]["ws"] == "/ws/services/?service=api"
    assert b"/deregister/?id=" not in r.content
    assert c.get("/services/s/nothing-here/").context["instances"] == []


def test_viewers_may_not_register_or_deregister(viewer: User, running: Registration) -> None:
    c = as_user(viewer)
    assert c.get("/services/register/").status_code == 403
    assert c.post("/services/register/", {"service": "x"}).status_code == 403
    assert c.get("/services/s/api/deregister/?id=api-1").status_code == 403
    r = c.post("/services/s/api/deregister/", {"id": "api-1", "lease": "1"})
    assert r.status_code == 403
    assert running.lease is not None and etcd.client().time_to_live(running.lease.id).ttl > 0


def test_register_by_hand_with_a_ttl(editor: User, registry: str) -> None:
    c = as_user(editor)
    assert b'name="ttl"' in c.get("/services/register/?service=web").content
    form = {
        "service": "web", "instance_id": "web-9", "address": "10.1.0.9", "port": "8443",
        "metadata": "zone=b\nrole = canary", "ttl": "45",
    }  # fmt: skip
    r = c.post("/services/register/", form)
    assert r.status_code == 302 and r["Location"] == "/services/s/web/"
    kv = etcd.client().get(f"{registry}/web/web-9").kv
    assert kv is not None and kv.lease
    data = json.loads(kv.value)
    assert (data["address"], data["port"], data["metadata"]) == (
        "10.1.0.9", 8443, {"zone": "b", "role": "canary"},
    )  # fmt: skip
    assert data["registered_at"].endswith("Z")
    ttl = etcd.client().time_to_live(kv.lease)
    assert ttl.granted_ttl == 45 and 40 < ttl.ttl <= 45
    # nothing keeps it alive: no keep-alive ever refreshed it, and the same id is refused
    r = c.post("/services/register/", form)
    assert r.status_code == 200 and "already registered" in r.content.decode()
    r = c.post("/services/register/", {**form, "instance_id": "j", "metadata": '{"a": [1]}'})
    assert r.status_code == 302
    assert json.loads(etcd.client().get(f"{registry}/web/j").value or b"")["metadata"] == {"a": [1]}
    for bad in ({"service": "a/b"}, {"port": "0"}, {"metadata": "no equals"}, {"ttl": "0"}):
        r = c.post("/services/register/", {**form, "instance_id": "other", **bad})
        assert r.status_code == 200 and r.context["form"].errors


def test_deregister_revokes_the_lease_after_confirming(
    editor: User, running: Registration, registry: str
) -> None:
    assert running.lease is not None
    lease = running.lease.id
    running.lease.close()  # the process stops refreshing (it would register again)
    other = f"{registry}/api/sidecar"
    etcd.client().put(other, "shares the lease", lease=lease)
    c = as_user(editor)
    r = c.get("/services/s/api/deregister/?id=api-1")
    assert r.status_code == 200
    body = r.content.decode()
    assert "every key attached to it goes" in body and other in body
    assert r.context["inst"]["lease"] == f"{lease:x}"

    # a stale confirmation (the instance was registered again meanwhile) changes nothing
    r = c.post("/services/s/api/deregister/", {"id": "api-1", "lease": "123"})
    assert r.status_code == 302 and etcd.client().get(f"{registry}/api/api-1").kv is not None

    r = c.post("/services/s/api/deregister/", {"id": "api-1", "lease": f"{lease:x}"})
    assert r.status_code == 302 and r["Location"] == "/services/s/api/"
    assert etcd.client().get(f"{registry}/api/", prefix=True).kvs == []
    assert etcd.client().time_to_live(lease).ttl == -1  # revoked
    assert live.console_revoker(lease) == "ed"  # the services pages will say who

    r = c.get("/services/s/api/deregister/?id=api-1", follow=True)
    assert "may be gone" in r.content.decode()


def test_deregister_an_instance_without_a_lease(editor: User, registry: str) -> None:
    etcd.client().put(f"{registry}/db/db-1", json.dumps({"address": "h", "port": 5432}))
    c = as_user(editor)
    r = c.get("/services/s/db/deregister/?id=db-1")
    assert "its key will be deleted" in r.content.decode()
    r = c.post("/services/s/db/deregister/", {"id": "db-1", "lease": ""})
    assert r.status_code == 302
    assert etcd.client().get(f"{registry}/db/db-1").kv is None


def test_the_pages_work_against_a_real_etcd(
    viewer: User, console_etcd: list[str], settings: Settings, ns: str
) -> None:
    settings.CONSOLE_REGISTRY_PREFIX = f"{ns}svc"
    with Registry(etcd.client(), settings.CONSOLE_REGISTRY_PREFIX).register(
        "api", "a1", "10.0.0.1", 1, ttl=20
    ):
        c = as_user(viewer)
        assert c.get("/services/").context["rows"] == [{"name": "api", "count": 1}]
        (inst,) = c.get("/services/s/api/").context["instances"]
        assert inst["id"] == "a1" and 0 < inst["ttl"] <= 20


def test_a_cluster_that_is_down_gives_a_503(viewer: User, settings: Settings) -> None:
    settings.CONSOLE_ETCD_ENDPOINTS = ["127.0.0.1:1"]
    settings.CONSOLE_ETCD_TIMEOUT = 0.5
    etcd.reset()
    try:
        client = etcd.client()
        client.retry_timeout = 0.3
        r = as_user(viewer).get("/services/")
        assert r.status_code == 503 and b"did not answer" in r.content
    finally:
        etcd.reset()
