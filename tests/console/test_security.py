"""Console hardening: production settings pass `check --deploy`, login and token attempts are
bounded, HSTS and secure cookies under HTTPS."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from pytest_django import Settings
from rest_framework.test import APIClient

from tests.e2e.procs import ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()  # failure counts and throttles live in the cache
    yield
    cache.clear()


def test_production_settings_pass_check_deploy() -> None:
    env = {
        **os.environ,
        "CONSOLE_SECRET_KEY": secrets.token_urlsafe(50),
        "CONSOLE_DEBUG": "0",
        "CONSOLE_HTTPS": "1",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_failed_logins_are_bounded_per_user_and_address(
    client: Client, editor: User, settings: Settings
) -> None:
    settings.CONSOLE_LOGIN_ATTEMPTS = 3
    login = reverse("login")
    for _ in range(3):
        assert client.post(login, {"username": "ed", "password": "wrong"}).status_code == 200
    # even the right password is refused until the window passes
    refused = client.post(login, {"username": "ed", "password": "ed-pass-123"})
    assert refused.status_code == 429
    assert b"Too many failed logins" in refused.content
    # another user name is not affected
    assert client.post(login, {"username": "vera", "password": "x"}).status_code == 200
    cache.clear()  # the window passed
    ok = client.post(login, {"username": "ed", "password": "ed-pass-123"})
    assert ok.status_code == 302


def test_the_token_endpoint_is_throttled(editor: User) -> None:
    api = APIClient()
    url = reverse("api-token")
    codes = [
        api.post(url, {"username": "ed", "password": "wrong"}, format="json").status_code
        for _ in range(12)
    ]
    assert codes[:10] == [400] * 10
    assert codes[10:] == [429, 429]


def test_https_settings_send_hsts_and_secure_cookies(
    client: Client, editor: User, settings: Settings
) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    response = client.post(
        reverse("login"), {"username": "ed", "password": "ed-pass-123"}, secure=True
    )
    assert response.status_code == 302
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["secure"] and session["httponly"]
    page = client.get(reverse("login"), secure=True)
    assert page["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in page["Content-Security-Policy"]
