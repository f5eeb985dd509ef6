"""REST API: authentication (token, session), roles, leases, cluster endpoints, schema and docs."""

from __future__ import annotations

import io
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from pytest_django import Settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from console import etcd, keys
from console.api.codec import KEY_ID_PATTERN

pytestmark = pytest.mark.django_db

KEY = f"/api/v1/keys/{keys.encode_key(b'/api-access/k')}/"


@pytest.fixture(autouse=True)
def fast_passwords(settings: Settings) -> None:
    """Cheap password hashing: the user fixtures would spend 0.3 s per test on PBKDF2."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def token_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def api(editor: User) -> APIClient:
    return token_client(editor)


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.content
    body: dict[str, Any] = resp.json()
    assert set(body) >= {"error", "etcd_error", "code"}
    return body


# --- authentication -------------------------------------------------------------------------


def test_anonymous_gets_401(console_cluster: list[str]) -> None:
    anon = APIClient()
    for resp in (
        anon.get("/api/v1/keys/"),
        anon.get(KEY),
        anon.put(KEY, {"value": "x"}, format="json"),
        anon.delete(KEY),
        anon.get("/api/v1/leases/"),
        anon.get("/api/v1/cluster/members/"),
        anon.get("/api/v1/me/"),
    ):
        body = error(resp, 401)
        assert "credentials were not provided" in body["error"]
        assert resp["WWW-Authenticate"] == "Token"
    assert error(APIClient(HTTP_AUTHORIZATION="Token nope").get("/api/v1/me/"), 401)


def test_token_endpoint(console_cluster: list[str], editor: User) -> None:
    anon = APIClient()
    resp = anon.post(
        "/api/v1/auth/token/", {"username": "ed", "password": "ed-pass-123"}, format="json"
    )
    assert resp.status_code == 200
    token = resp.json()["token"]
    assert token == Token.objects.get(user=editor).key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/me/").json() == {"username": "ed", "can_edit": True}
    bad = anon.post("/api/v1/auth/token/", {"username": "ed", "password": "wrong"}, format="json")
    assert "Unable to log in" in error(bad, 400)["error"]


def test_drf_create_token_command(console_cluster: list[str], viewer: User) -> None:
    out = io.StringIO()
    call_command("drf_create_token", "vera", stdout=out)
    token = Token.objects.get(user=viewer).key
    assert token in out.getvalue()
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/me/").json() == {"username": "vera", "can_edit": False}


def test_session_auth_reads_and_writes_with_csrf(
    console_cluster: list[str], editor: User, ns: str
) -> None:
    client = APIClient(enforce_csrf_checks=True)
    csrf = client.get("/login/").cookies["csrftoken"].value
    login = {"username": "ed", "password": "ed-pass-123", "csrfmiddlewaretoken": csrf}
    assert client.post("/login/", login).status_code == 302
    url = f"/api/v1/keys/{keys.encode_key(f'{ns}s'.encode())}/"
    assert client.get("/api/v1/me/").json()["username"] == "ed"
    assert "CSRF" in error(client.put(url, {"value": "x"}, format="json"), 403)["error"]
    csrf = client.cookies["csrftoken"].value  # rotated at login
    resp = client.put(url, {"value": "x"}, format="json", headers={"X-CSRFToken": csrf})
    assert resp.status_code == 201, resp.content
    assert client.get(url).json()["value"] == "x"


# --- roles ----------------------------------------------------------------------------------


def test_viewer_reads_but_cannot_write(console_cluster: list[str], viewer: User, ns: str) -> None:
    etcd.client().put(f"{ns}r", "v")
    url = f"/api/v1/keys/{keys.encode_key(f'{ns}r'.encode())}/"
    client = token_client(viewer)
    assert client.get(url).json()["value"] == "v"
    assert client.get(url + "history/").status_code == 200
    assert client.get("/api/v1/keys/", {"prefix": ns}).status_code == 200
    assert client.get("/api/v1/leases/").status_code == 200
    assert client.get("/api/v1/cluster/status/").status_code == 200
    for resp in (
        client.put(url, {"value": "x"}, format="json"),
        client.delete(url),
        client.delete(url + "?prefix=true"),
        client.post("/api/v1/leases/", {"ttl": 10}, format="json"),
        client.delete("/api/v1/leases/123/"),
    ):
        assert "editors only" in error(resp, 403)["error"]
    assert etcd.client().get(f"{ns}r").value == b"v"


def test_user_without_group_reads_and_superuser_writes(console_cluster: list[str], ns: str) -> None:
    plain = User.objects.create_user("plain", password="plain-pass-123")
    boss = User.objects.create_superuser("boss", password="boss-pass-123")
    url = f"/api/v1/keys/{keys.encode_key(f'{ns}g'.encode())}/"
    assert token_client(plain).get("/api/v1/me/").json()["can_edit"] is False
    assert error(token_client(plain).put(url, {"value": "x"}, format="json"), 403)
    assert token_client(boss).put(url, {"value": "x"}, format="json").status_code == 201


# --- leases ---------------------------------------------------------------------------------


def test_lease_lifecycle(api: APIClient, console_cluster: list[str], ns: str) -> None:
    resp = api.post("/api/v1/leases/", {"ttl": 120}, format="json")
    assert resp.status_code == 201
    lease = resp.json()
    assert lease["ttl"] == lease["granted_ttl"] == 120 and lease["id_hex"] == f"{lease['id']:x}"
    assert resp["Location"] == f"/api/v1/leases/{lease['id']}/"
    etcd.client().put(f"{ns}l", "v", lease=lease["id"])

    listed = {item["id"]: item for item in api.get("/api/v1/leases/").json()["items"]}
    assert 0 < listed[lease["id"]]["ttl"] <= 120
    detail = api.get(f"/api/v1/leases/{lease['id']}/").json()
    assert detail["granted_ttl"] == 120 and "keys" not in detail
    assert api.get(f"/api/v1/leases/0x{lease['id_hex']}/").json()["id"] == lease["id"]
    detail = api.get(f"/api/v1/leases/{lease['id']}/?keys=true").json()
    assert detail["keys"] == [
        {"key": f"{ns}l", "key_encoding": "utf-8", "key_id": keys.encode_key(f"{ns}l".encode())}
    ]

    chosen = api.post("/api/v1/leases/", {"ttl": 30, "id": lease["id"] + 1}, format="json")
    assert chosen.status_code == 201 and chosen.json()["id"] == lease["id"] + 1
    dup = api.post("/api/v1/leases/", {"ttl": 30, "id": lease["id"] + 1}, format="json")
    assert error(dup, 409)["etcd_error"] == "etcdserver: lease already exists"

    resp = api.delete(f"/api/v1/leases/{lease['id']}/")
    assert resp.status_code == 200 and resp.json()["revoked"] == lease["id"]
    assert etcd.client().get(f"{ns}l").kv is None  # revoking deleted the key
    body = error(api.delete(f"/api/v1/leases/{lease['id']}/"), 404)
    assert body["code"] == "NOT_FOUND" and "lease not found" in body["etcd_error"]
    assert "not found" in error(api.get(f"/api/v1/leases/{lease['id']}/"), 404)["error"]
    api.delete(f"/api/v1/leases/{lease['id'] + 1}/")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": "ten"}, "ttl"),
        ({"ttl": 10**10}, "ttl"),
        ({"ttl": 5, "id": -1}, "id"),
        ({"ttl": 5, "id": 2**63}, "id"),
    ],
)
def test_lease_grant_bad_input(
    api: APIClient, console_cluster: list[str], body: Any, field: str
) -> None:
    body = error(api.post("/api/v1/leases/", body, format="json"), 400)
    assert body["error"].startswith(f"{field}: ") and field in body["fields"]


# --- cluster --------------------------------------------------------------------------------


def test_members_and_status(api: APIClient, console_cluster: list[str]) -> None:
    members = api.get("/api/v1/cluster/members/").json()["items"]
    assert len(members) == 1
    member = members[0]
    assert member["client_urls"] and member["id_hex"] == f"{member['id']:x}"
    status = api.get(f"/api/v1/cluster/members/{member['id']}/status/").json()
    assert status["member_id"] == member["id"] and status["leader"] == member["id"]
    assert status["is_leader"] is True and status["db_size"] > 0
    assert status["raft_term"] >= 1 and status["raft_index"] >= status["raft_applied_index"] > 0
    assert status["errors"] == []
    by_hex = api.get(f"/api/v1/cluster/members/0x{member['id_hex']}/status/").json()
    assert by_hex["member_id"] == member["id"]
    everything = api.get("/api/v1/cluster/status/").json()["items"]
    assert everything[0]["status"]["member_id"] == member["id"] and everything[0]["error"] is None
    assert "no member" in error(api.get("/api/v1/cluster/members/12345/status/"), 404)["error"]
    assert error(api.get("/api/v1/cluster/members/xyz/status/"), 400)


def test_cluster_on_real_etcd(api: APIClient, console_etcd: list[str]) -> None:
    member = api.get("/api/v1/cluster/members/").json()["items"][0]
    status = api.get(f"/api/v1/cluster/members/{member['id']}/status/").json()
    assert status["version"].startswith("3.") and status["is_leader"] is True


# --- schema and docs ------------------------------------------------------------------------


def test_schema_and_docs(console_cluster: list[str]) -> None:
    anon = APIClient()
    resp = anon.get("/api/v1/schema/")
    assert resp.status_code == 200
    schema = yaml.safe_load(resp.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {
        "/api/v1/keys/",
        "/api/v1/keys/{key_id}/",
        "/api/v1/keys/{key_id}/history/",
        "/api/v1/tree/",
        "/api/v1/leases/",
        "/api/v1/leases/{lease_id}/",
        "/api/v1/cluster/members/",
        "/api/v1/cluster/members/{member_id}/status/",
        "/api/v1/cluster/status/",
        "/api/v1/me/",
        "/api/v1/auth/token/",
    } == paths
    key_id = next(
        p
        for p in schema["paths"]["/api/v1/keys/{key_id}/"]["get"]["parameters"]
        if p["name"] == "key_id"
    )
    assert key_id["schema"]["pattern"] == KEY_ID_PATTERN and "base64url" in key_id["description"]
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])
    docs = anon.get("/api/v1/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert "cdn.jsdelivr.net" in docs["Content-Security-Policy"]
