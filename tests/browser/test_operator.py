"""An operator's first hour, in a real browser: add a provider (with a typo, then
fixed), add a route with a fallback through the admin form, and stream through
it while its first target is down. Screenshots of the pages a newcomer meets go
to test-output/ (the ones in docs/ are taken from there)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.browser.conftest import CHROMIUM, logged_in_page, shot
from tests.conftest import unique
from tests.fakes.upstream import refused_base_url
from tests.live import GatewayServer, server_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no browser at {CHROMIUM} (make browser installs it)", allow_module_level=True)

BACKUP_TOKENS = ["Answered", " by", " the", " fallback."]


@pytest.fixture(scope="module")
def gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    """A gateway of this module's own: the admin's writes here leave the session
    gateway's content-type cache alone (a test flush renumbers content types)."""
    server = GatewayServer(env=server_env()).start()
    yield server
    server.stop()


@pytest.fixture
def opal(live_db: None) -> tuple[str, str]:
    """Opal runs the gateway: a superuser."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("opal", "opal@example.com", "opal-pass-1234")
    return "opal", "opal-pass-1234"


def add_provider(page, base: str, name: str, *, base_url: str, key: str = "") -> None:
    page.goto(f"{base}/admin/streaming/provider/add/")
    page.fill("#id_name", name)
    page.select_option("#id_kind", "openai")
    if key:
        page.fill("#id_api_key", key)
    page.fill("#id_base_url", base_url)
    page.click("input[name=_save]")


def test_a_new_operator_adds_a_provider_and_a_route_that_falls_back(
    gateway, opal, alice, sdk, upstream, browser
):
    backup_model = unique("backup")
    upstream.script(backup_model, tokens=BACKUP_TOKENS)
    primary, backup, route = unique("primary"), unique("backup"), unique("chat")
    page = logged_in_page(browser, gateway, opal)

    page.goto(f"{gateway.url}/")
    assert "LLM streaming gateway" in page.inner_text("body")
    shot(page, "landing")

    # A typo first: the key is typed, the base URL forgotten.
    add_provider(page, gateway.url, primary, base_url="", key="sk-primary-typed-once")
    assert "needs a base URL" in page.inner_text(".errorlist")
    assert "sk-primary-typed-once" not in page.content()
    page.fill("#id_base_url", refused_base_url())  # fixed; nothing listens there
    page.click("input[name=_save]")
    row = page.locator("#result_list tr", has_text=primary)
    assert "stored (encrypted)" in row.inner_text()  # the key was not lost on the way

    add_provider(page, gateway.url, backup, base_url=upstream.base_url)

    # A route with a fallback, through the admin form; its policy left as it comes.
    page.goto(f"{gateway.url}/admin/streaming/modelroute/add/")
    page.fill("#id_model", route)
    page.click(".add-row a")  # a second target row
    for row, (provider, model) in enumerate([(primary, "gpt-4o-mini"), (backup, backup_model)]):
        page.select_option(f"#id_targets-{row}-provider", label=provider)
        page.fill(f"#id_targets-{row}-upstream_model", model)
        page.fill(f"#id_targets-{row}-priority", str(row))
    page.click("input[name=_save]")
    assert "was added successfully" in page.inner_text(".messagelist")

    chunks = list(
        sdk(alice).chat.completions.create(
            model=route, stream=True, messages=[{"role": "user", "content": "Hello?"}]
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        BACKUP_TOKENS
    )
    assert chunks[0].model == backup_model  # the client sees who answered

    page.goto(f"{gateway.url}/admin/streaming/provider/")
    page.locator("#result_list a", has_text=backup).click()
    page.click("#test-connection")
    report = page.inner_text(".messagelist")
    assert f"({upstream.base_url}/chat/completions): OK, first token in" in report
    shot(page, "provider")

    page.goto(f"{gateway.url}/admin/oauth2_provider/application/{alice.app_id}/change/")
    page.wait_for_selector("#policy-group")
    shot(page, "app-policy")
