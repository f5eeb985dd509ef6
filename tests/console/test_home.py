import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

pytestmark = pytest.mark.django_db

ENDPOINTS = ["127.0.0.1:12379", "127.0.0.1:22379"]


@pytest.fixture
def user() -> User:
    return User.objects.create_user(username="alice", password="s3cret-pass")


def test_anonymous_is_redirected_to_login(client: Client) -> None:
    response = client.get(reverse("index"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_renders(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b'name="password"' in response.content


def test_logged_in_user_sees_endpoints(client: Client, user: User, settings: Settings) -> None:
    settings.CONSOLE_ETCD_ENDPOINTS = ENDPOINTS
    assert client.login(username="alice", password="s3cret-pass")
    response = client.get(reverse("index"))
    assert response.status_code == 200
    body = response.content.decode()
    for endpoint in ENDPOINTS:
        assert endpoint in body
    for page in ("/keys/", "/watch/", "/services/", "/cluster/"):
        assert f'href="{page}"' in body


def test_login_form_logs_in_and_logout_works(client: Client, user: User) -> None:
    response = client.post(
        reverse("login"), {"username": "alice", "password": "s3cret-pass"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("index")
    assert response.context["user"].is_authenticated
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("index")).status_code == 302


def test_healthz(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def run_ensure_admin() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_ensure_admin_creates_admin_and_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_ADMIN_PASSWORD", "admin-pass-123")
    out = run_ensure_admin()
    assert "created superuser 'admin'" in out
    assert "admin-pass-123" not in out
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password("admin-pass-123")

    monkeypatch.setenv("CONSOLE_ADMIN_PASSWORD", "another-password")
    assert "already exists" in run_ensure_admin()
    assert get_user_model().objects.filter(username="admin").count() == 1
    admin.refresh_from_db()
    assert admin.check_password("admin-pass-123")


def test_ensure_admin_generates_and_prints_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSOLE_ADMIN_PASSWORD", raising=False)
    out = run_ensure_admin()
    password = out.split("password: ", 1)[1].split()[0]
    assert get_user_model().objects.get(username="admin").check_password(password)
