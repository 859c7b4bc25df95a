"""Ops changes in the admin apply to the next request, without a restart."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from tests.conftest import unique, wait_for_audit
from tests.routing.admin_client import AdminClient
from tests.routing.conftest import sdk_stream

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ops(gateway, live_db) -> Iterator[AdminClient]:
    client = AdminClient(gateway.url)
    yield client
    client.close()


def route_form(route, targets) -> dict:
    """The route's change form as the admin posts it, with ``targets`` as the inline rows."""
    data = {
        "model": route.model,
        "description": route.description,
        "enabled": "on",
        "retry_on": list(route.retry_on),
        "retry_same_target_on": list(route.retry_same_target_on),
        "attempts_per_target": route.attempts_per_target,
        "backoff_seconds": route.backoff_seconds,
        "first_token_timeout": route.first_token_timeout,
        "stall_timeout": route.stall_timeout,
        "targets-TOTAL_FORMS": len(targets),
        "targets-INITIAL_FORMS": sum(1 for t in targets if t.get("id")),
        "targets-MIN_NUM_FORMS": 0,
        "targets-MAX_NUM_FORMS": 1000,
    }
    for i, target in enumerate(targets):
        row = {"route": route.pk, "weight": 1, "params": "{}", **target}
        data.update({f"targets-{i}-{k}": v for k, v in row.items()})
    return data


def test_route_change_in_admin_applies_to_next_request(ops, sdk, alice, upstream, make_route):
    from streaming.models import ModelRoute, Provider

    old, new = unique("old"), unique("new")
    upstream.script(old, tokens=["old", " answer"])
    upstream.script(new, tokens=["new", " answer"])
    model = make_route(("openai", upstream.base_url, old))
    client = sdk(alice)
    assert sdk_stream(client, model)[1] == "old answer"

    route = ModelRoute.objects.get(model=model)
    target = route.targets.get()
    provider = Provider.objects.get(pk=target.provider_id)
    ops.post(
        f"/admin/streaming/modelroute/{route.pk}/change/",
        route_form(
            route,
            [
                {"id": target.pk, "priority": 1, "provider": provider.pk, "upstream_model": old},
                {"priority": 0, "provider": provider.pk, "upstream_model": new},
            ],
        ),
    )

    chunks, text = sdk_stream(client, model)
    assert text == "new answer"
    assert wait_for_audit(chunks[0].id).upstream_model == new


def test_api_key_rotation_applies_without_restart(ops, sdk, alice, upstream, make_route):
    from streaming.models import Provider, RouteTarget

    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["ok"])
    model = make_route(("openai", upstream.base_url, upstream_model), api_key="sk-old")
    client = sdk(alice)
    sdk_stream(client, model)
    provider = Provider.objects.get(pk=RouteTarget.objects.get(route__model=model).provider_id)

    response = ops.post(
        f"/admin/streaming/provider/{provider.pk}/change/",
        {
            "name": provider.name,
            "kind": provider.kind,
            "base_url": provider.base_url,
            "api_key": "sk-rotated",
            "api_key_env": "",
            "enabled": "on",
        },
    )
    assert "sk-rotated" not in response.text  # write-only

    sdk_stream(client, model)
    sent = [r.headers["authorization"] for r in upstream.requests_for(upstream_model)]
    assert sent == ["Bearer sk-old", "Bearer sk-rotated"]
    provider.refresh_from_db()
    assert "sk-rotated" not in provider.api_key_encrypted  # stored encrypted


def test_test_connection_action_reports_latency_or_the_error(ops, upstream, make_route):
    from streaming.models import Provider, RouteTarget

    good, bad = unique("good"), unique("bad")
    upstream.script(good, tokens=["pong"])
    upstream.script(bad, fault="http_500")
    ids = []
    for upstream_model in (good, bad):
        model = make_route(("openai", upstream.base_url, upstream_model))
        ids.append(RouteTarget.objects.get(route__model=model).provider_id)

    response = ops.post(
        "/admin/streaming/provider/",
        {"action": "test_connection", "_selected_action": ids, "index": 0},
    )

    text = html.unescape(" ".join(ops.messages(response)))
    assert f"{good} ({upstream.base_url}/chat/completions): OK, first token in" in text
    assert (
        f"{bad} ({upstream.base_url}/chat/completions): server_error: upstream returned HTTP 500"
        in text
    )
    assert upstream.requests_for(good)[0].body["max_tokens"] == 1
    assert upstream.wait_open_requests(0)
    for provider in Provider.objects.filter(pk__in=ids):
        assert f"Test connection to {provider.name} / " in text


def test_admin_shows_circuit_state(ops, sdk, alice, upstream, make_route):
    from streaming.models import ModelRoute, RouteTarget

    broken = unique("broken")
    upstream.script(broken, fault="http_500")
    model = make_route(("openai", upstream.base_url, broken))
    client = sdk(alice)
    with pytest.raises(Exception):  # noqa: B017 - any API error: the point is the breaker's record
        sdk_stream(client, model)
    target = RouteTarget.objects.get(route__model=model)

    provider_page = ops.get(f"/admin/streaming/provider/{target.provider_id}/change/").text
    route_page = ops.get(
        f"/admin/streaming/modelroute/{ModelRoute.objects.get(model=model).pk}/change/"
    ).text

    # The admin runs in the gateway process: it sees that process's breakers.
    for page in (provider_page, route_page):
        assert "closed (1 recent failures)" in html.unescape(page)
        assert "server_error: upstream returned HTTP 500" in html.unescape(page)


def test_a_new_route_in_the_admin_starts_with_the_default_retry_policy(ops):
    """An operator who adds a route and leaves the policy alone gets a route that
    falls back, as a YAML import without ``retry_on`` does."""
    import re

    from streaming.models import default_retry_on

    page = ops.get("/admin/streaming/modelroute/add/").text
    checked = set(
        re.findall(r'<input type="checkbox" name="retry_on" value="(\w+)"[^>]*checked', page)
    )
    assert checked == set(default_retry_on())


def test_test_connection_on_the_providers_page_shows_the_url_and_the_providers_words(
    ops, upstream, make_route
):
    from streaming.models import RouteTarget

    refusing = unique("refusing")
    upstream.script(refusing, fault="http_401")
    model = make_route(("openai", upstream.base_url, refusing))
    provider_id = RouteTarget.objects.get(route__model=model).provider_id
    page_url = f"/admin/streaming/provider/{provider_id}/change/"
    page = ops.get(page_url).text
    assert 'id="test-connection"' in page

    response = ops.post(f"/admin/streaming/provider/{provider_id}/test-connection/", {})

    assert str(response.url).endswith(page_url)  # back on the provider's page
    text = html.unescape(" ".join(ops.messages(response)))
    assert f"({upstream.base_url}/chat/completions)" in text  # the URL tried
    assert "auth_error: upstream returned HTTP 401: Incorrect API key provided." in text
