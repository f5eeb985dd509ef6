"""Export a prefix to JSON and import it back: dry run (create / change / delete), apply."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from console import etcd, keys

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def import_dir(settings: Settings, tmp_path: Path) -> Path:
    settings.CONSOLE_IMPORT_DIR = tmp_path / "imports"
    return settings.CONSOLE_IMPORT_DIR


def export(client: Client, prefix: bytes) -> dict:
    response = client.get(reverse("keys:export"), {"p": keys.encode_key(prefix)})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="etcd-export-')
    return json.loads(b"".join(response.streaming_content))


def upload(client: Client, doc: dict | bytes, **fields: str) -> str:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    f = io.BytesIO(data)
    f.name = "export.json"
    response = client.post(reverse("keys:import"), {"file": f, **fields})
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def apply(client: Client, body: str) -> object:
    token = re.search(r'name="token" value="([0-9a-f]+)"', body).group(1)
    return client.post(reverse("keys:import_apply"), {"token": token})


def test_export_encodings_and_no_leases(
    client: Client, viewer: User, console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    c = etcd.client()
    c.put(p + b"a", b"text \xc3\xa9")
    c.put(p + b"bin\xff", b"\xff\x01")
    keys.create_key(p + b"leased", b"l", ttl=300)
    client.force_login(viewer)
    doc = export(client, p)
    assert doc["format"] == keys.EXPORT_FORMAT and doc["prefix"] == ns and doc["revision"] > 0
    assert doc["keys"] == [
        {"key": ns + "a", "key_encoding": "utf-8", "value": "text é", "value_encoding": "utf-8"},
        {"key": base64.b64encode(p + b"bin\xff").decode(), "key_encoding": "base64",
         "value": "/wE=", "value_encoding": "base64"},
        {"key": ns + "leased", "key_encoding": "utf-8", "value": "l", "value_encoding": "utf-8"},
    ]  # fmt: skip
    assert keys.export_document(p)["keys"] == doc["keys"]


def test_import_dry_run_then_apply(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    c = etcd.client()
    for name, value in [
        (b"same", b"1"),
        (b"changed", b"old"),
        (b"extra", b"x"),
        (b"bin\xfe", b"\xff"),
    ]:
        c.put(p + name, value)
    client.force_login(editor)
    doc = export(client, p)
    c.delete(p + b"bin\xfe")  # will be created again
    c.put(p + b"changed", b"new")  # will be changed back
    c.put(p + b"added", b"a")  # not in the file: deleted only with "replace"

    body = upload(client, doc)
    assert re.search(r'id="plan-create".*?bin\\xfe', body, re.S)
    assert re.search(r'id="plan-change".*?changed', body, re.S)
    assert 'id="plan-delete"' not in body
    assert "2 keys already hold" in body  # "same" and "extra"
    assert c.get(p + b"bin\xfe").kv is None  # a dry run writes nothing

    response = apply(client, body)
    assert response.status_code == 302
    assert c.get(p + b"bin\xfe").kv.value == b"\xff"
    assert c.get(p + b"changed").kv.value == b"old"
    assert c.get(p + b"added").kv is not None

    # replace: keys not in the file are deleted
    body = upload(client, doc, replace="on")
    assert re.search(r'id="plan-delete".*?added', body, re.S)
    assert apply(client, body).status_code == 302
    assert c.get(p + b"added").kv is None
    # a plan is used once, and only by the session that made it
    assert apply(client, body).status_code == 404
    c.put(p + b"same", b"changed")
    other = Client()
    other.force_login(editor)
    body = upload(client, doc)
    assert apply(other, body).status_code == 404
    assert apply(client, body).status_code == 302


def test_import_into_another_prefix(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    etcd.client().put(p + b"src/a/b", b"1")
    client.force_login(editor)
    doc = export(client, p + b"src/")
    body = upload(client, doc, target_prefix=ns + "copy/")
    assert apply(client, body).status_code == 302
    assert etcd.client().get(p + b"copy/a/b").kv.value == b"1"


def test_import_stops_on_changes_since_dry_run(
    client: Client, editor: User, console_cluster: list[str], ns: str
) -> None:
    p = ns.encode()
    c = etcd.client()
    c.put(p + b"k", b"1")
    client.force_login(editor)
    doc = export(client, p)
    doc["keys"][0]["value"] = "2"
    doc["keys"].append({"key": ns + "new", "value": "n"})
    body = upload(client, doc)
    c.put(p + b"k", b"someone else")
    response = apply(client, body)
    assert response.status_code == 409
    assert "changed since the dry run" in response.content.decode()
    assert c.get(p + b"k").kv.value == b"someone else" and c.get(p + b"new").kv is None


def _doc(prefix: str, items: list[dict[str, str]]) -> bytes:
    return json.dumps({"format": keys.EXPORT_FORMAT, "prefix": prefix, "keys": items}).encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"format": "other"}', "not an export document"),
        (_doc("/a/", [{"key": "/b", "value": ""}]), "outside the prefix"),
        (_doc("", [{"key": "k", "value": "!", "value_encoding": "base64"}]), "invalid base64"),
        (_doc("", [{"key": "k", "value": ""}, {"key": "k", "value": ""}]), "duplicate key"),
    ],
)
def test_import_rejects_bad_files(
    client: Client, editor: User, console_cluster: list[str], content: bytes, message: str
) -> None:
    client.force_login(editor)
    body = upload(client, content)
    assert message in body and 'id="apply"' not in body


def test_plan_round_trips_through_json(console_cluster: list[str], ns: str) -> None:
    doc = keys.ExportDocument(ns.encode(), [(ns.encode() + b"\xff", b"\x00")])
    plan = keys.plan_import(doc)
    assert keys.ImportPlan.from_json(plan.to_json()) == plan
    assert keys.apply_import(plan).applied == 1
