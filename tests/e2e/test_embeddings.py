"""POST /v1/embeddings through a served gateway, with the official OpenAI SDK."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest import unique, wait_for_audit
from tests.fakes import wire
from tests.fakes.upstream import FakeUpstream, refused_base_url
from tests.metrics.conftest import scrape

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

KEY = "sk-upstream-secret"


def openai_route(make_route: Callable[..., str], upstream: FakeUpstream, *models: str, **kw) -> str:
    targets = [("openai", upstream.base_url, m) for m in models]
    return make_route(*targets, api_key=KEY, prefix="embed", **kw)


def decode(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def post(gateway, actor, body) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/embeddings", headers=actor.headers, json=body, timeout=20)


def test_one_input(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("emb")
    model = openai_route(make_route, upstream, upstream_model)

    # The SDK asks for base64 when no format is given, and decodes it.
    response = sdk(alice).embeddings.create(model=model, input="The food was delicious")

    assert response.object == "list"
    assert [(d.object, d.index) for d in response.data] == [("embedding", 0)]
    assert response.data[0].embedding == wire.fake_embedding("The food was delicious", 8)
    assert response.model == upstream_model
    assert response.usage.prompt_tokens == 4 and response.usage.total_tokens == 4
    sent = upstream.requests_for(upstream_model)[0]
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": upstream_model,
        "input": "The food was delicious",
        "encoding_format": "base64",
    }


def test_a_batch_keeps_its_order(gateway, alice, sdk, make_route, upstream):
    model = openai_route(make_route, upstream, unique("emb"))
    texts = ["first", "second one", "the third"]

    response = sdk(alice).embeddings.create(model=model, input=texts, encoding_format="float")

    assert [d.index for d in response.data] == [0, 1, 2]
    assert [d.embedding for d in response.data] == [wire.fake_embedding(t, 8) for t in texts]
    assert response.usage.prompt_tokens == 5


def test_token_arrays_dimensions_and_user_pass_through(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("emb")
    model = openai_route(make_route, upstream, upstream_model)

    response = sdk(alice).embeddings.create(
        model=model,
        input=[[1, 2, 3], [4, 5]],
        dimensions=4,
        user="user-42",
        encoding_format="float",
    )

    assert [len(d.embedding) for d in response.data] == [4, 4]
    assert response.usage.prompt_tokens == 5
    sent = upstream.requests_for(upstream_model)[0].body
    assert sent["input"] == [[1, 2, 3], [4, 5]]
    assert (sent["dimensions"], sent["user"], sent["encoding_format"]) == (4, "user-42", "float")


def test_base64_is_relayed_as_sent(gateway, alice, make_route, upstream):
    model = openai_route(make_route, upstream, unique("emb"))

    response = post(
        gateway, alice, {"model": model, "input": ["a", "b"], "encoding_format": "base64"}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    vectors = [decode(d["embedding"]) for d in body["data"]]
    assert vectors == [wire.fake_embedding("a", 8), wire.fake_embedding("b", 8)]


@pytest.mark.parametrize(
    ("first", "error_class"),
    [("refuse", "connect_error"), ("http_500", "server_error"), ("hang", "timeout")],
)
def test_falls_back_to_the_next_target(
    gateway, alice, sdk, make_route, upstream, first, error_class
):
    failing, healthy = unique("down"), unique("up")
    upstream.script(failing, fault=first)
    if first == "refuse":
        model = make_route(
            ("openai", refused_base_url(), failing),
            ("openai", upstream.base_url, healthy),
            api_key=KEY,
        )
    else:
        model = openai_route(make_route, upstream, failing, healthy, first_token_timeout=0.5)

    raw = sdk(alice).embeddings.with_raw_response.create(model=model, input="hello")

    assert raw.parse().data[0].embedding == wire.fake_embedding("hello", 8)
    assert raw.headers["x-sluice-fallback"] == "true"
    assert raw.headers["x-sluice-model"] == healthy
    assert raw.headers["x-sluice-attempts"] == "2"
    record = wait_for_audit(raw.headers["x-sluice-request-id"])
    attempts = list(record.attempts.order_by("index"))
    assert [(a.outcome, a.error_class) for a in attempts] == [("failed", error_class), ("ok", "")]


def test_a_rate_limit_on_the_last_target_reaches_the_client(
    gateway, alice, sdk, make_route, upstream
):
    upstream_model = unique("emb")
    upstream.script(upstream_model, fault="http_429", retry_after=0.01)
    model = openai_route(make_route, upstream, upstream_model, attempts_per_target=2)

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(alice).embeddings.create(model=model, input="x")

    assert caught.value.status_code == 429
    assert "Rate limit reached" in caught.value.message
    assert len(upstream.requests_for(upstream_model)) == 2  # tried again after its Retry-After


def test_an_upstream_client_error_is_passed_on(gateway, alice, sdk, make_route, upstream):
    upstream_model = unique("emb")
    upstream.script(upstream_model, fault="http_400")
    model = openai_route(make_route, upstream, upstream_model)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(alice).embeddings.create(model=model, input="x")

    assert caught.value.status_code == 400
    assert caught.value.body["message"] == "Invalid value for 'messages'."  # the upstream's words
    assert len(upstream.requests_for(upstream_model)) == 1  # not the target's fault: no retry


def test_a_model_the_app_may_not_use_is_403(sdk, make_actor, make_route, upstream):
    allowed = openai_route(make_route, upstream, unique("emb"))
    other = openai_route(make_route, upstream, unique("emb"))
    charlie = make_actor("charlie", models=[allowed])

    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(charlie).embeddings.create(model=other, input="x")

    assert caught.value.code == "model_not_allowed"


def test_an_unknown_model_is_404(gateway, alice, sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(alice).embeddings.create(model=unique("nowhere"), input="x")

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["ok", 7]}, "input[1]"),
        ({"input": [[1, 2], []]}, "input[1]"),
        ({"input": ["a", [1, 2]]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "bogus": 1}, "bogus"),
        ({"input": "x", "model": None}, "model"),
    ],
)
def test_bad_input_is_400_with_its_param(gateway, alice, make_route, upstream, body, param):
    model = openai_route(make_route, upstream, unique("emb"))

    response = post(gateway, alice, {"model": model, **body})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert error["message"]


def test_an_anthropic_only_route_has_no_embeddings(gateway, alice, sdk, make_route, upstream):
    model = make_route(("anthropic", upstream.base_url, unique("claude")), api_key=KEY)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(alice).embeddings.create(model=model, input="x")

    assert caught.value.code == "model_not_supported"
    assert f"the model '{model}' has no embeddings provider" in caught.value.message
    assert upstream.requests_for(model) == []


def test_anthropic_targets_are_skipped(gateway, alice, sdk, make_route, upstream):
    claude, embedder = unique("claude"), unique("emb")
    model = make_route(
        ("anthropic", upstream.base_url, claude),
        ("openai", upstream.base_url, embedder),
        api_key=KEY,
    )

    raw = sdk(alice).embeddings.with_raw_response.create(model=model, input="x")

    assert raw.headers["x-sluice-attempts"] == "1"
    assert raw.headers["x-sluice-fallback"] == "false"
    assert raw.headers["x-sluice-model"] == embedder
    assert upstream.requests_for(claude) == []


def test_one_audit_record_without_the_vectors(gateway, alice, make_route, upstream):
    upstream_model = unique("emb")
    model = openai_route(make_route, upstream, upstream_model)

    response = post(
        gateway, alice, {"model": model, "input": ["alpha beta", "gamma"], "dimensions": 6}
    )

    assert response.status_code == 200, response.text
    record = wait_for_audit(response.headers["x-sluice-request-id"])
    assert record.protocol == "embeddings" and record.outcome == "completed"
    assert record.app_id == alice.app_id and record.public_model == model
    assert record.upstream_model == upstream_model
    assert record.request_messages == ["alpha beta", "gamma"]
    assert record.request_params == {"dimensions": 6}
    assert record.response_text == "2 embeddings of 6 dimensions (float)"
    assert record.usage == {"prompt_tokens": 3, "total_tokens": 3}
    assert [a.outcome for a in record.attempts.all()] == ["ok"]
    assert record.duration_ms is not None and record.client_ip == "127.0.0.1"
    vector = response.json()["data"][0]["embedding"]
    assert str(vector[1]) not in str(record.__dict__)


def test_a_failed_request_is_audited_and_counted(gateway, alice, sdk, make_route, upstream):
    model = make_route(("openai", refused_base_url(), "gone"), api_key=KEY)

    raw = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=alice.headers,
        json={"model": model, "input": "x"},
        timeout=20,
    )

    assert raw.status_code == 502
    assert raw.json()["error"]["code"] == "connect_error"
    record = wait_for_audit(raw.headers["x-sluice-request-id"])
    assert (record.outcome, record.error_class) == ("upstream_error", "connect_error")
    metrics = scrape(gateway)
    labels = {"route": model, "outcome": "upstream_error"}
    assert metrics.value("sluice_embedding_requests_total", **labels) == 1
    assert metrics.value("sluice_upstream_errors_total", error_class="connect_error") >= 1


def test_the_demo_provider_embeds(gateway, alice, sdk, demo_model):
    client = sdk(alice)

    first = client.embeddings.create(model=demo_model, input=["same", "other", "same"])
    again = client.embeddings.create(model=demo_model, input="same", dimensions=32)

    vectors = [d.embedding for d in first.data]
    assert len(vectors[0]) == 256
    assert vectors[0] == vectors[2] != vectors[1]  # deterministic, one per input
    assert math.isclose(math.fsum(v * v for v in vectors[0]), 1.0, rel_tol=1e-5)
    assert len(again.data[0].embedding) == 32
    assert first.usage.prompt_tokens == 3
    metrics = scrape(gateway)
    labels = {"route": demo_model, "outcome": "completed"}
    assert metrics.value("sluice_embedding_requests_total", **labels) == 2
    assert metrics.value("sluice_embedding_inputs_total", route=demo_model) == 4
