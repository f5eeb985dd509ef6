"""The key tree: folders by separator, lazy one-level listing, counts, paging, filter, header."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from cluster.client import Op
from console import etcd, keys

pytestmark = pytest.mark.django_db


def put_many(items: list[tuple[bytes, bytes]]) -> None:
    """Fast bulk writes: transactions of 100 puts."""
    c = etcd.client()
    for i in range(0, len(items), 100):
        c.txn(success=[Op.put(k, v) for k, v in items[i : i + 100]])


def tree(client: Client, folder: bytes = b"", **params: str) -> str:
    query = {"p": keys.encode_key(folder)} if folder else {}
    query.update(params)
    response = client.get(reverse("keys:tree"), query)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def test_anonymous_is_sent_to_login_everywhere(client: Client) -> None:
    token = keys.encode_key(b"/a")
    for url in [
        reverse("keys:tree"),
        reverse("keys:detail", args=[b"/a"]),
        f"/keys/k/{token}/history/",
        f"/keys/k/{token}/diff/",
        f"/keys/k/{token}/edit/",
        f"/keys/k/{token}/delete/",
        reverse("keys:create"),
        reverse("keys:export"),
        reverse("keys:import"),
        reverse("keys:delete_folder") + "?p=" + token,
        reverse("keys:lease", args=[1]),
    ]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_folders_keys_and_counts(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    put_many(
        [(p + b"app/config/a", b"1"), (p + b"app/config/b", b"2"), (p + b"app/x", b"3")]
        + [(p + b"db/%d" % i, b"v") for i in range(7)]
        + [(p + b"top", b"t")]
    )
    client.force_login(viewer)
    body = tree(client, p)
    rows = re.findall(
        r'class="entry (folder|key)-link" href="([^"]+)">(?:<span[^>]*>[^<]*</span>)?([^<]*)<', body
    )
    assert [(kind, label) for kind, _, label in rows] == [
        ("folder", "app/"),
        ("folder", "db/"),
        ("key", "top"),
    ]
    counts = re.findall(r'<td class="num">(\d+)</td>', body)
    assert counts[:2] == ["3", "7"]
    # breadcrumbs: one link per folder level of the prefix
    assert 'class="breadcrumbs"' in body and "t/</a>" in body

    listing = keys.list_children(p + b"app/")
    assert [(e.label, e.is_folder, e.count) for e in listing.entries] == [
        (b"config/", True, 2),
        (b"x", False, None),
    ]
    # the folder link opens the child level
    body = tree(client, p + b"app/config/")
    assert ">a<" in body and ">b<" in body


def test_keys_without_leading_slash_show_at_root(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    name = ns.strip("/").replace("/", "-").encode()
    etcd.client().put(b"rootkey-" + name, b"x")
    client.force_login(viewer)
    body = tree(client, q="rootkey-")  # the filter box, at the root
    assert "rootkey-" + name.decode() in body
    listing = keys.list_children(b"")
    labels = [e.label for e in listing.entries]
    assert b"/" in labels  # every key starting with "/" is under the "/" folder


def test_folder_with_many_keys_in_subfolders_costs_a_request_per_child(
    console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    put_many([(p + b"f%d/k%04d" % (f, i), b"") for f in range(4) for i in range(300)])
    put_many([(p + b"z%02d" % i, b"") for i in range(3)])
    listing = keys.list_children(p)
    assert [e.label for e in listing.entries] == [
        b"f0/",
        b"f1/",
        b"f2/",
        b"f3/",
        b"z00",
        b"z01",
        b"z02",
    ]
    assert [e.count for e in listing.entries[:4]] == [300] * 4
    assert listing.requests <= 5  # one per child folder (+1 for the keys after them)
    assert listing.next_after is None


def test_paging_1200_direct_keys(
    client: Client, viewer: User, console_cluster: list[str], ns: str, settings: Settings
) -> None:
    p = ns.encode()
    names = [p + b"k%05d" % i for i in range(1200)]
    put_many([(k, b"v") for k in names] + [(p + b"sub/x", b"1")])
    listing = keys.list_children(p)
    assert len(listing.entries) == 100 and listing.requests == 1
    # all pages through the domain layer: every entry exactly once, in order
    seen: list[bytes] = []
    after = None
    while True:
        page = keys.list_children(p, after=after, limit=250)
        seen += [e.name for e in page.entries]
        after = page.next_after
        if after is None:
            break
    assert seen == [*names, p + b"sub/"]

    # and through the pages' "next page" links (page size from the setting)
    settings.CONSOLE_KEYS_PAGE_SIZE = 400
    client.force_login(viewer)
    body = tree(client, p)
    pages = 1
    shown = body.count('class="entry key-link"')
    while 'id="next-page"' in body:
        url = re.search(r'href="([^"]+)" id="next-page"', body).group(1).replace("&amp;", "&")
        response = client.get(url)
        assert response.status_code == 200
        body = response.content.decode()
        shown += body.count('class="entry key-link"')
        pages += 1
    assert pages == 4 and shown == 1200
    assert "sub/" in body and 'id="first-page"' in body


def test_filter_box(client: Client, viewer: User, console_cluster: list[str], ns: str) -> None:
    p = ns.encode()
    put_many([(p + b"alpha", b""), (p + b"alps/x", b""), (p + b"beta", b"")])
    client.force_login(viewer)
    body = tree(client, p, q="al")
    assert ">alpha<" in body and "alps/" in body and ">beta<" not in body
    # typing a path with the separator opens that folder
    response = client.get(reverse("keys:tree"), {"p": keys.encode_key(p), "q": "alps/"})
    assert response.status_code == 302
    body = client.get(response["Location"]).content.decode()
    assert ">x<" in body


def test_custom_separator(console_cluster: list[str], ns: str, settings: Settings) -> None:
    settings.CONSOLE_KEY_SEPARATOR = "."
    p = ns.encode() + b"cfg."
    put_many([(p + b"a.b", b""), (p + b"a.c", b""), (p + b"d", b"")])
    listing = keys.list_children(p)
    assert [(e.label, e.count) for e in listing.entries] == [(b"a.", 2), (b"d", None)]


def test_header_shows_cluster_summary(
    client: Client, viewer: User, console_cluster: list[str]
) -> None:
    client.force_login(viewer)
    body = tree(client)
    status = etcd.client().status()
    assert f'class="cluster-id">{status.header.cluster_id:x}<' in body
    assert f'class="leader-id">{status.leader:x}<' in body
    revision = int(re.search(r'class="revision">(\d+)<', body).group(1))
    assert revision > 0
    assert 'class="leader-name">' in body
    # read-only users see no write controls
    assert 'id="new-key"' not in body and "read-only" in body


def test_editor_sees_write_controls(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    etcd.client().put(ns + "k", "v")
    client.force_login(editor)
    body = tree(client, ns.encode())
    assert 'id="new-key"' in body and 'id="delete-folder"' in body and "read-only" not in body
