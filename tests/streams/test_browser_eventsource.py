"""A real browser's EventSource survives a dropped connection with no gap and no duplicate."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import unique, wait_for_audit
from tests.fakes.proxy import CuttingProxy

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKENS = [f"word{i} " for i in range(60)]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def test_browser_reconnects_with_last_event_id_and_gets_the_full_text(
    gateway, alice, upstream, make_route
):
    upstream_model = unique("browser")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.03)
    model = make_route(("openai", upstream.base_url, upstream_model))

    with CuttingProxy(gateway.port, only=b"/v1/streams/") as proxy:
        proxy.cuts.append(1500)  # drop the first event-stream connection mid-stream
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"{proxy.url}/try/eventsource")
            created = httpx.post(
                f"{gateway.url}/v1/streams",
                headers=alice.headers,
                json={"model": model, "messages": [{"role": "user", "content": "go"}]},
            ).json()
            events = created["events_url"]
            page.evaluate("events => startStream(events)", events)
            page.wait_for_selector("body[data-state=done], body[data-state=failed]", timeout=30_000)
            text = page.inner_text("#out")
            state = page.get_attribute("body", "data-state")
            reconnects = int(page.get_attribute("body", "data-reconnects") or 0)
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "eventsource-resumed.png"))
            browser.close()

    assert state == "done"
    assert text == "".join(TOKENS)
    assert reconnects >= 1
    assert proxy.connections >= 2
    record = wait_for_audit(created["id"])
    assert record.resumes >= 1
    assert record.outcome == "completed"
