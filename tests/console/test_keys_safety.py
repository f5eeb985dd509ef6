"""Untrusted keys and values: URL round trips, escaping, CSP, headers, CSRF; the cluster down."""

from __future__ import annotations

import re
import socket
import time

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from console import etcd, keys

pytestmark = pytest.mark.django_db

WEIRD = [
    b"../../etc/passwd",
    b"a%2Fb%2F..%2F",
    b"with space and ?query=1&x#frag",
    b"<script>alert(1)</script>",
    b'"><img src=x onerror=alert(1)>',
    b"\xff\xfe not utf-8 \x00 nul",
    b"new\nline\ttab",
    "ünïcödé/ключ".encode(),
]


@pytest.mark.parametrize("name", WEIRD, ids=range(len(WEIRD)))
def test_weird_keys_round_trip(
    client: Client, editor: User, console_cluster: list[str], ns: str, name: bytes
) -> None:
    key = ns.encode() + b"w/" + name
    c = etcd.client()
    c.put(key, b"<b>value</b>")
    client.force_login(editor)

    # the tree links to the key by its token, and the token resolves to the exact bytes
    body = client.get(
        reverse("keys:tree"), {"p": keys.encode_key(ns.encode() + b"w/")}
    ).content.decode()
    assert "<script>alert" not in body and "<img src=x" not in body and "<b>value" not in body
    links = re.findall(r'href="(/keys/(?:k/[A-Za-z0-9_-]+/|\?p=[A-Za-z0-9_-]+))"', body)
    first = name.split(b"/")[0]
    if b"/" in name:
        folder = ns.encode() + b"w/" + first + b"/"
        assert f"/keys/?p={keys.encode_key(folder)}" in links
    else:
        assert reverse("keys:detail", args=[key]) in links

    detail = client.get(reverse("keys:detail", args=[key]))
    assert detail.status_code == 200
    text = detail.content.decode()
    assert "&lt;b&gt;value&lt;/b&gt;" in text and "<script>alert" not in text
    assert (
        keys.display(key)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        in text
    )

    seen = c.get(key).kv.mod_revision
    response = client.post(
        reverse("keys:edit", args=[key]),
        {"value": "edited", "value_encoding": "utf-8", "seen": seen},
    )
    assert response.status_code == 302 and response["Location"] == reverse(
        "keys:detail", args=[key]
    )
    assert c.get(key).kv.value == b"edited"
    assert client.get(reverse("keys:history", args=[key])).status_code == 200
    response = client.post(reverse("keys:delete", args=[key]), {"seen": c.get(key).kv.mod_revision})
    assert response.status_code == 302 and c.get(key).kv is None


def test_key_tokens() -> None:
    for name in WEIRD:
        token = keys.encode_key(name)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
        assert keys.decode_key(token) == name
    for bad in ["", "a", "YQ=", "YQ==", "a+b/", "Y Q"]:
        with pytest.raises(keys.InvalidKeyError):
            keys.decode_key(bad)


def test_security_headers_and_no_inline_script(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"k"
    keys.create_key(key, b'{"x": "</script><script>alert(1)</script>"}', ttl=60)
    client.force_login(editor)
    anonymous = Client()
    for c, url in [
        (client, reverse("keys:tree")),
        (client, reverse("keys:detail", args=[key])),
        (client, reverse("keys:edit", args=[key])),
        (client, reverse("keys:history", args=[key])),
        (anonymous, reverse("login")),
    ]:
        response = c.get(url)
        assert response.status_code == 200
        csp = response["Content-Security-Policy"]
        assert (
            "script-src 'self'" in csp
            and "frame-ancestors 'none'" in csp
            and "unsafe-inline" not in csp
        )
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        body = response.content.decode()
        for tag in re.findall(r"<script[^>]*>", body):
            assert "src=" in tag or 'type="application/json"' in tag, tag
        assert " style=" not in body
        assert re.findall(r"<[^>]*\son[a-z]+=", body) == []  # no inline event handlers


def test_json_script_escapes_lease_data(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    key = ns.encode() + b"</script>"
    keys.create_key(key, b"v", ttl=60)
    client.force_login(editor)
    body = client.get(reverse("keys:detail", args=[key])).content.decode()
    assert body.count("</script>") == body.count("<script")  # nothing closes a script early


def test_csrf_is_enforced(editor: User, console_cluster: list[str], ns: str) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor)
    response = client.post(
        reverse("keys:create"),
        {"key": ns + "x", "key_encoding": "utf-8", "value": "", "value_encoding": "utf-8"},
    )
    assert response.status_code == 403
    assert etcd.client().get(ns + "x").kv is None
    body = client.get(reverse("keys:create")).content.decode()
    assert 'name="csrfmiddlewaretoken"' in body


@pytest.fixture
def dead_cluster(settings: Settings):  # type: ignore[no-untyped-def]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    settings.CONSOLE_ETCD_ENDPOINTS = [f"127.0.0.1:{port}"]
    etcd.reset()
    etcd.client().retry_timeout = 0.3  # keep the test quick; the default retries for 5 s
    yield
    etcd.reset()


def test_cluster_down_gives_a_clear_page(client: Client, editor: User, dead_cluster: None) -> None:
    client.force_login(editor)
    token = keys.encode_key(b"/a")
    started = time.monotonic()
    for url in [reverse("keys:tree"), f"/keys/k/{token}/", f"/keys/k/{token}/history/",
                f"/keys/k/{token}/edit/", reverse("keys:export"),
                reverse("keys:delete_folder") + f"?p={token}"]:  # fmt: skip
        response = client.get(url)
        assert response.status_code == 503, url
        body = response.content.decode()
        assert "The cluster did not answer" in body and "Cluster unreachable." in body
    response = client.post(
        f"/keys/k/{token}/edit/", {"value": "x", "value_encoding": "utf-8", "seen": "3"}
    )
    assert response.status_code == 503
    # pages that do not need the cluster still render, with the error in the header
    response = client.get(reverse("index"))
    assert response.status_code == 200 and "Cluster unreachable." in response.content.decode()
    assert time.monotonic() - started < 10
