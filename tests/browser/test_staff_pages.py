"""The staff pages in a real browser: headless Chromium against a gateway process.

An operator (staff, in the ``operators`` group) logs into the admin, runs a
prompt in the playground over each transport (dropping the connection
mid-stream and resuming), and watches the live dashboard count a stream in
flight. Screenshots go to test-output/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from tests.browser.conftest import CHROMIUM, logged_in_page, shot
from tests.live import GatewayServer, server_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

PROMPT = "Tell me how streaming works."

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no browser at {CHROMIUM} (make browser installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def paced_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    """A gateway whose demo provider streams at a pace a person (and a test) can watch."""
    server = GatewayServer(env=server_env(SLUICE_DEMO_TOKEN_DELAY="0.04")).start()
    yield server
    server.stop()


@pytest.fixture
def staff(live_db: None) -> tuple[str, str]:
    """Olivia, an operator: staff with the playground permission, not a superuser."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    olivia = get_user_model().objects.create_user(
        "olivia", "olivia@example.com", "s3cret-pass-olivia", is_staff=True
    )
    olivia.groups.add(Group.objects.get(name="operators"))
    return "olivia", "s3cret-pass-olivia"


def expected_answer(prompt: str) -> str:
    from streaming.providers.demo import demo_tokens

    return "".join(demo_tokens([{"role": "user", "content": prompt}]))


def test_admin_index_links_the_staff_pages(paced_gateway, staff, browser):
    page = logged_in_page(browser, paced_gateway, staff)
    assert page.get_attribute("#sluice-pages a >> nth=0", "href") == "/admin/sluice/dashboard/"
    assert page.get_attribute("#sluice-pages a >> nth=1", "href") == "/admin/sluice/playground/"
    shot(page, "admin-index")


def test_staff_pages_need_a_staff_login(paced_gateway):
    import httpx

    for path in ("dashboard/", "playground/"):
        response = httpx.get(f"{paced_gateway.url}/admin/sluice/{path}", timeout=10)
        assert response.status_code == 302 and "/admin/login/" in response.headers["location"]
    feed = httpx.get(f"{paced_gateway.url}/admin/sluice/dashboard/feed", timeout=10)
    assert feed.status_code == 403
    ticket = httpx.post(f"{paced_gateway.url}/admin/sluice/playground/ticket", timeout=10)
    assert ticket.status_code in (302, 403)


@pytest.mark.parametrize("transport", ["sse", "ws", "ndjson"])
def test_playground_streams_drops_and_resumes(paced_gateway, staff, demo_model, transport, browser):
    page = logged_in_page(browser, paced_gateway, staff)
    page.goto(f"{paced_gateway.url}/admin/sluice/playground/")
    page.select_option("#route", demo_model)
    page.fill("#prompt", PROMPT)
    page.check(f"input[name=transport][value={transport}]")
    page.click("#run")
    # Let some tokens arrive, then cut the connection in the middle of the answer.
    page.wait_for_function("Number(document.getElementById('tokens').textContent) >= 8")
    page.click("#drop")
    page.wait_for_function("document.getElementById('state').textContent.startsWith('resumed')")
    page.wait_for_function("document.getElementById('state').textContent === 'done'")
    # Every token exactly once, across the drop.
    assert page.inner_text("#output") == expected_answer(PROMPT)
    log = page.inner_text("#events")
    assert re.search(r"dropped the connection after #\d+", log)
    assert re.search(r"resuming after #\d+", log)
    assert re.match(r"\d+ ms", page.inner_text("#ttft"))
    assert int(page.inner_text("#rate")) > 0
    shot(page, f"playground-{transport}")


@pytest.fixture
def long_model(make_route) -> str:
    """A route whose demo answer is 250 tokens (10 s at the test's pace)."""
    from streaming.models import RouteTarget

    model = make_route(("demo", "", "demo"), prefix="long")
    RouteTarget.objects.filter(route__model=model).update(params={"tokens": 250})
    return model


def test_dashboard_shows_a_stream_in_flight(paced_gateway, staff, demo_model, long_model, browser):
    player = logged_in_page(browser, paced_gateway, staff)
    player.goto(f"{paced_gateway.url}/admin/sluice/playground/")
    player.select_option("#route", demo_model)  # a short one first: a provider row
    player.click("#run")
    player.wait_for_function("document.getElementById('state').textContent === 'done'")
    player.select_option("#route", long_model)
    player.click("#run")
    player.wait_for_function("Number(document.getElementById('tokens').textContent) >= 3")

    board = player.context.new_page()  # the same staff session
    board.goto(f"{paced_gateway.url}/admin/sluice/dashboard/")
    board.wait_for_function("Number(document.getElementById('active').textContent) >= 1")
    board.wait_for_selector(f"#streams td:text-is('{long_model}')")
    board.wait_for_function("Number(document.getElementById('tps').textContent) > 0")
    board.wait_for_function("document.getElementById('ttft-p50').textContent.endsWith('ms')")
    board.wait_for_selector("#providers td:text-matches('^demo-')")
    board.wait_for_timeout(1500)  # a few points on the charts
    assert board.locator("#chart-tps path.line").count() == 1
    shot(board, "dashboard")
    player.wait_for_function(
        "document.getElementById('state').textContent === 'done'", timeout=30_000
    )
    board.wait_for_function("Number(document.getElementById('active').textContent) === 0")
