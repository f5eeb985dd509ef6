"""REST API key endpoints (/api/v1/keys/, /api/v1/tree/) against our cluster and a real etcd."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django import Settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from cluster.client import Client
from console import etcd, keys

pytestmark = pytest.mark.django_db

WEIRD_KEYS = [
    b"..",
    b".",
    b"%2F",
    b"a b",
    b"a/../b",
    b"?x=1&y=#z",
    b"\xff\xfe\x00\x01",
    "ünïcödé/ключ".encode(),
    b"/",
    b"//double//",
    b"+/=",
    b"\\",
]


def url(key: bytes | str, suffix: str = "") -> str:
    raw = key.encode() if isinstance(key, str) else key
    return f"/api/v1/keys/{keys.encode_key(raw)}/{suffix}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def put(api: APIClient, key: bytes | str, value: str, **extra: Any) -> Any:
    headers = extra.pop("headers", {})
    return api.put(url(key), {"value": value, **extra}, format="json", headers=headers)


def assert_error(resp: Any, status: int, fragment: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.content
    body: dict[str, Any] = resp.json()
    assert {"error", "etcd_error", "code"} <= set(body)
    assert fragment.lower() in body["error"].lower(), body
    return body


@pytest.fixture(autouse=True)
def fast_passwords(settings: Settings) -> None:
    """Cheap password hashing: the user fixtures would spend 0.3 s per test on PBKDF2."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def api(editor: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=editor).key}")
    return client


def key_scenario(api: APIClient, ns: str) -> None:
    """Put, get, CAS, create-only, list, history, delete: the same against any server."""
    k = f"{ns}cfg/a"
    r = put(api, k, "v1")
    assert r.status_code == 201, r.content
    first = r.json()
    assert first["created"] is True and first["value"] == "v1" and first["version"] == 1
    assert r["ETag"] == f'"{first["mod_revision"]}"'
    assert r["Location"] == url(k)

    r = put(api, k, "v2")
    assert r.status_code == 200 and r.json()["created"] is False and r.json()["version"] == 2
    v2 = r.json()["mod_revision"]

    r = api.get(url(k))
    assert r.status_code == 200
    body = r.json()
    assert (
        body["value"] == "v2" and body["key"] == k and body["key_id"] == keys.encode_key(k.encode())
    )
    assert body["revision"] >= v2 and r["ETag"] == f'"{v2}"'
    assert api.get(url(k), {"revision": first["mod_revision"]}).json()["value"] == "v1"

    # compare-and-swap: stale If-Match is 412 with the current mod revision
    r = put(api, k, "v3", headers={"If-Match": str(first["mod_revision"])})
    assert assert_error(r, 412, "precondition failed")["mod_revision"] == v2
    r = put(api, k, "v3", headers={"If-Match": f'"{v2}"'})
    assert r.status_code == 200 and r.json()["value"] == "v3"
    v3 = r.json()["mod_revision"]

    # create-only
    assert assert_error(put(api, k, "x", headers={"If-None-Match": "*"}), 412)["mod_revision"] == v3
    r = put(api, f"{ns}cfg/b", "b", headers={"If-None-Match": "*"})
    assert r.status_code == 201
    put(api, f"{ns}other", "o")

    # history: newest first, every version of this life
    r = api.get(url(k, "history/"))
    hist = r.json()
    assert r.status_code == 200 and hist["complete"] is True
    assert [v["value"] for v in hist["items"]] == ["v3", "v2", "v1"]
    assert [v["version"] for v in hist["items"]] == [3, 2, 1]

    # listing by prefix, with and without values
    r = api.get("/api/v1/keys/", {"prefix": f"{ns}cfg/"})
    listing = r.json()
    assert [i["key"] for i in listing["items"]] == [f"{ns}cfg/a", f"{ns}cfg/b"]
    assert listing["count"] == 2 and listing["more"] is False and listing["next"] is None
    r = api.get("/api/v1/keys/", {"prefix": ns, "keys_only": "true"})
    assert [i["key"] for i in r.json()["items"]] == [k, f"{ns}cfg/b", f"{ns}other"]
    assert "value" not in r.json()["items"][0]

    # delete with a stale If-Match, then for real; then a prefix delete
    assert assert_error(api.delete(url(k), headers={"If-Match": str(v2)}), 412)
    assert api.delete(url(k), headers={"If-Match": str(v3)}).json()["deleted"] == 1
    assert_error(api.get(url(k)), 404, "key not found")
    assert_error(api.delete(url(k)), 404)
    r = api.delete(url(ns) + "?prefix=true")
    assert r.status_code == 200 and r.json() == {"deleted": 2}
    assert api.get("/api/v1/keys/", {"prefix": ns}).json()["items"] == []


def test_key_endpoints_on_our_cluster(api: APIClient, console_cluster: list[str], ns: str) -> None:
    key_scenario(api, ns)


def test_key_endpoints_on_real_etcd(api: APIClient, console_etcd: list[str], ns: str) -> None:
    key_scenario(api, ns)


@pytest.mark.parametrize("raw", WEIRD_KEYS, ids=lambda k: keys.encode_key(k))
def test_weird_keys_round_trip(
    api: APIClient, console_cluster: list[str], ns: str, raw: bytes
) -> None:
    value = b"\x00\xffbinary\x80"
    for key in (raw, ns.encode() + raw):
        r = put(api, key, b64(value), encoding="base64")
        assert r.status_code in (200, 201), r.content
        got = api.get(url(key), {"encoding": "base64"}).json()
        assert base64.b64decode(got["key"]) == key and base64.b64decode(got["value"]) == value
        assert got["key_id"] == keys.encode_key(key)
        listed = api.get("/api/v1/keys/", {"prefix_id": keys.encode_key(key)}).json()["items"]
        assert keys.encode_key(key) in [i["key_id"] for i in listed]
        assert api.delete(url(key)).json()["deleted"] == 1
        assert api.get(url(key)).status_code == 404


def test_values_text_and_base64(api: APIClient, console_cluster: list[str], ns: str) -> None:
    for value in ["", "  spaced  ", "nul\x00inside", "ünï 🚀", "\n"]:
        assert put(api, f"{ns}t", value).status_code in (200, 201)
        got = api.get(url(f"{ns}t")).json()
        assert (got["value"], got["encoding"]) == (value, "utf-8")
    put(api, f"{ns}bin", b64(b"\xff\x00"), encoding="base64")
    got = api.get(url(f"{ns}bin")).json()
    assert got["encoding"] == "base64" and base64.b64decode(got["value"]) == b"\xff\x00"
    got = api.get(url(f"{ns}t"), {"encoding": "base64"}).json()
    assert (got["value"], got["encoding"], got["key_encoding"]) == (b64(b"\n"), "base64", "base64")


def test_paging_with_cursor_at_one_revision(
    api: APIClient, console_cluster: list[str], ns: str
) -> None:
    c = etcd.client()
    names = [f"{ns}k{i:02d}" for i in range(25)]
    for name in names:
        c.put(name, "x")
    first = api.get("/api/v1/keys/", {"prefix": ns, "limit": 10}).json()
    assert first["count"] == 25 and first["more"] is True and len(first["items"]) == 10
    c.put(f"{ns}k99", "late")  # not in the pages read at the first page's revision
    seen, page = [], first
    while True:
        seen += [i["key"] for i in page["items"]]
        if not page["next"]:
            break
        params = {
            "prefix": ns,
            "limit": 10,
            "start_after": page["next"],
            "revision": first["revision"],
        }
        page = api.get("/api/v1/keys/", params).json()
        assert page["revision"] == first["revision"]
    assert seen == names
    last = api.get(
        "/api/v1/keys/", {"prefix": ns, "start_after": keys.encode_key(names[-1].encode())}
    )
    assert [i["key"] for i in last.json()["items"]] == [f"{ns}k99"]
    past = api.get("/api/v1/keys/", {"prefix": ns, "start_after": keys.encode_key(b"\xff")})
    assert past.json()["items"] == [] and past.json()["more"] is False


def test_leases_on_keys(api: APIClient, console_cluster: list[str], ns: str) -> None:
    lease = api.post("/api/v1/leases/", {"ttl": 60}, format="json").json()["id"]
    k = f"{ns}leased"
    assert put(api, k, "a", lease=lease).json()["lease"] == lease
    assert put(api, k, "b").json()["lease"] == lease  # kept without lease/ttl
    assert put(api, k, "c", lease=0).json()["lease"] == 0  # detached
    r = put(api, k, "d", ttl=30)
    new_lease = r.json()["lease"]
    assert new_lease not in (0, lease)
    detail = api.get(f"/api/v1/leases/{new_lease}/", {"keys": "true"}).json()
    assert [x["key"] for x in detail["keys"]] == [k] and 0 < detail["ttl"] <= 30
    body = assert_error(put(api, k, "e", lease=lease + 12345), 400, "lease")
    assert body["etcd_error"] and "lease not found" in body["etcd_error"]
    assert_error(put(api, k, "e", lease=lease, ttl=5), 400, "either lease or ttl")
    r = put(api, f"{ns}cas", "x", lease=lease, headers={"If-None-Match": "*"})
    assert r.status_code == 201
    assert_error(put(api, f"{ns}cas", "y", lease=lease, headers={"If-None-Match": "*"}), 412)
    assert_error(put(api, f"{ns}cas", "y", lease=0, headers={"If-Match": "1"}), 412)
    assert_error(put(api, f"{ns}none", "y", headers={"If-Match": "*"}), 412)
    assert put(api, f"{ns}cas", "z", headers={"If-Match": "*"}).status_code == 200


def test_history_and_compaction(api: APIClient, console_cluster: list[str], ns: str) -> None:
    c = etcd.client()
    k = f"{ns}h"
    revs = [c.put(k, f"v{i}").revision for i in range(5)]
    hist = api.get(url(k, "history/"), {"limit": 3}).json()
    assert [v["mod_revision"] for v in hist["items"]] == revs[::-1][:3]
    assert hist["truncated"] is True and hist["complete"] is False
    c.compact(revs[2])
    hist = api.get(url(k, "history/")).json()
    assert hist["compacted"] is True and [v["value"] for v in hist["items"]] == ["v4", "v3", "v2"]
    body = assert_error(api.get(url(k), {"revision": revs[0]}), 410, "compacted")
    assert body["code"] == "OUT_OF_RANGE" and "compacted" in body["etcd_error"]
    body = assert_error(api.get(url(k), {"revision": revs[-1] + 10**6}), 400)
    assert "future revision" in body["etcd_error"]
    assert_error(api.get(url(f"{ns}missing", "history/")), 404)


def test_tree(api: APIClient, console_cluster: list[str], ns: str) -> None:
    c = etcd.client()
    for name in ["a/1", "a/2", "b", "c/x/y"]:
        c.put(f"{ns}{name}", "v")
    r = api.get("/api/v1/tree/", {"prefix": ns, "limit": 2})
    page = r.json()
    assert [(i["label"], i["is_folder"], i["count"]) for i in page["items"]] == [
        ("a/", True, 2),
        ("b", False, None),
    ]
    assert page["folder"]["key"] == ns and page["items"][1]["kv"]["version"] == 1
    rest = api.get("/api/v1/tree/", {"prefix": ns, "after": page["next"]}).json()
    assert [i["label"] for i in rest["items"]] == ["c/"] and rest["next"] is None


def big(n: int) -> str:
    return "x" * n


BAD_REQUESTS: list[tuple[str, str, Any, dict[str, str], str]] = [
    ("get", "/api/v1/keys/a+b/", None, {}, "base64url"),
    ("get", "/api/v1/keys/QR/", None, {}, "canonical"),
    ("get", "/api/v1/keys/QQ==/", None, {}, "base64url"),
    ("put", "/api/v1/keys//", {"value": "x"}, {}, "empty"),
    ("get", "/api/v1/keys/YQ/?revision=abc", None, {}, "revision"),
    ("get", "/api/v1/keys/YQ/?revision=-1", None, {}, "revision"),
    ("get", "/api/v1/keys/YQ/?revision=1.5", None, {}, "revision"),
    ("get", "/api/v1/keys/YQ/?revision=99999999999999999999", None, {}, "revision"),
    ("get", "/api/v1/keys/YQ/?encoding=latin1", None, {}, "encoding"),
    ("get", "/api/v1/keys/?limit=0", None, {}, "limit"),
    ("get", "/api/v1/keys/?limit=5000", None, {}, "limit"),
    ("get", "/api/v1/keys/?keys_only=maybe", None, {}, "keys_only"),
    ("get", "/api/v1/keys/?start_after=!!", None, {}, "start_after"),
    ("get", "/api/v1/keys/?prefix_id=a+b", None, {}, "prefix_id"),
    ("put", "/api/v1/keys/YQ/", {"value": big(1536 * 1024)}, {}, "1.5 MiB"),
    ("put", "/api/v1/keys/YQ/", {"value": "!!", "encoding": "base64"}, {}, "base64"),
    ("put", "/api/v1/keys/YQ/", {"value": "x", "encoding": "latin1"}, {}, "encoding"),
    ("put", "/api/v1/keys/YQ/", {"value": None}, {}, "value"),
    ("put", "/api/v1/keys/YQ/", {}, {}, "value"),
    ("put", "/api/v1/keys/YQ/", ["x"], {}, "dictionary"),
    ("put", "/api/v1/keys/YQ/", {"value": "x", "ttl": 0}, {}, "ttl"),
    ("put", "/api/v1/keys/YQ/", {"value": "x", "lease": -1}, {}, "lease"),
    ("put", "/api/v1/keys/YQ/", {"value": "x", "lease": 2**63}, {}, "lease"),
    ("put", "/api/v1/keys/YQ/", {"value": "x"}, {"If-Match": "abc"}, "If-Match"),
    ("put", "/api/v1/keys/YQ/", {"value": "x"}, {"If-Match": "1, 2"}, "If-Match"),
    ("put", "/api/v1/keys/YQ/", {"value": "x"}, {"If-None-Match": "5"}, "only *"),
    ("put", "/api/v1/keys/YQ/", {"value": "x"}, {"If-None-Match": "*", "If-Match": "1"}, "either"),
    ("delete", "/api/v1/keys/YQ/?prefix=true", None, {"If-Match": "3"}, "single keys"),
    ("delete", "/api/v1/keys/YQ/", None, {"If-None-Match": "*"}, "PUT only"),
    ("get", "/api/v1/leases/abc/", None, {}, "lease id"),
    ("get", "/api/v1/leases/0/", None, {}, "lease id"),
    ("get", "/api/v1/leases/0x/", None, {}, "lease id"),
    ("get", "/api/v1/leases/0xZZ/", None, {}, "lease id"),
    ("delete", "/api/v1/leases/0x8000000000000000/", None, {}, "lease id"),
    ("get", "/api/v1/leases/99999999999999999999/", None, {}, "lease id"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "fragment"), BAD_REQUESTS)
def test_bad_input_is_400(
    api: APIClient,
    console_cluster: list[str],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    fragment: str,
) -> None:
    resp = getattr(api, method)(path, body, format="json", headers=headers)
    assert_error(resp, 400, fragment)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"value": "\xff\xfe"}', "JSON parse error"),
        (b'{"value": "\\ud800"}', "surrogate"),
        (b'{"value": ', "JSON parse error"),
        (b'{"value": "x", "ttl": 1e400}', "ttl"),
        (b'{"value": "x", "ttl": NaN}', "JSON parse error"),
    ],
)
def test_malformed_json_is_400(
    api: APIClient, console_cluster: list[str], raw: bytes, fragment: str
) -> None:
    resp = api.generic("PUT", "/api/v1/keys/YQ/", raw, content_type="application/json")
    assert_error(resp, 400, fragment)


def test_unsupported_media_type(api: APIClient, console_cluster: list[str]) -> None:
    resp = api.put("/api/v1/keys/YQ/", "value=x", content_type="application/x-www-form-urlencoded")
    assert_error(resp, 415, "unsupported media type")


def test_unreachable_cluster_is_503(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = Client("127.0.0.1:1", timeout=0.5, retry_timeout=0.2)
    monkeypatch.setattr(etcd, "client", lambda: dead)
    try:
        for resp in (api.get("/api/v1/keys/YQ/"), put(api, "a", "b"), api.get("/api/v1/leases/")):
            body = assert_error(resp, 503, "unavailable")
            assert body["code"] == "UNAVAILABLE" and body["etcd_error"]
            assert resp["Retry-After"] == "1"
    finally:
        dead.close()


def test_value_size_limit_boundary(api: APIClient, console_cluster: list[str], ns: str) -> None:
    key = f"{ns}big".encode()
    fits = 1536 * 1024 - 512 - len(key)
    r = api.put(url(key), json.dumps({"value": big(fits)}), content_type="application/json")
    assert r.status_code == 201, r.content[:300]
    assert len(api.get(url(key)).json()["value"]) == fits
    assert_error(put(api, key, big(fits + 1)), 400, "request limit")


def test_oversized_body_refused_before_parsing(api: APIClient, console_cluster: list[str]) -> None:
    body = b'{"value": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    resp = api.generic("PUT", "/api/v1/keys/YQ/", body, content_type="application/json")
    assert_error(resp, 400, "too large")


def test_unknown_api_path_is_json_404(api: APIClient, console_cluster: list[str]) -> None:
    for path in ("/api/v1/nope/", "/api/v1/keys", "/api/v1/keys/YQ/extra/"):
        assert_error(api.get(path), 404, "no API endpoint")
