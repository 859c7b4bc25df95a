"""Each upstream fault, end to end: what the client sees (OpenAI SDK and
WebSocket), what the audit holds, and that no upstream request stays open.

Routes have a faulty first target and a healthy second one, unless a test
says otherwise. The gateway is a real uvicorn process; the upstream is the
fault-injecting fake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from streaming.routing.continuation import CONTINUE_INSTRUCTION
from tests.conftest import unique, wait_for_audit
from tests.fakes.upstream import refused_base_url
from tests.routing.conftest import HELLO, attempts, ws_chat, ws_text

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

HEALTHY = ["Hello", " from", " the", " backup."]
TIMEOUTS = {"first_token_timeout": 0.5, "stall_timeout": 0.5, "backoff_seconds": 0.01}


@dataclass
class Outcome:
    """What one client got: the text, the error (if any) and the stream id."""

    text: str
    error: Any
    stream_id: str
    status: int | None = None


def via_sdk(sdk: Any, actor: Any, model: str) -> Outcome:
    chunks: list[Any] = []
    try:
        for chunk in sdk(actor).chat.completions.create(model=model, stream=True, messages=HELLO):
            chunks.append(chunk)
    except openai.APIStatusError as error:  # failed before the stream began
        return Outcome("", error, error.response.headers["x-sluice-stream-id"], error.status_code)
    except openai.APIError as error:  # an error event mid-stream
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return Outcome(text, error, chunks[0].id)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return Outcome(text, None, chunks[0].id)


def via_ws(gateway: Any, actor: Any, model: str) -> Outcome:
    messages = ws_chat(gateway, actor, model)
    assert messages[0]["type"] == "stream.created" and messages[-1]["type"] == "stream.done"
    errors = [m for m in messages if m["type"] == "error"]
    seqs = [m["seq"] for m in messages[1:]]
    assert seqs == list(range(1, len(seqs) + 1))  # one unbroken sequence
    return Outcome(ws_text(messages), errors[0] if errors else None, messages[0]["stream_id"])


@pytest.fixture
def clients(gateway, sdk, alice):
    """Both ways to chat: each test runs its scenario through the SDK, then a WebSocket."""
    return [lambda model: via_sdk(sdk, alice, model), lambda model: via_ws(gateway, alice, model)]


def scripted(upstream, **script: Any) -> str:
    name = unique("up")
    upstream.script(name, **script)
    return name


# -- before the first token: transparent fallback ------------------------------
BEFORE_FIRST_TOKEN = {
    "refuse": ({"fault": "refuse"}, "connect_error"),
    "http_500": ({"fault": "http_500"}, "server_error"),
    "http_429": ({"fault": "http_429", "retry_after": 1}, "rate_limited"),
    "hang": ({"fault": "hang"}, "first_token_timeout"),
    "malformed": ({"fault": "malformed", "fault_after": 0}, "protocol_error"),
}


def faulty_target(upstream, fault: str, script: dict[str, Any]) -> tuple[str, str, str]:
    if fault == "refuse":  # nothing listens: a real connection refusal
        return ("openai", refused_base_url(), "gpt-x")
    return ("openai", upstream.base_url, scripted(upstream, **script))


@pytest.mark.parametrize("fault", BEFORE_FIRST_TOKEN)
def test_failure_before_first_token_falls_back_transparently(clients, fault, upstream, make_route):
    script, error_class = BEFORE_FIRST_TOKEN[fault]
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        faulty_target(upstream, fault, script), ("openai", upstream.base_url, backup), **TIMEOUTS
    )

    for chat in clients:
        got = chat(model)

        assert got.error is None
        assert got.text == "Hello from the backup."
        record = wait_for_audit(got.stream_id)
        assert record.outcome == "completed" and record.upstream_model == backup
        assert attempts(record) == [("failed", error_class, False), ("ok", "", False)]
        assert record.continued is False
        assert upstream.wait_open_requests(0)


@pytest.mark.parametrize("fault", BEFORE_FIRST_TOKEN)
def test_failure_before_first_token_with_no_fallback_is_an_error(
    clients, fault, upstream, make_route
):
    script, error_class = BEFORE_FIRST_TOKEN[fault]
    model = make_route(faulty_target(upstream, fault, script), **TIMEOUTS)

    for chat in clients:
        got = chat(model)

        assert got.text == "" and got.error is not None
        if isinstance(got.error, dict):  # WebSocket: an error message, then stream.done
            assert got.error["error"]["code"] == (
                "rate_limit_exceeded" if fault == "http_429" else error_class
            )
        else:
            assert got.status == (429 if fault == "http_429" else 502)
        record = wait_for_audit(got.stream_id)
        assert record.outcome == "upstream_error" and record.error_class == error_class
        assert attempts(record) == [("failed", error_class, False)]
        assert upstream.wait_open_requests(0)


def test_retry_after_is_honoured_before_retrying_the_same_target(sdk, alice, upstream, make_route):
    limited = scripted(upstream, fault="http_429", retry_after=1)
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, limited),
        ("openai", upstream.base_url, backup),
        attempts_per_target=2,
        backoff_seconds=0.01,
    )

    got = via_sdk(sdk, alice, model)

    assert got.text == "Hello from the backup."
    first, second = upstream.requests_for(limited)
    assert second.received_at - first.received_at >= 0.95  # Retry-After: 1, not the 10 ms backoff
    # ...but the backup was not made to wait for the first provider's Retry-After
    # (had it waited, this gap would be at least the 1 s the 429 asked for).
    assert upstream.requests_for(backup)[0].received_at - second.received_at < 0.9
    record = wait_for_audit(got.stream_id)
    assert attempts(record) == [
        ("failed", "rate_limited", False),
        ("failed", "rate_limited", False),
        ("ok", "", False),
    ]


def test_failures_the_route_does_not_retry_go_to_the_client(sdk, alice, upstream, make_route):
    broken = scripted(upstream, fault="http_500")
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, broken),
        ("openai", upstream.base_url, backup),
        retry_on=["connect_error", "timeout"],
    )

    got = via_sdk(sdk, alice, model)

    assert got.status == 502
    assert upstream.requests_for(backup) == []
    assert attempts(wait_for_audit(got.stream_id)) == [("failed", "server_error", False)]


def test_content_filter_refusal_falls_back_when_the_route_says_so(sdk, alice, upstream, make_route):
    refusing = scripted(upstream, tokens=[], finish_reason="content_filter")
    backup = scripted(upstream, tokens=HEALTHY)
    targets = (("openai", upstream.base_url, refusing), ("openai", upstream.base_url, backup))

    passed_on = via_sdk(sdk, alice, make_route(*targets))
    fell_back = via_sdk(
        sdk,
        alice,
        make_route(*targets, retry_on=["connect_error", "server_error", "content_filter"]),
    )

    assert passed_on.text == "" and passed_on.error is None  # the refusal, as the client's answer
    assert fell_back.text == "Hello from the backup."
    record = wait_for_audit(fell_back.stream_id)
    assert attempts(record) == [("failed", "content_filter", False), ("ok", "", False)]


# -- during the stream ---------------------------------------------------------
MID_STREAM = {
    "die": ({"fault": "die"}, "protocol_error"),
    "stall": ({"fault": "stall"}, "stall"),
    "malformed": ({"fault": "malformed"}, "protocol_error"),
    "error_event": ({"fault": "error_event"}, "provider_error"),
}
FIRST = ["The", " quick", " brown", " fox"]  # dies after three tokens
SECOND = [" brown", " fox", " jumps", " over."]  # repeats two words, then goes on


@pytest.mark.parametrize("fault", MID_STREAM)
def test_midstream_failure_without_continuation_ends_with_an_error(
    clients, fault, upstream, make_route
):
    script, error_class = MID_STREAM[fault]
    first = scripted(upstream, tokens=FIRST, fault_after=3, **script)
    backup = scripted(upstream, tokens=SECOND)
    model = make_route(
        ("openai", upstream.base_url, first), ("openai", upstream.base_url, backup), **TIMEOUTS
    )

    for chat in clients:
        got = chat(model)

        assert got.text == "The quick brown"
        assert got.error is not None
        record = wait_for_audit(got.stream_id)
        assert record.outcome == "upstream_error" and record.response_text == "The quick brown"
        assert attempts(record) == [("failed", error_class, False)]
        assert upstream.requests_for(backup) == []
        assert upstream.wait_open_requests(0)


@pytest.mark.parametrize("fault", MID_STREAM)
def test_midstream_failure_continues_on_the_next_target(clients, fault, upstream, make_route):
    script, error_class = MID_STREAM[fault]
    first = scripted(upstream, tokens=FIRST, fault_after=3, **script)
    backup = scripted(upstream, tokens=SECOND)
    model = make_route(
        ("openai", upstream.base_url, first),
        ("openai", upstream.base_url, backup),
        allow_midstream_fallback=True,
        **TIMEOUTS,
    )

    for chat in clients:
        got = chat(model)

        assert got.error is None
        assert got.text == "The quick brown fox jumps over."  # the repeated " brown" trimmed
        sent = upstream.requests_for(backup)[0].body["messages"]
        assert sent == [
            *HELLO,
            {"role": "assistant", "content": "The quick brown"},
            {"role": "user", "content": CONTINUE_INSTRUCTION},
        ]
        record = wait_for_audit(got.stream_id)
        assert record.outcome == "completed" and record.continued is True
        assert record.response_text == got.text
        assert attempts(record) == [("failed", error_class, False), ("ok", "", True)]
        assert [a.tokens for a in record.attempts.all()] == [3, 4]
        assert upstream.wait_open_requests(0)


def test_no_continuation_once_a_tool_call_started(clients, upstream, make_route):
    first = scripted(
        upstream,
        text="Let me check.",
        tool_name="get_weather",
        tool_arguments=['{"city": ', '"Paris"}'],
        fault="die",
        fault_after=4,  # three words, then the tool call's first fragment
    )
    backup = scripted(upstream, tokens=SECOND)
    model = make_route(
        ("openai", upstream.base_url, first),
        ("openai", upstream.base_url, backup),
        allow_midstream_fallback=True,
    )

    for chat in clients:
        got = chat(model)

        assert got.text == "Let me check." and got.error is not None
        assert upstream.requests_for(backup) == []
        record = wait_for_audit(got.stream_id)
        assert record.continued is False
        assert attempts(record) == [("failed", "protocol_error", False)]
        assert "not continued: tool call" in record.attempts.get().error_message
        assert upstream.wait_open_requests(0)


def test_a_continuation_can_itself_be_continued(sdk, alice, upstream, make_route):
    first = scripted(upstream, tokens=["One", " two"], fault="die", fault_after=2)
    second = scripted(upstream, tokens=[" three", " four"], fault="die", fault_after=1)
    third = scripted(upstream, tokens=[" three", " four", " five."])
    model = make_route(
        ("openai", upstream.base_url, first),
        ("openai", upstream.base_url, second),
        ("openai", upstream.base_url, third),
        allow_midstream_fallback=True,
    )

    got = via_sdk(sdk, alice, model)

    assert got.text == "One two three four five."
    record = wait_for_audit(got.stream_id)
    assert [a.continuation for a in record.attempts.all()] == [False, True, True]
    assert upstream.requests_for(third)[0].body["messages"][-2]["content"] == "One two three"


def test_abandoned_stream_closes_its_upstream_request(gateway, alice, upstream, make_route):
    import httpx

    slow = scripted(upstream, tokens=100, delay=0.1)
    model = make_route(("openai", upstream.base_url, slow))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": model, "stream": True, "messages": HELLO},
        timeout=20,
    ) as response:
        next(response.iter_lines())
        stream_id = response.headers["x-sluice-stream-id"]
    # The client left; the gateway abandons the stream after 2 s and closes the upstream call.
    record = wait_for_audit(stream_id, timeout=15)
    assert record.outcome in ("client_disconnected", "abandoned")
    assert upstream.wait_open_requests(0)
    assert attempts(record)[0][0] == "cancelled"


# -- the policy per failure kind ---------------------------------------------------
def test_a_silent_target_costs_one_timeout_then_the_next_target_answers(
    sdk, alice, upstream, make_route
):
    silent = scripted(upstream, tokens=HEALTHY, ttft=5)  # never a first token in time
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, silent),
        ("openai", upstream.base_url, backup),
        attempts_per_target=3,
        **TIMEOUTS,
    )

    got = via_sdk(sdk, alice, model)

    assert got.text == "Hello from the backup."
    assert len(upstream.requests_for(silent)) == 1  # not three first-token timeouts
    assert attempts(wait_for_audit(got.stream_id)) == [
        ("failed", "first_token_timeout", False),
        ("ok", "", False),
    ]


def test_a_server_error_is_tried_again_on_the_same_target_first(sdk, alice, upstream, make_route):
    broken = scripted(upstream, fault="http_500")
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, broken),
        ("openai", upstream.base_url, backup),
        attempts_per_target=2,
        **TIMEOUTS,
    )

    got = via_sdk(sdk, alice, model)

    assert got.text == "Hello from the backup."
    assert len(upstream.requests_for(broken)) == 2
    assert [a[1] for a in attempts(wait_for_audit(got.stream_id))] == [
        "server_error",
        "server_error",
        "",
    ]


def test_a_route_may_retry_timeouts_on_the_same_target_if_ops_say_so(
    sdk, alice, upstream, make_route
):
    silent = scripted(upstream, tokens=HEALTHY, ttft=5)
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, silent),
        ("openai", upstream.base_url, backup),
        attempts_per_target=2,
        retry_same_target_on=["timeout"],
        **TIMEOUTS,
    )

    assert via_sdk(sdk, alice, model).text == "Hello from the backup."
    assert len(upstream.requests_for(silent)) == 2


# -- what the client is told about who answered ----------------------------------
def sse_chunks(gateway, actor, model, **params):
    """The chunks of one raw SSE stream, and the response headers."""
    body = {"model": model, "stream": True, "messages": HELLO, **params}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", headers=actor.headers, json=body
    ) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
        return [json.loads(line) for line in lines], response.headers


def test_after_a_fallback_the_client_sees_the_model_that_answered(
    gateway, alice, upstream, make_route
):
    broken = scripted(upstream, fault="http_500")
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, broken), ("openai", upstream.base_url, backup), **TIMEOUTS
    )

    chunks, headers = sse_chunks(gateway, alice, model)

    assert {chunk["model"] for chunk in chunks} == {backup}
    record = wait_for_audit(headers["x-sluice-stream-id"])
    assert headers["x-sluice-provider"] == record.attempts.last().provider
    assert headers["x-sluice-model"] == backup
    assert headers["x-sluice-fallback"] == "true"
    assert headers["x-sluice-attempts"] == "2"

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": model, "messages": HELLO},
    )
    assert response.json()["model"] == backup
    assert response.headers["x-sluice-model"] == backup


def test_a_continuation_switches_the_chunks_model_and_usage_covers_both_attempts(
    gateway, alice, upstream, make_route
):
    first = scripted(upstream, tokens=FIRST, fault="die", fault_after=3)
    backup = scripted(upstream, tokens=SECOND)
    model = make_route(
        ("openai", upstream.base_url, first),
        ("openai", upstream.base_url, backup),
        allow_midstream_fallback=True,
        **TIMEOUTS,
    )

    chunks, headers = sse_chunks(gateway, alice, model, stream_options={"include_usage": True})

    models = [chunk["model"] for chunk in chunks]
    switch = models.index(backup)
    assert set(models[:switch]) == {first} and set(models[switch:]) == {backup}
    assert headers["x-sluice-model"] == first  # who sent the first token
    record = wait_for_audit(headers["x-sluice-stream-id"])
    generated = [a.tokens for a in record.attempts.all()]
    assert chunks[-1]["usage"]["completion_tokens"] == sum(generated)
    assert record.usage["completion_tokens"] == sum(generated)


# -- what an upstream said, and the failures a route may choose ---------------------
@pytest.mark.parametrize(("kind", "said"), [("openai", "Incorrect API key provided.")])
def test_a_refused_key_says_why_and_is_a_failure_kind_of_its_own(
    sdk, alice, upstream, make_route, kind, said
):
    refusing = scripted(upstream, fault="http_401")
    model = make_route((kind, upstream.base_url, refusing), **TIMEOUTS)

    got = via_sdk(sdk, alice, model)

    assert got.status == 502  # the client's own token is fine: not a 401 for it
    assert got.error.body["code"] == "auth_error" and said in got.error.body["message"]
    record = wait_for_audit(got.stream_id)
    assert record.error_class == "auth_error" and said in record.error_message
    assert said in record.attempts.get().error_message


def test_a_route_may_fall_back_when_the_upstream_refuses_its_key(sdk, alice, upstream, make_route):
    refusing = scripted(upstream, fault="http_403")
    backup = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        ("openai", upstream.base_url, refusing),
        ("openai", upstream.base_url, backup),
        retry_on=["auth_error"],
        **TIMEOUTS,
    )

    assert via_sdk(sdk, alice, model).text == "Hello from the backup."


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_context_length_exceeded_goes_to_the_next_target_when_the_route_says_so(
    sdk, alice, upstream, make_route, kind
):
    small = scripted(upstream, fault="context_length")
    big = scripted(upstream, tokens=HEALTHY)
    model = make_route(
        (kind, upstream.base_url, small),
        (kind, upstream.base_url, big),
        retry_on=["context_length", "server_error"],
        attempts_per_target=2,
        **TIMEOUTS,
    )

    got = via_sdk(sdk, alice, model)

    assert got.text == "Hello from the backup."
    assert len(upstream.requests_for(small)) == 1  # never retried: it would not fit again
    assert attempts(wait_for_audit(got.stream_id))[0] == ("failed", "context_length", False)


def test_context_length_exceeded_is_the_clients_400_by_default(sdk, alice, upstream, make_route):
    small = scripted(upstream, fault="context_length")
    big = scripted(upstream, tokens=HEALTHY)
    model = make_route(("openai", upstream.base_url, small), ("openai", upstream.base_url, big))

    got = via_sdk(sdk, alice, model)

    assert got.status == 400 and got.error.body["code"] == "context_length_exceeded"
    assert upstream.requests_for(big) == []
