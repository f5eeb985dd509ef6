"""The key pages against a real etcd (Debian's etcd-server), not only against our cluster."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from cluster.client import Op
from console import etcd, keys

pytestmark = [pytest.mark.django_db, pytest.mark.etcd_server]


def test_key_pages_against_real_etcd(
    client: Client,
    editor: User,
    console_etcd: list[str],
    ns: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    settings.CONSOLE_IMPORT_DIR = tmp_path
    p = ns.encode()
    c = etcd.client()
    for i in range(0, 300, 100):
        c.txn(success=[Op.put(p + b"many/%04d" % j, b"v") for j in range(i, i + 100)])
    c.put(p + b"cfg.json", b'{"a": 1}')
    client.force_login(editor)

    body = client.get(reverse("keys:tree"), {"p": keys.encode_key(p)}).content.decode()
    assert "many/" in body and ">300<" in body and "cfg.json" in body
    assert re.search(r'class="cluster-id">[0-9a-f]+<', body)
    body = client.get(reverse("keys:tree"), {"p": keys.encode_key(p + b"many/")}).content.decode()
    assert 'id="next-page"' in body

    key = p + b"cfg.json"
    detail = client.get(reverse("keys:detail", args=[key])).content.decode()
    assert "fmt-json" in detail
    seen = c.get(key).kv.mod_revision
    c.put(key, b'{"a": 2}')
    response = client.post(
        reverse("keys:edit", args=[key]),
        {"value": '{"a": 3}', "value_encoding": "utf-8", "seen": seen},
    )
    assert response.status_code == 409
    current = c.get(key).kv.mod_revision
    response = client.post(
        reverse("keys:edit", args=[key]),
        {"value": '{"a": 3}', "value_encoding": "utf-8", "seen": current},
    )
    assert response.status_code == 302

    history = client.get(reverse("keys:history", args=[key])).content.decode()
    revs = [int(r) for r in re.findall(r'class="version-link">(\d+)<', history)]
    assert len(revs) == 3
    diff = client.get(
        reverse("keys:diff", args=[key]), {"a": revs[2], "b": revs[0]}
    ).content.decode()
    assert "d-add" in diff
    assert (
        client.post(
            reverse("keys:restore", args=[key]), {"rev": revs[2], "seen": revs[0]}
        ).status_code
        == 302
    )
    assert c.get(key).kv.value == b'{"a": 1}'

    keys.create_key(p + b"ttl", b"x", ttl=60)
    detail = client.get(reverse("keys:detail", args=[p + b"ttl"])).content.decode()
    assert 'id="lease-data"' in detail and "s left" in detail

    exported = client.get(reverse("keys:export"), {"p": keys.encode_key(p)})
    doc = json.loads(b"".join(exported.streaming_content))
    assert len(doc["keys"]) == 302
    f = io.BytesIO(json.dumps(doc).encode())
    f.name = "e.json"
    body = client.post(
        reverse("keys:import"), {"file": f, "target_prefix": ns + "copy/"}
    ).content.decode()
    assert "302 created" in body
    token = re.search(r'name="token" value="([0-9a-f]+)"', body).group(1)
    assert client.post(reverse("keys:import_apply"), {"token": token}).status_code == 302
    assert keys.count_prefix(p + b"copy/") == 302

    page = client.get(
        reverse("keys:delete_folder"), {"p": keys.encode_key(p + b"copy/")}
    ).content.decode()
    seen_rev = re.search(r'name="seen" value="(\d+)"', page).group(1)
    response = client.post(
        reverse("keys:delete_folder"), {"p": keys.encode_key(p + b"copy/"), "seen": seen_rev}
    )
    assert response.status_code == 302 and keys.count_prefix(p + b"copy/") == 0
