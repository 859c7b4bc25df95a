"""Bad input and failures get OpenAI-shaped errors with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import fetch_token, unique, wait_for_audit
from tests.fakes.upstream import refused_base_url

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def post(gateway, headers, **kwargs):
    return httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, timeout=20, **kwargs)


def assert_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code


CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "invalid_request"),
        (b'{"model": "m", "messages": []}', "invalid_request"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "invalid_request"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "invalid_request",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "invalid_request",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "bogus": 1}',
            "invalid_request",
        ),
    ],
)
def test_bad_requests_get_400(gateway, alice, body, code):
    assert_error(
        post(gateway, {**alice.headers, "content-type": "application/json"}, content=body),
        400,
        code,
    )


def test_oversized_body_gets_413(gateway, alice, demo_model):
    huge = {"model": demo_model, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    assert_error(post(gateway, alice.headers, json=huge), 413, "request_too_large")


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_invalid_token_gets_401(gateway, demo_model, headers):
    response = post(gateway, headers, json={"model": demo_model, **CHAT})
    assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_token_gets_401(gateway, alice, demo_model, live_db):
    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    actor_token = fetch_token(gateway.url, alice.client_id, alice.client_secret).json()[
        "access_token"
    ]
    AccessToken.objects.filter(application_id=alice.app_id).update(expires=timezone.now())
    response = post(
        gateway, {"Authorization": f"Bearer {actor_token}"}, json={"model": demo_model, **CHAT}
    )
    assert_error(response, 401, "token_expired")


def test_token_without_chat_scope_gets_403(gateway, make_actor, demo_model):
    dave = make_actor("dave", scopes=["admin"], token_scope="admin")
    assert_error(post(gateway, dave.headers, json={"model": demo_model, **CHAT}), 403)


def test_route_not_allowed_gets_403(gateway, make_actor, demo_model, make_route):
    other = make_route(("demo", "", "demo"))
    charlie = make_actor("charlie", models=[demo_model])
    assert_error(
        post(gateway, charlie.headers, json={"model": other, **CHAT}), 403, "model_not_allowed"
    )


def test_unknown_model_gets_404(gateway, alice):
    assert_error(
        post(gateway, alice.headers, json={"model": "no-such-model", **CHAT}),
        404,
        "model_not_found",
    )


def test_upstream_refusing_before_first_token_gets_502(sdk, alice, make_route):
    model = make_route(("openai", refused_base_url(), "gpt-x"))
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(alice).chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.status_code == 502
    record = wait_for_audit(raised.value.response.headers["x-sluice-stream-id"])
    assert record.outcome == "upstream_error"
    assert record.error_class == "connect_error"
    assert [a.error_class for a in record.attempts.all()] == ["connect_error"]


def test_upstream_400_is_passed_through(gateway, alice, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, fault="http_400")
    model = make_route(("openai", upstream.base_url, upstream_model))
    response = post(gateway, alice.headers, json={"model": model, **CHAT})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_failure_after_first_token_ends_with_error_event_then_done(
    gateway, alice, make_route, upstream
):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["one", " two", " three"], fault="die", fault_after=2)
    model = make_route(("openai", upstream.base_url, upstream_model))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": model, **CHAT},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert '"error"' in data[-2]
    assert "one" in data[1]
    record = wait_for_audit(response.headers["x-sluice-stream-id"])
    assert record.outcome == "upstream_error"
    assert record.response_text == "one two"


def test_sdk_raises_on_midstream_error(sdk, alice, make_route, upstream):
    upstream_model = unique("up")
    upstream.script(upstream_model, tokens=["a", "b", "c"], fault="die", fault_after=1)
    model = make_route(("openai", upstream.base_url, upstream_model))
    client = sdk(alice)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "x"}]
        ):
            pass


def test_method_not_allowed(gateway, alice):
    response = httpx.get(f"{gateway.url}/v1/chat/completions", headers=alice.headers)
    assert_error(response, 405)


def test_an_api_path_that_does_not_exist_is_a_json_404_the_sdk_reads(sdk, gateway, alice):
    """An SDK call Sluice does not serve (moderations here) gets OpenAI's own answer to
    an unknown URL, not Django's HTML page; so does a malformed stream id."""
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(alice).moderations.create(model="any", input="hi")
    assert raised.value.status_code == 404
    assert raised.value.body["message"] == "Invalid URL (POST /v1/moderations)"
    assert raised.value.code == "unknown_url"

    response = httpx.get(f"{gateway.url}/v1/streams/{'x' * 200}", headers=alice.headers)
    assert_error(response, 404, "unknown_url")
    assert response.headers["content-type"] == "application/json"
    # Outside /v1/ Django still answers (its pages, admin and OAuth2 live there).
    assert httpx.get(f"{gateway.url}/nothing-here").headers["content-type"].startswith("text/html")
