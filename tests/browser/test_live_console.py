"""The live pages in a real browser, against a real 3-member cluster and a real daphne.

pytest-django's live_server speaks WSGI (no websockets), so the console runs here as it does in
production: ``daphne console.asgi:application`` in its own process, on a free port, with its own
SQLite file (migrated, with the ``admin`` superuser) and ``CONSOLE_ETCD_ENDPOINTS`` pointing at
a cluster of ``python -m cluster`` members (tests/e2e/procs.py). Keys are written with the real
etcdctl, instances registered with ``python -m cluster.registry``; processes are killed by PID.
Screenshots go to tests/artifacts/live-*.png.

``LIVE_STRESS_SECONDS`` (default 5) sets how long the throughput test writes 1,000 events a
second (60 for the full minute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.bench.ports import free_ports
from cluster.client import Client, Op
from tests.browser.conftest import ARTIFACTS, chromium_path
from tests.e2e.procs import ROOT, Cluster, needs_etcdctl

pytestmark = [pytest.mark.browser, needs_etcdctl]

PASSWORD = "live-admin-pass-123"
STRESS_SECONDS = float(os.environ.get("LIVE_STRESS_SECONDS", "5"))


class Console:
    """The console under daphne, in a process of its own (``restart()`` drops every socket)."""

    def __init__(self, tmp: Path, endpoints: list[str]) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "daphne.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "CONSOLE_DB_PATH": str(tmp / "console.sqlite3"),
            "CONSOLE_ETCD_ENDPOINTS": ",".join(endpoints),
            "CONSOLE_DEBUG": "1",  # static files served by the ASGI app, as `make run`
            "CONSOLE_ADMIN_PASSWORD": PASSWORD,
            "CONSOLE_ETCD_TIMEOUT": "2",
        }
        self.popen: subprocess.Popen[bytes] | None = None
        setup = (
            "import django; django.setup(); from django.core.management import call_command; "
            "call_command('migrate', verbosity=0); call_command('ensure_admin')"
        )
        subprocess.run(
            [sys.executable, "-c", setup], cwd=ROOT, env=self.env, check=True, capture_output=True
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "console.asgi:application"],
                cwd=ROOT, env=self.env, stdout=out, stderr=out,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"daphne did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three members with quick elections (50 ms heartbeats, 500 ms election timeout)."""
    chromium_path()  # skip before starting anything when there is no browser
    c = Cluster(tmp_path_factory.mktemp("live-cluster"), 3)
    for m in c.members:
        m.args += ["--heartbeat-interval", "50", "--election-timeout", "500"]
    c.start()
    try:
        with Client(c.endpoints, timeout=2) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.put("/ready", "1")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Console]:
    con = Console(tmp_path_factory.mktemp("live-console"), cluster.endpoints)
    con.start()
    try:
        yield con
    finally:
        con.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A fresh browser context logged in as the ``admin`` superuser; CSP violations and
    script errors fail the test."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(console.url + "/login/?next=/")
    pg.fill("#id_username", "admin")
    pg.fill("#id_password", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(console.url + "/")
    pg.base = console.url
    yield pg
    context.close()
    assert errors == [], f"CSP violations or script errors in the browser: {errors}"


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"live-{name}.png"), full_page=True)


def rows_text(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#w-table tbody tr.ev",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return rows


def wait_text(page: Any, selector: str, text: str, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s);"
        " return !!e && e.textContent.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )


# --- watch ----------------------------------------------------------------------------------


def test_watch_streams_resumes_after_a_dropped_socket_and_reports_compaction(
    page: Any, cluster: Cluster, console: Console
) -> None:
    ns = "/live/watch/"
    page.goto(page.base + "/watch/")
    page.fill("#w-key", ns)
    page.check("#w-prefix")
    page.check("#w-prev")
    page.click("#w-start")
    wait_text(page, "#w-state", "live")

    for i in range(3):
        cluster.etcdctl("put", f"{ns}k{i}", f"value {i}")
    cluster.etcdctl("del", f"{ns}k0")
    page.wait_for_function("() => document.querySelectorAll('#w-table tbody tr.ev').length === 4")
    rows = rows_text(page)
    assert [r[1] for r in rows] == ["DELETE", "PUT", "PUT", "PUT"]  # newest first
    assert rows[0][2] == f"{ns}k0" and "← value 0" in rows[0][3]
    shot(page, "watch")

    # the console goes away (all sockets drop); writes go on meanwhile; it comes back
    console.kill()
    for i in range(3, 6):
        cluster.etcdctl("put", f"{ns}k{i}", f"value {i}")
    console.start()
    page.wait_for_function(
        "() => document.querySelectorAll('#w-table tbody tr.ev').length === 7", timeout=20_000
    )
    cluster.etcdctl("put", f"{ns}k6", "after")
    page.wait_for_function("() => document.querySelectorAll('#w-table tbody tr.ev').length === 8")
    revs = [int(r[0]) for r in rows_text(page)]
    assert revs == sorted(set(revs), reverse=True)  # nothing twice, in order
    assert [r[2] for r in rows_text(page)][:4] == [f"{ns}k6", f"{ns}k5", f"{ns}k4", f"{ns}k3"]
    assert page.locator("#w-total").inner_text() == "8"

    # pause, write, resume: what happened meanwhile is replayed
    page.click("#w-pause")
    wait_text(page, "#w-state", "paused")
    cluster.etcdctl("put", f"{ns}k7", "while paused")
    page.wait_for_timeout(300)
    assert page.locator("#w-table tbody tr.ev").count() == 8
    page.click("#w-pause")
    page.wait_for_function("() => document.querySelectorAll('#w-table tbody tr.ev').length === 9")

    # download the captured events
    with page.expect_download() as dl:
        page.click("#w-download")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert [e["key"] for e in doc["events"]][-1] == f"{ns}k7"
    assert len(doc["events"]) == 9

    # a start revision that was compacted away: a clear message and the earliest revision
    with Client(cluster.endpoints) as c:
        rev = c.put(f"{ns}compact-me", "x").revision
        c.compact(rev)
    page.goto(page.base + f"/watch/?key={ns}&prefix=1&rev=2")
    wait_text(page, "#w-banner-text", f"earliest revision still available is {rev}")
    shot(page, "watch-compacted")
    page.click("#w-from-earliest")
    wait_text(page, "#w-state", "live")
    page.wait_for_function("() => document.querySelectorAll('#w-table tbody tr.ev').length === 1")
    assert rows_text(page)[0][2] == f"{ns}compact-me"


def test_watch_keeps_up_with_1000_events_a_second(page: Any, cluster: Cluster) -> None:
    ns = "/live/stress/"
    page.goto(page.base + "/watch/")
    page.fill("#w-key", ns)
    page.check("#w-prefix")
    page.click("#w-start")
    wait_text(page, "#w-state", "live")
    # a probe in the page: the longest gap between 50 ms timer ticks (main-thread stalls)
    page.evaluate(
        """() => { window.__gap = 0; let last = performance.now();
        window.__probe = setInterval(() => { const now = performance.now();
        window.__gap = Math.max(window.__gap, now - last); last = now; }, 50); }"""
    )

    sent = 0
    stop = threading.Event()

    def load() -> None:  # 10 transactions of 10 puts every 0.1 s: 1,000 events a second
        nonlocal sent
        with Client(cluster.endpoints) as c:
            began = time.monotonic()
            tick = 0
            while not stop.is_set() and time.monotonic() - began < STRESS_SECONDS:
                for _ in range(10):
                    c.txn(success=[Op.put(f"{ns}k{(sent + j) % 500}", "x" * 40) for j in range(10)])
                    sent += 10
                tick += 1
                time.sleep(max(0.0, began + tick * 0.1 - time.monotonic()))

    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    writer = threading.Thread(target=load)
    writer.start()
    try:
        writer.join(STRESS_SECONDS + 60)
    finally:
        stop.set()
    rate = sent / STRESS_SECONDS
    page.wait_for_function(f"() => document.getElementById('w-total').textContent === '{sent}'")
    gap = page.evaluate("() => window.__gap")
    after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    busy = after["TaskDuration"] - before["TaskDuration"]
    stats = page.evaluate(
        """() => ({rows: +document.getElementById('w-rows').textContent,
        dropped: +document.getElementById('w-dropped').textContent,
        height: document.querySelector('#w-table tr.ev').getBoundingClientRect().height})"""
    )
    shot(page, "watch-stress")
    print(f"\nstress: {sent} events in {STRESS_SECONDS:g} s ({rate:.0f}/s); the page's main thread "
          f"was busy {busy:.1f} s, its longest stall {gap:.0f} ms; rows {stats['rows']}, "
          f"dropped {stats['dropped']}, row height {stats['height']:g} px")  # fmt: skip
    assert stats["rows"] == min(sent, 1000)
    assert stats["rows"] + stats["dropped"] == sent
    assert gap < 1000, f"the page stalled for {gap:.0f} ms"

    # only the rows in view are in the DOM; scrolling to the end shows the oldest row kept
    newest = int(rows_text(page)[0][0])
    assert page.locator("#w-table tbody tr.ev").count() < 100
    page.eval_on_selector("#w-scroll", "s => { s.scrollTop = s.scrollHeight; }")
    page.wait_for_function(
        "rev => { const r = [...document.querySelectorAll('#w-table tbody tr.ev')].pop();"
        " return !!r && +r.cells[0].textContent === rev; }",
        arg=newest - 99,  # ten puts a revision: 1,000 rows span 100 revisions
    )


# --- services -------------------------------------------------------------------------------


def test_services_appear_expire_and_deregister_live(page: Any, cluster: Cluster) -> None:
    page.goto(page.base + "/services/")
    wait_text(page, "#live-status", "live")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.registry", "--endpoints", ",".join(cluster.endpoints),
         "register", "payments", "pay-1", "--address", "10.0.0.5", "--port", "8080",
         "--meta", "zone=a", "--ttl", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["registered"] == "/services/payments/pay-1"
        page.wait_for_selector("#svc-table tr[data-service=payments] td.count:text('1')")
        wait_text(page, "#svc-feed", "pay-1")
        shot(page, "services")

        page.click("a.service-link:text('payments')")
        page.wait_for_selector("#inst-table tr[data-instance=pay-1]")
        row = page.locator("#inst-table tr[data-instance=pay-1]")
        assert "10.0.0.5" in row.inner_text() and "zone=a" in row.inner_text()
        assert " s left" in row.locator(".ttl").inner_text()
        shot(page, "service-detail")

        os.kill(proc.pid, signal.SIGKILL)  # no deregistration: the lease must run out
        proc.wait(10)
        page.wait_for_selector("#inst-table tr[data-instance=pay-1]", state="detached")
        page.wait_for_selector("#svc-feed li.kind-expired:has-text('pay-1')")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # by hand: register with a TTL, then deregister it (revoke) after confirming
    page.click("#register")
    page.fill("#id_instance_id", "pay-manual")
    page.fill("#id_address", "10.0.0.9")
    page.fill("#id_port", "9090")
    page.fill("#id_metadata", "zone=b\nversion=2")
    page.fill("#id_ttl", "60")
    page.click("#save")
    page.wait_for_selector("#inst-table tr[data-instance=pay-manual]")
    page.click("#inst-table tr[data-instance=pay-manual] a.deregister")
    page.click("#confirm-deregister")
    page.wait_for_selector("#svc-feed li.kind-deregistered:has-text('pay-manual')")
    assert "by admin" in page.locator("#svc-feed li.kind-deregistered").first.inner_text()
    assert page.locator("#inst-table tr[data-instance=pay-manual]").count() == 0
    shot(page, "service-feed")


# --- cluster --------------------------------------------------------------------------------


def test_dashboard_shows_the_new_leader_after_the_leader_is_killed(
    page: Any, cluster: Cluster
) -> None:
    page.goto(page.base + "/cluster/")
    wait_text(page, "#live-status", "live")
    page.wait_for_function("() => document.querySelectorAll('#members tbody tr').length === 3")
    page.wait_for_selector("#chart-index canvas")
    page.wait_for_timeout(1500)  # a few samples on the charts
    leader = cluster.leader(cluster.members)
    assert page.locator("#c-leader").inner_text() == leader.name
    assert page.locator(f"#members tr.leader .member-name:text('{leader.name}')").count() == 1
    shot(page, "cluster")

    # move the leader by hand (confirmed on its own page)
    page.click("#action-move-leader")
    target = page.locator("#id_target option").first.inner_text().split(" ")[0]
    page.click("#confirm-move-leader")
    page.wait_for_url(page.base + "/cluster/")
    assert "Leadership moved to" in page.locator(".messages").inner_text()
    wait_text(page, "#c-leader", target)
    leader = next(m for m in cluster.members if m.name == target)

    leader.kill()  # SIGKILL by PID
    page.wait_for_function(
        "old => { const t = document.getElementById('c-leader').textContent;"
        " return t !== old && t !== 'none'; }",
        arg=leader.name,
        timeout=20_000,
    )
    new = page.locator("#c-leader").inner_text()
    assert new in {m.name for m in cluster.members if m is not leader}
    dead = page.locator(f"#members tr:has(.member-name:text('{leader.name}'))")
    page.wait_for_function(
        "name => [...document.querySelectorAll('#members tbody tr')].some(r =>"
        " r.querySelector('.member-name').textContent === name &&"
        " r.querySelector('.health.bad'))",
        arg=leader.name,
    )
    assert "unhealthy" in dead.inner_text()
    wait_text(page, "#c-leader-changes", new)
    page.wait_for_timeout(1200)  # the charts show the change
    shot(page, "cluster-failover")
