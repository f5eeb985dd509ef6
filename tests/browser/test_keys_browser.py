"""The key pages in a real browser: login, tree navigation, edit with a conflict, history."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User

from cluster.client import Op
from console import etcd, keys
from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_login_and_tree_navigation(page: Any, editor_user: User, ns: str) -> None:
    c = etcd.client()
    c.txn(success=[Op.put(f"{ns}app/config/k{i:02d}", f"v{i}") for i in range(30)])
    c.put(f"{ns}app/readme", "<b>not bold</b>")
    c.put(f"{ns}app/settings.json", '{"debug": false, "hosts": ["a", "b"]}')

    page.goto(page.base + "/keys/")
    assert "/login/" in page.url
    login(page)
    assert page.locator("#cluster-summary .cluster-id").inner_text().strip()

    # jump to our folder by typing its path in the filter box, then click down
    page.fill("#id_q", ns)
    page.click("form.filter button")
    page.click("a.folder-link:has-text('app/')")
    rows = page.locator("#key-table tbody tr")
    assert [r.strip() for r in rows.locator("td:first-child").all_inner_texts()] == [
        "▸config/", "readme", "settings.json",
    ]  # fmt: skip
    assert page.locator("tr.folder td.num").first.inner_text() == "30"
    shot(page, "tree")

    page.click("a.folder-link:has-text('config/')")
    assert page.locator("a.key-link").count() == 30
    page.click(".breadcrumbs a:has-text('app/')")  # breadcrumbs lead back up
    page.click("a.key-link:has-text('settings.json')")
    assert page.locator(".badge.fmt-json").is_visible()
    assert '"hosts": [' in page.locator("pre.value-json").inner_text()
    shot(page, "detail-json")
    page.go_back()
    page.click("a.key-link:has-text('readme')")
    assert page.locator("pre.value").first.inner_text() == "<b>not bold</b>"  # shown, not rendered


def test_edit_with_a_conflict(page: Any, editor_user: User, ns: str) -> None:
    key = f"{ns}service.yaml".encode()
    c = etcd.client()
    c.put(key, b"replicas: 1\nimage: web:1\n")
    login(page)
    page.goto(page.base + f"/keys/k/{keys.encode_key(key)}/edit/")
    page.fill("#id_value", "replicas: 3\nimage: web:1\n")
    c.put(key, b"replicas: 2\nimage: web:2\n")  # someone else saves first
    page.click("#save")

    assert page.locator("#conflict").is_visible()
    assert "replicas: 2" in page.locator("body").inner_text()
    assert page.locator("table.diff tr.d-add").count() >= 1
    shot(page, "conflict")

    page.click("#edit-again")  # back to the form with my value, guarded by the new revision
    assert page.input_value("#id_value").startswith("replicas: 3")
    page.fill("#id_value", "replicas: 3\nimage: web:2\n")
    page.click("#save")
    page.wait_for_url(re.compile(r".*/keys/k/[A-Za-z0-9_-]+/$"))
    assert c.get(key).kv.value == b"replicas: 3\nimage: web:2\n"
    assert "Saved" in page.locator(".messages").inner_text()

    # a second conflict, resolved by overwriting with mine
    page.click("#edit")
    page.fill("#id_value", "replicas: 5\n")
    c.put(key, b"replicas: 4\n")
    page.click("#save")
    page.click("#overwrite")
    page.wait_for_url(re.compile(r".*/keys/k/[A-Za-z0-9_-]+/$"))
    assert c.get(key).kv.value == b"replicas: 5\n"


def test_history_diff_and_restore(page: Any, editor_user: User, ns: str) -> None:
    key = f"{ns}feature-flags".encode()
    c = etcd.client()
    for v in (b"a=1\nb=1\n", b"a=1\nb=2\n", b"a=3\nb=2\n"):
        c.put(key, v)
    keys.create_key(f"{ns}session".encode(), b"x", ttl=30)
    login(page)

    # the lease countdown ticks (our static JS runs under the CSP)
    page.goto(page.base + f"/keys/k/{keys.encode_key(f'{ns}session'.encode())}/")
    first = int(page.locator("#lease-ttl").inner_text().split()[0])
    page.wait_for_function(
        "t => parseInt(document.getElementById('lease-ttl').textContent) < t",
        arg=first,
        timeout=4000,
    )

    page.goto(page.base + f"/keys/k/{keys.encode_key(key)}/history/")
    assert page.locator("#history-table tbody tr").count() == 3
    shot(page, "history")
    page.locator("input[name=a]").nth(2).check()  # oldest
    page.locator("input[name=b]").nth(0).check()  # current
    page.click("#compare")
    assert page.locator("table.diff tr.d-del").count() == 2
    assert page.locator("table.diff tr.d-add").count() == 2
    shot(page, "diff")

    page.go_back()
    page.locator(".restore-button").last.click()  # restore the oldest version
    page.wait_for_url(re.compile(r".*/keys/k/[A-Za-z0-9_-]+/$"))
    assert "Restored" in page.locator(".messages").inner_text()
    assert c.get(key).kv.value == b"a=1\nb=1\n"
    assert page.locator("pre.value").first.inner_text() == "a=1\nb=1\n"
    shot(page, "restored")
