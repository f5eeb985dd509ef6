"""Browser tests: headless Chromium (the system's, through Playwright) against a live console.

Chromium comes from the system (``/usr/bin/chromium``, or ``$CHROMIUM``); Playwright never
downloads a browser. Tests marked ``browser`` skip when it is missing, except under CI=true
(.ci/run installs it), where a missing browser fails them. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from pytest_django import Settings
from pytest_django.live_server_helper import LiveServer

from console import etcd
from console.roles import EDITORS
from tests.client.servers import factory

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def chromium_path() -> str:
    """The system Chromium; skip (fail under CI=true) when it is missing."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = f"chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """One member of our cluster for the browser tests."""
    with factory("ours")(tmp_path_factory.mktemp("browser-cluster"), 1) as servers:
        yield servers.endpoints


@pytest.fixture
def console_cluster(settings: Settings, browser_cluster: list[str]) -> Iterator[list[str]]:
    settings.CONSOLE_ETCD_ENDPOINTS = browser_cluster
    etcd.reset()
    yield browser_cluster
    etcd.reset()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return f"/b/{request.node.name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def editor_user(transactional_db: None) -> User:
    user = User.objects.create_user(username="ed", password="ed-pass-123")
    group, _ = Group.objects.get_or_create(name=EDITORS)  # a transactional flush drops it
    user.groups.add(group)
    return user


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path (checked before any server is started)."""
    return chromium_path()


@pytest.fixture
def page(
    chromium: str,
    live_server: LiveServer,
    console_cluster: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """A Playwright page in headless system Chromium; ``page.base`` is the live server URL."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; our ORM use here is sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(10_000)
        errors: list[str] = []
        pg.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.base = live_server.url  # type: ignore[attr-defined]
        pg.console_errors = errors  # type: ignore[attr-defined]
        yield pg
        context.close()
        browser.close()
    assert errors == [], f"CSP violations or script errors in the browser: {errors}"


def login(
    page: Any, username: str = "ed", password: str = "ed-pass-123", next_url: str = "/keys/"
) -> None:
    """Log in through the login form, landing on ``next_url``."""
    page.goto(page.base + next_url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{next_url.split('?')[0]}*")


def shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
