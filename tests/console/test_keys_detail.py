"""Key detail: value formats, metadata, lease countdown data, history, diff, restore."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from console import etcd, keys

pytestmark = pytest.mark.django_db


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:800]
    return response.content.decode()


@pytest.mark.parametrize(
    ("value", "fmt", "shown"),
    [
        (b'{"b":1,"a":[1,2]}', "json", "{\n  &quot;b&quot;: 1,\n  &quot;a&quot;: [\n    1,"),
        (b"name: web\nports: [80, 443]\n", "yaml", "ports:\n- 80\n- 443"),
        (b"just some text", "text", "just some text"),
        (b"\x00\x01\xfe\xffABC", "binary", "00000000  00 01 fe ff 41 42 43"),
        (b"", "empty", "(empty value)"),
    ],
)
def test_value_formats(
    client: Client, viewer: User, console_cluster: list[str], ns: str,
    value: bytes, fmt: str, shown: str,
) -> None:  # fmt: skip
    key = ns.encode() + b"v"
    etcd.client().put(key, value)
    client.force_login(viewer)
    body = page(client, reverse("keys:detail", args=[key]))
    assert f"fmt-{fmt}" in body
    assert shown in body
    kv = etcd.client().get(key).kv
    assert f'id="mod-revision">{kv.mod_revision}<' in body
    assert 'id="edit"' not in body  # viewers get no write controls


def test_yaml_aliases_are_not_expanded() -> None:
    bomb = b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
    assert keys.describe_value(bomb).format == "text"


def test_lease_countdown_data(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"leased"
    keys.create_key(key, b"x", ttl=120)
    client.force_login(viewer)
    body = page(client, reverse("keys:detail", args=[key]))
    data = json.loads(
        re.search(r'<script id="lease-data" type="application/json">(.*?)</script>', body).group(1)
    )
    assert 100 < data["ttl"] <= 120
    assert 'src="/static/console/keys.js"' in body
    lease = client.get(data["url"]).json()
    assert lease["granted_ttl"] == 120 and 0 < lease["ttl"] <= 120
    kv = etcd.client().get(key).kv
    assert lease["id"] == f"{kv.lease:x}"
    etcd.client().revoke(kv.lease)
    assert client.get(data["url"]).json()["ttl"] == -1


def test_history_diff_and_old_versions(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"h"
    c = etcd.client()
    revs = [c.put(key, v).revision for v in (b"one\n", b"two\n<b>bold</b>\n", b"three\n")]
    c.put(ns + "other", "unrelated")  # revisions of other keys are skipped
    client.force_login(editor)
    body = page(client, reverse("keys:history", args=[key]))
    listed = [int(r) for r in re.findall(r'class="version-link">(\d+)<', body)]
    assert listed == revs[::-1]
    assert "compacted" not in body

    # an earlier version is viewable, with a restore button for editors
    body = page(client, reverse("keys:detail", args=[key]) + f"?rev={revs[1]}")
    assert (
        'id="old-version"' in body and "&lt;b&gt;bold&lt;/b&gt;" in body and 'id="restore"' in body
    )
    page(client, reverse("keys:detail", args=[key]) + f"?rev={revs[1] + 10_000}", 404)

    # the diff of any two versions, HTML-escaped
    body = page(client, reverse("keys:diff", args=[key]) + f"?a={revs[0]}&b={revs[1]}")
    assert '<tr class="d-del"><td class="mark">\u2212</td><td><pre>one</pre>' in body
    assert "<pre>&lt;b&gt;bold&lt;/b&gt;</pre>" in body and "<b>bold</b>" not in body
    body = page(client, reverse("keys:diff", args=[key]) + f"?a={revs[2]}&b={revs[2]}")
    assert 'id="no-diff"' in body

    # restore: a guarded write of the old value
    response = client.post(reverse("keys:restore", args=[key]), {"rev": revs[0], "seen": revs[2]})
    assert response.status_code == 302
    kv = c.get(key).kv
    assert kv.value == b"one\n" and kv.version == 4
    # restoring again with the stale revision is a conflict, nothing written
    response = client.post(reverse("keys:restore", args=[key]), {"rev": revs[1], "seen": revs[2]})
    assert response.status_code == 409
    assert 'id="conflict"' in response.content.decode()
    assert c.get(key).kv.value == b"one\n"


def test_history_stops_at_compaction(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"c"
    c = etcd.client()
    for i in range(4):
        last = c.put(key, b"v%d" % i).revision
    c.compact(last - 1)
    h = keys.history(key)
    assert [kv.value for kv in h.versions] == [b"v3", b"v2"] and h.compacted and not h.complete
    client.force_login(viewer)
    body = page(client, reverse("keys:history", args=[key]))
    assert "Older versions have been compacted away" in body


def test_history_of_recreated_key_starts_at_its_creation(
    console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"r"
    c = etcd.client()
    c.put(key, b"old life")
    c.delete(key)
    c.put(key, b"a")
    c.put(key, b"b")
    h = keys.history(key)
    assert [kv.value for kv in h.versions] == [b"b", b"a"] and h.complete


def test_missing_key_pages(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    client.force_login(viewer)
    key = ns.encode() + b"nope"
    assert "does not exist" in page(client, reverse("keys:detail", args=[key]), 404)
    page(client, reverse("keys:history", args=[key]), 404)
    page(client, "/keys/k/not*base64/", 404)
    page(client, "/keys/k/YQ=/", 404)  # padding is not canonical
    page(client, reverse("keys:detail", args=[key]) + "?rev=abc", 400)
