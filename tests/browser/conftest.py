"""A real browser for the staff pages: Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import ROOT, GatewayServer

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-output"


@pytest.fixture
def browser() -> Iterator[object]:
    """Chromium; tests ask for it last, after their database fixtures (Playwright's
    sync API runs an event loop in this thread, where Django refuses queries)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def logged_in_page(browser, server: GatewayServer, user: tuple[str, str]):
    """A page signed in to the admin as ``user`` (username, password)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", user[0])
    page.fill("#id_password", user[1])
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    return page


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
