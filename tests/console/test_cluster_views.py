"""The cluster dashboard and its actions (console/views/cluster.py) against a real member."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth.models import Group, User
from django.test import AsyncClient
from django.test import Client as DjangoClient

from cluster.bench.ports import free_ports
from console import etcd
from console.roles import EDITORS, VIEWERS

pytestmark = pytest.mark.django_db

ACTIONS_GET = [
    "/cluster/compact/", "/cluster/move-leader/", "/cluster/snapshot/",
    "/cluster/members/{id}/defragment/",
]  # fmt: skip
SUPERUSER_GET = [
    "/cluster/members/add/", "/cluster/members/{id}/remove/", "/cluster/members/{id}/promote/",
]  # fmt: skip


def as_user(user: User) -> DjangoClient:
    c = DjangoClient()
    c.force_login(user)
    return c


@pytest.fixture
def admin(db: None) -> User:
    return User.objects.create_superuser("root", password="root-pass-123")


@pytest.fixture
def member_id(console_cluster: list[str]) -> str:
    return f"{etcd.client().member_list()[0].id:x}"


def test_dashboard_shows_members_and_their_status(viewer: User, member_id: str) -> None:
    r = as_user(viewer).get("/cluster/")
    assert r.status_code == 200
    sample = r.context["sample"]
    (m,) = sample["members"]
    assert m["id"] == member_id == sample["leader"] and m["is_leader"] and m["healthy"]
    assert m["raft_term"] >= 1 and m["raft_index"] >= m["applied_index"] > 0
    assert m["db_size"] > 0 and m["commit_lag"] == 0 and m["alarms"] == []
    body = r.content.decode()
    assert f'data-member="{member_id}"' in body and 'class="badge leader"' in body
    assert "vendor/uplot-1.6.32/uPlot.iife.min.js" in body and 'id="chart-index"' in body
    assert "Compact…" not in body and "Add member…" not in body  # a viewer's page
    assert r.context["config"]["ws"] == "/ws/cluster/"
    assert DjangoClient().get("/cluster/").status_code == 302  # login first


def test_viewers_may_not_act(viewer: User, member_id: str) -> None:
    c = as_user(viewer)
    for url in [*ACTIONS_GET, *SUPERUSER_GET]:
        assert c.get(url.format(id=member_id)).status_code == 403, url
        assert c.post(url.format(id=member_id), {}).status_code == 403, url
    assert c.post("/cluster/snapshot/download/", {"member": member_id}).status_code == 403


def test_editors_act_but_may_not_change_membership(editor: User, member_id: str) -> None:
    c = as_user(editor)
    for url in ACTIONS_GET:
        assert c.get(url.format(id=member_id)).status_code == 200, url
    for url in SUPERUSER_GET:
        assert c.get(url.format(id=member_id)).status_code == 403, url
        assert c.post(url.format(id=member_id), {}).status_code == 403, url
    body = c.get("/cluster/").content.decode()
    assert "Compact…" in body and "Add member…" not in body


def test_compact(editor: User, console_cluster: list[str], ns: str) -> None:
    c = as_user(editor)
    rev = etcd.client().put(f"{ns}a", "1").revision
    etcd.client().put(f"{ns}a", "2")
    r = c.get("/cluster/compact/")
    assert r.context["form"].initial["revision"] >= rev + 1
    r = c.post("/cluster/compact/", {"revision": rev + 1, "physical": "on"})
    assert r.status_code == 302 and r["Location"] == "/cluster/"
    assert etcd.client().get(f"{ns}a", revision=rev + 1).value == b"2"
    r = c.post("/cluster/compact/", {"revision": rev})
    assert r.status_code == 200 and "already compacted" in r.content.decode()
    r = c.post("/cluster/compact/", {"revision": 10**9})
    assert r.status_code == 200 and "beyond the current one" in r.content.decode()


def test_defragment_a_member(editor: User, member_id: str) -> None:
    c = as_user(editor)
    r = c.get(f"/cluster/members/{member_id}/defragment/")
    assert r.status_code == 200 and r.context["member"]["id"] == member_id
    r = c.post(f"/cluster/members/{member_id}/defragment/", follow=True)
    assert "Defragmented" in r.content.decode()
    assert c.get("/cluster/members/abc/defragment/").status_code == 404
    assert c.get("/cluster/members/zz/defragment/").status_code == 404


def test_move_leader_needs_another_voter(editor: User, member_id: str) -> None:
    r = as_user(editor).get("/cluster/move-leader/")
    assert r.status_code == 200 and "No other healthy voting member" in r.content.decode()


@pytest.mark.django_db(transaction=True)
async def test_snapshot_download_streams_etcds_snapshot_file(
    member_id: str, console_cluster: list[str]
) -> None:
    from asgiref.sync import sync_to_async

    def make_editor() -> User:
        group, _ = Group.objects.get_or_create(name=EDITORS)  # a flush drops the migration's
        Group.objects.get_or_create(name=VIEWERS)
        user = User.objects.create_user("snap", password="snap-pass-123")
        user.groups.add(group)
        return user

    user = await sync_to_async(make_editor)()
    client = AsyncClient()
    await client.aforce_login(user)
    r = await client.post("/cluster/snapshot/download/", {"member": member_id})
    assert r.status_code == 200
    assert r["Content-Type"] == "application/octet-stream"
    assert r["Content-Disposition"].startswith('attachment; filename="snapshot-m0-')
    data = b"".join([chunk async for chunk in r.streaming_content])  # type: ignore[attr-defined]
    assert len(data) > 4096
    body, digest = data[:-32], data[-32:]
    assert hashlib.sha256(body).digest() == digest  # what `etcdctl snapshot restore` checks
    r = await client.post("/cluster/snapshot/download/", {"member": "123"})
    assert r.status_code == 404


def test_superusers_add_and_remove_a_learner(admin: User, console_cluster: list[str]) -> None:
    c = as_user(admin)
    peer = f"http://127.0.0.1:{free_ports(1)[0]}"
    r = c.post("/cluster/members/add/", {"name": "extra", "peer_urls": peer, "learner": "on"})
    assert r.status_code == 200, r.content.decode()
    lines = r.context["lines"]
    new_id = f"{r.context['new'].id:x}"
    try:
        assert lines[0] == 'ETCD_NAME="extra"'
        initial = lines[1].removeprefix('ETCD_INITIAL_CLUSTER="').removesuffix('"').split(",")
        assert f"extra={peer}" in initial and any(i.startswith("m0=http://") for i in initial)
        assert lines[2:] == [
            f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{peer}"', 'ETCD_INITIAL_CLUSTER_STATE="existing"',
        ]  # fmt: skip
        # the dashboard shows it, not started, as a learner
        rows = {m["id"]: m for m in c.get("/cluster/").context["sample"]["members"]}
        assert rows[new_id]["is_learner"] and not rows[new_id]["started"]
        assert "not started" in rows[new_id]["error"]
        # the same peer URL twice is refused, with the cluster's reason
        r = c.post("/cluster/members/add/", {"name": "again", "peer_urls": peer, "learner": "on"})
        assert r.status_code == 200 and "The cluster refused" in r.content.decode()
        r = c.post("/cluster/members/add/", {"name": "x", "peer_urls": "ftp://h:1"})
        assert r.status_code == 200 and r.context["form"].errors
        # promoting it before it caught up is refused, and said so
        r = c.post(f"/cluster/members/{new_id}/promote/", follow=True)
        assert "can only promote a learner member which is in sync" in r.content.decode()
        r = c.get(f"/cluster/members/{new_id}/remove/")
        assert r.status_code == 200 and peer in r.content.decode()
    finally:
        r = c.post(f"/cluster/members/{new_id}/remove/", follow=True)
    assert "Removed extra" not in r.content.decode()  # it never started: no name yet
    assert f"Removed {new_id}" in r.content.decode()
    assert [m.name for m in etcd.client().member_list()] == ["m0"]
