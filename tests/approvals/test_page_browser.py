"""The signed link's confirmation page in a real browser: Debian's chromium driven by playwright.

app.py is served on 127.0.0.1 by chalice's local server, with moto, the DirectLink sandbox and a
ledger holding pending approval requests behind it. The browser opens a link, reads what the page
shows, picks a gateway, clicks Approve once, and a second tab's submit of the same form gets 409.
Screenshots go to the test's tmp_path (their paths are printed: `pytest -s` or `-rP` shows them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import chalice.local
import pytest
from chalice.config import Config
from chalice.local import create_local_server

from chalicelib import reconcile, runtime
from chalicelib.approvals import tokens
from chalicelib.approvals.trigger import LocalTrigger
from chalicelib.chatops.messages import at
from chalicelib.log import logger
from sandbox import scenario
from tests.approvals.test_routes_fuzz import (
    HOSTILE_NAME,
    SECOND_PROD_GATEWAY,
    SIGNING_KEY,
    RecordingTrigger,
    World,
    approval_world,
)

CHROMIUM = Path("/usr/bin/chromium")
# As root on a machine whose network is closed: no sandbox, no GPU, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Debian's chromium is not installed at {CHROMIUM}: `make browser` installs it (needs root and apt-get)",
)


class PollNow(RecordingTrigger):
    """Records each trigger, then runs the poller for that target on a thread, as the sandbox does."""

    def __init__(self):
        super().__init__()
        self.runtime: runtime.Runtime | None = None
        self.finished: list[threading.Event] = []

    def poll_now(self, target: str) -> bool:
        super().poll_now(target)
        rt, done = self.runtime, threading.Event()
        assert rt is not None
        self.finished.append(done)

        def run(name: str) -> object:
            try:
                return reconcile.run_cycle(rt, targets=[name], budget_seconds=30)
            finally:
                done.set()

        return LocalTrigger(run).poll_now(target)

    def settle(self, timeout: float = 30) -> None:
        for done in self.finished:
            assert done.wait(timeout), "a triggered poll did not finish"


@pytest.fixture
def served(monkeypatch) -> Iterator[tuple[World, str]]:
    """The world behind app.py on 127.0.0.1 (a free port); yields it and the base URL."""
    from app import app

    trigger = PollNow()
    with approval_world(trigger, hostile=True) as world:
        trigger.runtime = world.runtime
        for name, value in world.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(runtime, "get_reader", lambda env=None: world.runtime)
        logger.setLevel("WARNING")
        # The request log line holds the URL, and a link's URL is a bearer credential: not even in test output.
        monkeypatch.setattr(chalice.local.ChaliceRequestHandler, "log_message", lambda *args: None)
        original_class = app.__class__
        server = create_local_server(app, Config.create(), "127.0.0.1", 0)
        thread = threading.Thread(target=server.server.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = server.server.server_address[:2]
            yield world, f"http://{host}:{port}"
            trigger.settle()  # no poll may outlive moto
        finally:
            server.shutdown()
            server.server.server_close()
            thread.join(5)
            app.__class__ = original_class  # create_local_server swaps the app's class for its thread-local one


def link(world: World, vif_name: str, approver: str) -> tuple[str, str]:
    """The request id of the VIF's pending request and a link token for `approver`."""
    request = world.requests[vif_name]
    token = tokens.mint_link(SIGNING_KEY, request.request_id, approver, world.now() + timedelta(hours=4))
    return request.request_id, token


def facts(page) -> dict[str, str]:
    """The page's <dl> as label → text, read from the DOM (what a person sees, not the HTML source)."""
    pairs = page.eval_on_selector_all("dt", "dts => dts.map(dt => [dt.textContent, dt.nextElementSibling.textContent])")
    return dict(pairs)


def shot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_the_link_page_shows_the_vif_and_approves_it_once(served, tmp_path):
    from playwright.sync_api import sync_playwright

    world, base = served
    trigger = world.trigger
    assert isinstance(trigger, PollNow)
    request_id, token = link(world, HOSTILE_NAME, "alice")
    url = f"{base}/approvals/link/{token}"
    vif_id = world.sandbox.world.vif_ids[HOSTILE_NAME]
    found = world.runtime.ledger.approval(request_id)
    assert found is not None
    request, record = found
    assert set(request.gateways) == {scenario.PROD_GATEWAY, SECOND_PROD_GATEWAY}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 800},
        )
        try:
            before = world.state()
            page = browser.new_page()
            answer = page.goto(url)
            assert answer is not None and answer.status == 200
            shown = facts(page)
            assert shown["VIF"] == HOSTILE_NAME  # the markup in the name is text
            assert shown["VIF id"] == vif_id
            assert shown["VLAN"] == "260" and shown["ASN"] == "65001"
            assert shown["Connection"] == scenario.PARTNER_CONNECTION
            assert shown["Account"] == scenario.PROD
            assert at(datetime.fromisoformat(record.deadline)) in shown["Deadline"]
            assert shown["Acting as"] == "alice"
            assert HOSTILE_NAME in page.locator("h1").inner_text()
            assert page.locator("#injected").count() == 0 and page.locator("img").count() == 0
            assert page.locator("script").count() == 0
            assert sorted(page.eval_on_selector_all("#gateway option", "os => os.map(o => o.value)")) == sorted(
                request.gateways
            )
            # The same form in a second tab, opened before the first submit: its submit must be refused.
            second = browser.new_page()
            assert second.goto(url).status == 200
            assert world.state() == before, "opening the link changed something"
            shot(page, tmp_path / "link-page.png")

            page.select_option("#gateway", SECOND_PROD_GATEWAY)
            with page.expect_navigation() as navigation:
                page.click("button.approve")
            assert navigation.value.status == 200
            assert page.locator("h1").inner_text() == "Approved"
            shot(page, tmp_path / "link-approved.png")

            request, record = world.runtime.ledger.approval(request_id)
            assert [(v.approver, v.vote, v.channel, v.gateway) for v in request.votes] == [
                ("alice", "approve", "link", SECOND_PROD_GATEWAY)
            ]
            assert request.status == "approved" and request.gateway == SECOND_PROD_GATEWAY
            assert trigger.calls == [request.target]

            with second.expect_navigation() as navigation:
                second.click("button.approve")
            assert navigation.value.status == 409
            assert second.locator("h1").inner_text() == "Already decided"
            shot(second, tmp_path / "link-second-submit-409.png")
            request, _ = world.runtime.ledger.approval(request_id)
            assert len(request.votes) == 1 and trigger.calls == [request.target]

            # The triggered poller carries it out: one Confirm, with the chosen gateway.
            trigger.settle()
            assert world.sandbox.confirm_count(vif_id) == 1
            assert world.sandbox.vif(vif_id)["virtualGatewayId"] == SECOND_PROD_GATEWAY

            # On a phone: nothing wider than the screen, both buttons on it.
            _, phone_token = link(world, "prod-legacy", "bob")
            phone = browser.new_page()
            phone.set_viewport_size(PHONE)
            assert phone.goto(f"{base}/approvals/link/{phone_token}").status == 200
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            # Values get the screen's width, not what a label column leaves them ("This link works until").
            widths = phone.eval_on_selector_all("dd", "dds => dds.map(dd => dd.getBoundingClientRect().width)")
            main = phone.evaluate("document.querySelector('dl').getBoundingClientRect().width")
            assert min(widths) >= 0.9 * main, (widths, main)
            for button in ("button.approve", "button.reject"):
                box = phone.locator(button).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            shot(phone, tmp_path / "link-phone.png")
        finally:
            browser.close()
