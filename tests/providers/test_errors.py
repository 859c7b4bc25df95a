"""The failure hierarchy: what each class means to the router, the breaker and the client."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from streaming.models import RetryOn
from streaming.providers import errors
from streaming.providers.base import error_for_status, error_for_transport
from streaming.providers.errors import UpstreamError

# (class, error_class, retry_kind, counts against the breaker / retryable)
HIERARCHY = [
    (errors.ConnectError, "connect_error", "connect_error", True),
    (errors.Timeout, "timeout", "timeout", True),
    (errors.FirstTokenTimeout, "first_token_timeout", "timeout", True),
    (errors.Stall, "stall", "timeout", True),
    (errors.RateLimited, "rate_limited", "rate_limited", True),
    (errors.ServerError, "server_error", "server_error", True),
    (errors.ProtocolError, "protocol_error", "server_error", True),
    (errors.ProviderError, "provider_error", "server_error", True),
    (errors.AuthError, "auth_error", "auth_error", True),
    (errors.ClientError, "client_error", None, False),
    (errors.ContentFilter, "content_filter", "content_filter", False),
    (errors.ContextLength, "context_length", "context_length", False),
    (errors.NoTarget, "no_target", None, False),
    (errors.CircuitOpen, "circuit_open", None, False),
]


@pytest.mark.parametrize(("cls", "label", "kind", "target_failure"), HIERARCHY)
def test_each_class_says_what_its_failure_means(cls, label, kind, target_failure) -> None:
    error = cls("it failed")
    assert (error.error_class, error.retry_kind) == (label, kind)
    assert error.counts_against_breaker is target_failure
    assert error.retryable is target_failure
    assert error.message == str(error) == "it failed"
    assert isinstance(error, UpstreamError)


def test_every_class_is_in_the_table_with_its_own_label() -> None:
    concrete = {
        cls
        for name in errors.__all__
        if isinstance(cls := getattr(errors, name), type) and "error_class" in vars(cls)
    }
    assert concrete == {row[0] for row in HIERARCHY}
    assert len({row[1] for row in HIERARCHY}) == len(HIERARCHY)


@pytest.mark.parametrize("kind", sorted({row[2] for row in HIERARCHY if row[2]}))
def test_every_retry_kind_is_a_policy_choice(kind) -> None:
    assert kind in RetryOn.values


def test_timeouts_and_stream_failures_group_like_httpx() -> None:
    assert issubclass(errors.Stall, errors.Timeout)
    assert issubclass(errors.FirstTokenTimeout, errors.Timeout)
    assert issubclass(errors.ProtocolError, errors.ServerError)
    assert issubclass(errors.ContextLength, errors.ClientError)
    assert issubclass(errors.CircuitOpen, errors.RouteExhausted)


@pytest.mark.parametrize("status", [400, 413, 422, 429])
def test_the_request_s_fault_and_rate_limits_pass_their_status_through(status) -> None:
    assert errors.ClientError("no", status=status).client_status == status
    assert errors.RateLimited("slow down", status=429).client_status == 429


@pytest.mark.parametrize(
    "error",
    [
        errors.ServerError("down", status=500),
        errors.AuthError("bad key", status=401),
        errors.ClientError("not found", status=404),
        errors.RateLimited("mid-stream rate limit"),
        errors.ConnectError("refused"),
        errors.Stall("silent"),
        errors.ProtocolError("truncated"),
    ],
)
def test_other_failures_are_the_gateway_s_502(error) -> None:
    assert error.client_status == 502


@pytest.mark.parametrize("cls", [errors.NoTarget, errors.CircuitOpen])
def test_nothing_tried_is_503(cls) -> None:
    assert cls("no healthy target").client_status == 503
    assert cls("no healthy target", status=429).client_status == 503


def body(message: str, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@pytest.mark.parametrize(
    ("status", "error_body", "cls"),
    [
        (429, body("Rate limit reached"), errors.RateLimited),
        (500, body("boom"), errors.ServerError),
        (529, "Overloaded", errors.ServerError),
        (401, body("Incorrect API key provided"), errors.AuthError),
        (403, body("forbidden"), errors.AuthError),
        (400, body("bad", code="context_length_exceeded"), errors.ContextLength),
        (400, body("This model's maximum context length is 8192 tokens"), errors.ContextLength),
        (400, {"error": {"type": "x", "message": "prompt is too long"}}, errors.ContextLength),
        (400, body("refused", code="content_filter"), errors.ContentFilter),
        (403, body("refused", code="content_filter"), errors.AuthError),
        (422, body("no", code="content_policy_violation"), errors.ContentFilter),
        (400, body("temperature must be <= 2"), errors.ClientError),
        (413, body("context length"), errors.ClientError),  # only a 400 is the prompt's length
        (404, "Not Found", errors.ClientError),
    ],
)
def test_error_for_status_picks_the_class(status, error_body, cls) -> None:
    error = error_for_status(status, CIMultiDict(), error_body)
    assert type(error) is cls
    assert (error.status, error.body) == (status, error_body)
    assert error.message.startswith(f"upstream returned HTTP {status}")


def test_a_rate_limit_carries_retry_after() -> None:
    error = error_for_status(429, CIMultiDict({"retry-after": "3"}), body("slow down"))
    assert isinstance(error, errors.RateLimited) and error.retry_after == 3.0


@pytest.mark.parametrize(
    ("exc", "responded", "cls"),
    [
        (aiohttp.ClientConnectionError(), False, errors.ConnectError),
        (aiohttp.ConnectionTimeoutError(), False, errors.ConnectError),
        (TimeoutError(), False, errors.Timeout),
        (aiohttp.ClientPayloadError(), True, errors.ProtocolError),
        (TimeoutError(), True, errors.ProtocolError),
    ],
)
def test_error_for_transport_picks_the_class(exc, responded, cls) -> None:
    assert type(error_for_transport(exc, responded=responded)) is cls
