"""Create / edit / delete: guarded writes, the conflict flow, folder deletes, roles."""

from __future__ import annotations

import base64
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from console import etcd, keys

pytestmark = pytest.mark.django_db


def hidden(body: str, form_id: str, name: str) -> str:
    form = body.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]
    return re.search(rf'name="{name}" value="([^"]*)"', form).group(1)


def test_create_key_and_ttl(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    client.force_login(editor)
    folder = ns.encode() + b"new/"
    body = client.get(reverse("keys:create"), {"p": keys.encode_key(folder)}).content.decode()
    assert f'value="{ns}new/"' in body  # the key field starts with the folder

    response = client.post(
        reverse("keys:create"),
        {
            "key": f"{ns}new/a",
            "key_encoding": "utf-8",
            "value": "l1\r\nl2",
            "value_encoding": "utf-8",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("keys:detail", args=[folder + b"a"])
    kv = etcd.client().get(folder + b"a").kv
    assert kv.value == b"l1\nl2" and kv.lease == 0  # textarea CRLF back to LF

    response = client.post(
        reverse("keys:create"),
        {"key": base64.b64encode(folder + b"\xff").decode(), "key_encoding": "base64",
         "value": base64.b64encode(b"\x00\x01").decode(), "value_encoding": "base64", "ttl": "60"},
    )  # fmt: skip
    assert response.status_code == 302
    kv = etcd.client().get(folder + b"\xff").kv
    assert kv.value == b"\x00\x01" and kv.lease != 0
    assert 50 < etcd.client().time_to_live(kv.lease).ttl <= 60

    # invalid input re-renders the form
    response = client.post(
        reverse("keys:create"), {"key": "", "value_encoding": "utf-8", "key_encoding": "utf-8"}
    )
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    response = client.post(
        reverse("keys:create"),
        {"key": "k", "key_encoding": "utf-8", "value": "***", "value_encoding": "base64"},
    )
    assert response.status_code == 200 and "invalid base64" in response.content.decode()


def test_create_existing_key_is_a_conflict(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    etcd.client().put(ns + "x", "theirs")
    client.force_login(editor)
    response = client.post(
        reverse("keys:create"),
        {
            "key": ns + "x",
            "key_encoding": "utf-8",
            "value": "mine",
            "value_encoding": "utf-8",
            "ttl": "30",
        },
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert "already exists" in body and "theirs" in body and "mine" in body
    assert etcd.client().get(ns + "x").kv.value == b"theirs"
    assert etcd.client().leases() == [] or all(
        etcd.client().time_to_live(lease).keys == [] for lease in etcd.client().leases()
    )  # the lease granted for the TTL was revoked


def test_edit_conflict_flow(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"cfg"
    c = etcd.client()
    c.put(key, b"a: 1\n")
    client.force_login(editor)
    edit_url = reverse("keys:edit", args=[key])
    body = client.get(edit_url).content.decode()
    seen = hidden(body, "edit-form", "seen")
    assert int(seen) == c.get(key).kv.mod_revision

    c.put(key, b"a: 2\n")  # a concurrent change between loading the form and saving it
    response = client.post(edit_url, {"value": "a: 3\n", "value_encoding": "utf-8", "seen": seen})
    assert response.status_code == 409
    body = response.content.decode()
    assert "Someone else changed this key" in body
    assert "a: 2" in body and "a: 3" in body
    assert '<tr class="d-del"><td class="mark">\u2212</td><td><pre>a: 2</pre>' in body
    assert c.get(key).kv.value == b"a: 2\n"

    # "edit again": the form with my value, guarded by the new revision
    again = {
        n: hidden(body, "edit-again-form", n)
        for n in ("value", "value_encoding", "seen", "edit_again")
    }
    response = client.post(edit_url, again)
    assert response.status_code == 200
    form = response.content.decode()
    assert "a: 3" in form and int(hidden(form, "edit-form", "seen")) == c.get(key).kv.mod_revision
    assert c.get(key).kv.value == b"a: 2\n"

    # "overwrite with mine" at the new revision
    overwrite = {n: hidden(body, "overwrite-form", n) for n in ("value", "value_encoding", "seen")}
    response = client.post(edit_url, overwrite)
    assert response.status_code == 302
    assert c.get(key).kv.value == b"a: 3\n"
    # "keep current" is a link to the key
    assert f'href="{reverse("keys:detail", args=[key])}" id="keep-current"' in body


def test_edit_after_concurrent_delete_recreates_on_overwrite(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"gone"
    c = etcd.client()
    seen = c.put(key, b"x").revision
    c.delete(key)
    client.force_login(editor)
    response = client.post(
        reverse("keys:edit", args=[key]), {"value": "y", "value_encoding": "utf-8", "seen": seen}
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert "has been deleted since" in body
    overwrite = {n: hidden(body, "overwrite-form", n) for n in ("value", "value_encoding", "seen")}
    assert overwrite["seen"] == "0"
    assert client.post(reverse("keys:edit", args=[key]), overwrite).status_code == 302
    assert c.get(key).kv.value == b"y"


def test_edit_keeps_lease_and_binary_values(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"bin"
    keys.create_key(key, b"\x00\xff", ttl=300)
    kv = etcd.client().get(key).kv
    client.force_login(editor)
    body = client.get(reverse("keys:edit", args=[key])).content.decode()
    assert 'value="base64" selected' in body and base64.b64encode(b"\x00\xff").decode() in body
    response = client.post(
        reverse("keys:edit", args=[key]),
        {
            "value": base64.b64encode(b"\x01").decode(),
            "value_encoding": "base64",
            "seen": kv.mod_revision,
        },
    )
    assert response.status_code == 302
    new = etcd.client().get(key).kv
    assert new.value == b"\x01" and new.lease == kv.lease


def test_delete_key_guarded(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"d"
    c = etcd.client()
    c.put(key, b"1")
    client.force_login(editor)
    body = client.get(reverse("keys:delete", args=[key])).content.decode()
    seen = hidden(body, "delete-form", "seen")
    c.put(key, b"2")
    response = client.post(reverse("keys:delete", args=[key]), {"seen": seen})
    assert response.status_code == 409 and c.get(key).kv is not None
    body = response.content.decode()
    assert 'id="delete-anyway"' in body
    seen_now = re.search(r'name="seen" value="(\d+)"', body).group(1)
    assert int(seen_now) == c.get(key).kv.mod_revision
    response = client.post(reverse("keys:delete", args=[key]), {"seen": seen_now})
    assert response.status_code == 302 and c.get(key).kv is None
    assert response["Location"].startswith(reverse("keys:tree"))


def test_delete_folder_counts_and_confirms(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    c = etcd.client()
    folder = ns.encode() + b"dir/"
    for i in range(12):
        c.put(folder + b"sub/%d" % i, b"")
    c.put(ns.encode() + b"dir-sibling", b"stays")
    client.force_login(editor)
    url = reverse("keys:delete_folder")
    body = client.get(url, {"p": keys.encode_key(folder)}).content.decode()
    assert "<strong>12</strong> keys" in body
    seen = hidden(body, "delete-folder-form", "seen")

    c.put(folder + b"late", b"")  # written after the count: the delete is refused
    response = client.post(url, {"p": keys.encode_key(folder), "seen": seen})
    assert response.status_code == 409
    body = response.content.decode()
    assert 'id="folder-changed"' in body and "<strong>13</strong> keys" in body
    assert keys.count_prefix(folder) == 13

    response = client.post(
        url, {"p": keys.encode_key(folder), "seen": hidden(body, "delete-folder-form", "seen")}
    )
    assert response.status_code == 302
    assert keys.count_prefix(folder) == 0
    assert c.get(ns.encode() + b"dir-sibling").kv is not None
    assert client.get(url).status_code == 404  # never the root


WRITES = [
    ("get", "keys:create", False),
    ("post", "keys:create", False),
    ("get", "keys:import", False),
    ("post", "keys:import", False),
    ("post", "keys:import_apply", False),
    ("get", "keys:delete_folder", False),
    ("post", "keys:delete_folder", False),
    ("get", "keys:edit", True),
    ("post", "keys:edit", True),
    ("get", "keys:delete", True),
    ("post", "keys:delete", True),
    ("post", "keys:restore", True),
]


@pytest.mark.parametrize(("method", "name", "by_key"), WRITES)
def test_viewer_gets_403_on_writes(
    client: Client, viewer: User, console_cluster: list[str], ns: str,
    method: str, name: str, by_key: bool,
) -> None:  # fmt: skip
    key = ns.encode() + b"k"
    etcd.client().put(key, b"v")
    client.force_login(viewer)
    url = reverse(name, args=[key]) if by_key else reverse(name)
    data = {"p": keys.encode_key(ns.encode()), "value": "x", "value_encoding": "utf-8",
            "seen": "1", "rev": "1", "key": ns + "k2", "key_encoding": "utf-8"}  # fmt: skip
    response = getattr(client, method)(url, data)
    assert response.status_code == 403
    assert "editors" in response.content.decode()
    assert etcd.client().get(key).kv.value == b"v"
    assert etcd.client().get(ns + "k2").kv is None
