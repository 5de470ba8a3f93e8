"""The duty console in a real browser: Debian's Chromium, driven by Playwright. Alerts
published by the rules service appear grouped by district and domain, on the map; an
officer acknowledges one and it stays acknowledged after the service restarts; an
unacknowledged critical one escalates on the duty book's (fake) clock; a resolution
needs a note. No console errors throughout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from application.stack import Stack, free_port
from rules.duty import DutyBook, load_escalation
from rules.duty_service import ConsoleSite, DutyService, serve
from rules.officers import Officers
from tests.rules.test_duty import REPO, T0, Clock, _event
from tests.waiting import wait_for
from urbansense import codec, topics
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SITE = ConsoleSite(locations={("pudong", "wp-1"): (31.2301, 121.4737), ("pudong", "wp-2"): (31.2402, 121.4901)},
                   grafana_url="http://grafana.example:3000")


class Duty:
    """The duty service and its API on a fixed port, restartable over the same SQLite file."""

    def __init__(self, tmp_path: Path, stack: Stack, clock: Clock, officers: Officers | None = None) -> None:
        self.tmp_path, self.stack, self.clock, self.officers = tmp_path, stack, clock, officers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.start()

    def start(self) -> None:
        self.book = DutyBook(self.tmp_path / "duty.sqlite", load_escalation(REPO / "rules" / "escalation.yaml"),
                             self.clock)
        self.service = DutyService(self.book, MqttSettings.from_url(self.stack.mqtt_url), instance="t-console",
                                   tick_s=0.2)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        assert self.service.mqtt.wait_subscribed(10)
        self.server = serve(self.book, "127.0.0.1", self.port, SITE, self.officers)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(10)
        self.server.shutdown()
        self.server.server_close()
        self.book.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; run: apt-get install -y chromium (make test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def _problems(page: Any) -> list[str]:
    """What the page reports as errors and warnings (console, uncaught), as it runs."""
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    return problems


def test_officers_work_alerts_in_the_console(tmp_path: Path, stack: Stack, browser: Any) -> None:
    clock = Clock()
    duty = Duty(tmp_path, stack, clock)
    publisher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id="t-console-pub")
    publisher.connect()
    try:
        for event in (_event(device="wp-1"), _event(device="wp-2"),
                      _event(severity="warning", domain="gas", device="gs-1")):
            publisher.publish_wait(topics.alert(event.domain, event.district, event.severity),
                                   codec.encode_alert(event))
        wait_for(lambda: len(duty.book.open_episodes()) == 3, 10, what="three episodes opened")
        page = browser.new_page()
        problems = _problems(page)
        page.goto(duty.url)
        page.wait_for_selector("#episodes tbody tr[data-id]")
        assert page.locator("#episodes tbody tr[data-id]").count() == 3
        assert page.locator("tr.group").all_inner_texts() == ["pudong · gas", "pudong · water"]
        assert page.locator("#map .leaflet-interactive").count() == 2  # the two located devices
        wp1 = page.locator("tr[data-id^='water.x:pudong:wp-1@']")
        assert wp1.locator(".timer").inner_text() in ("10:00", "9:59")  # 600 s to the shift supervisor
        # an officer acknowledges wp-1
        page.fill("#officer", "li.wei")
        page.dispatch_event("#officer", "change")
        wp1.get_by_role("button", name="Acknowledge").click()
        page.wait_for_function("document.querySelector(\"tr[data-id^='water.x:pudong:wp-1@'] .owner\")"
                               ".textContent === 'li.wei'")
        assert wp1.locator(".state").inner_text() == "acknowledged" and wp1.locator(".timer").inner_text() == ""
        # the service restarts: the state is still there
        duty.stop()
        duty.start()
        page.reload()
        page.wait_for_selector("tr[data-id^='water.x:pudong:wp-1@']")
        assert (wp1.locator(".state").inner_text(), wp1.locator(".owner").inner_text()) == ("acknowledged", "li.wei")
        wp1.click()
        page.wait_for_selector("#detail-history li")
        history = page.locator("#detail-history li").all_inner_texts()
        assert any("rules: opened" in h for h in history) and any("li.wei: acknowledged" in h for h in history)
        assert page.get_attribute("#detail-dashboard", "href") == (
            "http://grafana.example:3000/d/urbansense-water?var-district=pudong&var-device=wp-1")
        # ten minutes on the duty book's clock: wp-2, critical and unacknowledged, escalates
        clock.t = T0 + 600_000
        page.wait_for_function("document.querySelector(\"tr[data-id^='water.x:pudong:wp-2@'] .level\")"
                               ".textContent === 'shift-supervisor'", timeout=10_000)
        gas = page.locator("tr[data-id^='gas.x:pudong:gs-1@']")
        assert gas.locator(".level").inner_text() == "duty-officer"  # a warning does not escalate
        # resolving asks for a note
        page.once("dialog", lambda dialog: dialog.accept("valve closed, main repaired"))
        wp1.get_by_role("button", name="Resolve").click()
        page.wait_for_function("!document.querySelector(\"tr[data-id^='water.x:pudong:wp-1@']\")")
        assert duty.book.history(duty.book.open_episodes()[0].id)  # the others remain
        assert problems == [], problems
    finally:
        publisher.close()
        duty.stop()


def test_a_signed_in_officer_acts_in_their_own_name(tmp_path: Path, stack: Stack, browser: Any) -> None:
    """With officers, the browser signs in (HTTP Basic) and the console fills in the name
    signed in, read-only: what the officer does is recorded under it."""
    duty = Duty(tmp_path, stack, Clock(), Officers({"li.wei": "li-secret"}))
    try:
        ep = duty.book.observe(_event(device="wp-1"))
        assert ep is not None
        anonymous = browser.new_context()
        assert anonymous.request.get(duty.url).status == 401  # nothing without signing in
        anonymous.close()
        context = browser.new_context(http_credentials={"username": "li.wei", "password": "li-secret"})
        page = context.new_page()
        problems = _problems(page)
        page.goto(duty.url)
        page.wait_for_function("document.getElementById('officer').readOnly")
        assert page.input_value("#officer") == "li.wei"
        row = page.locator("tr[data-id^='water.x:pudong:wp-1@']")
        row.get_by_role("button", name="Acknowledge").click()
        page.wait_for_function("document.querySelector(\"tr[data-id^='water.x:pudong:wp-1@'] .owner\")"
                               ".textContent === 'li.wei'")
        assert [(h["who"], h["action"]) for h in duty.book.history(ep.id)][-1] == ("li.wei", "acknowledged")
        assert problems == [], problems
        context.close()
    finally:
        duty.stop()


def test_the_console_is_self_contained() -> None:
    """No CDN at run time: every script and style the page loads is served by the duty service."""
    page = (REPO / "rules" / "console" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
    for ref in ("/vendor/leaflet/leaflet.js", "/vendor/leaflet/leaflet.css", "/console.js", "/console.css"):
        assert ref in page and (REPO / "rules" / "console" / ref.lstrip("/")).is_file(), ref


def test_the_console_serves_nothing_outside_its_folder(tmp_path: Path) -> None:
    import http.client

    book = DutyBook(tmp_path / "duty.sqlite", load_escalation(REPO / "rules" / "escalation.yaml"), Clock())
    server = serve(book, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def get(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            conn.request("GET", path)  # sent as written: no client-side normalisation of ".."
            status = conn.getresponse().status
            conn.close()
            return status

        assert get("/console.js") == 200 and get("/") == 200
        for path in ("/../duty.py", "/vendor/../../duty.py", "/%2e%2e/duty.py", "/../../../etc/passwd"):
            assert get(path) == 404, path
    finally:
        server.shutdown()
        book.close()
