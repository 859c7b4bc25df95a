"""The pieces without a server: log formatting, scrape access, dashboard merging."""

from __future__ import annotations

import contextvars
import json
import logging

import pytest

from streaming.observability import livestats
from streaming.observability.export import metrics_allowed
from streaming.observability.logging import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind,
    request_id,
    warn_throttled,
)


def record(message: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("sluice.stream", logging.INFO, __file__, 1, message, None, None)
    rec.fields = fields
    ContextFilter().filter(rec)
    return rec


def test_json_lines_carry_the_bound_ids_and_the_line_fields() -> None:
    def log_in_a_request() -> str:
        bind(request_id="req-1")
        return JsonFormatter().format(record("stream end", outcome="completed"))

    line = json.loads(contextvars.copy_context().run(log_in_a_request))
    assert line["message"] == "stream end"
    assert line["request_id"] == "req-1"
    assert line["outcome"] == "completed"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")


def test_text_lines_append_fields() -> None:
    text = TextFormatter().format(record("stream end", ttft_ms=12.345, app="my app"))
    assert text.endswith('ttft_ms=12.3 app="my app"')


@pytest.mark.parametrize(
    ("given", "kept"), [(b"abc-123", True), (b"x" * 65, False), (b"a b", False), (b"", False)]
)
def test_request_ids_from_clients_are_kept_only_when_plain(given: bytes, kept: bool) -> None:
    value = request_id([(b"x-request-id", given)])
    assert (value == given.decode()) is kept
    assert value


def test_metrics_access(settings) -> None:
    settings.SLUICE_METRICS_TOKEN = "tok"
    settings.SLUICE_METRICS_ALLOWED_NETWORKS = ["10.1.0.0/16", "::1/128"]
    assert metrics_allowed("10.1.2.3", None)
    assert metrics_allowed("::1", None)
    assert not metrics_allowed("127.0.0.1", None)
    assert not metrics_allowed(None, "Bearer nope")
    assert metrics_allowed("127.0.0.1", "Bearer tok")
    assert not metrics_allowed("127.0.0.1", "Basic tok")


def snapshot(instance: str, **overrides: object) -> dict:
    base = {
        "instance": instance,
        "at": 0.0,
        "active": 1,
        "history": [[100, 1, 10.0], [101, 1, 20.0]],
        "ttft": [0.1, 0.2],
        "providers": {"openai": [10, 1, 1]},
        "breakers": {"openai": "closed"},
        "audit": {"queue_depth": 2},
        "streams": [{"age": 1.0, "id": instance}],
    }
    return {**base, **overrides}


def test_instances_merge_into_one_view() -> None:
    merged = livestats.merge(
        [snapshot("a"), snapshot("b", breakers={"openai": "open"}, ttft=[0.3, 0.4, 0.5])]
    )
    assert merged["active"] == 2
    assert merged["history"][-1] == [101, 2, 40.0]
    assert merged["tokens_per_second"] == 40.0
    assert merged["ttft_p50"] == 0.3
    [provider] = merged["providers"]
    assert provider["attempts"] == 20 and provider["error_rate"] == 0.1
    assert provider["breaker"] == "open"
    assert merged["audit_queue_depth"] == 4
    assert len(merged["streams"]) == 2


def test_a_second_not_every_instance_has_sampled_yet_is_left_out() -> None:
    # b (idle) samples just after a (busy) each second: its newest second has
    # no rate from a yet, and must not read as "0 tokens/s".
    busy = snapshot("a", history=[[100, 3, 50.0], [101, 3, 60.0]])
    idle = snapshot("b", active=0, history=[[100, 0, 0.0], [101, 0, 0.0], [102, 0, 0.0]])

    merged = livestats.merge([busy, idle])

    assert merged["tokens_per_second"] == 60.0
    assert merged["history"][-1] == [101, 3, 60.0]


def test_a_throttled_warning_says_how_many_were_held_back(caplog) -> None:
    logger = logging.getLogger("sluice.test.throttle")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(5):
            warn_throttled(logger, "redis is %s", "down", every=3600)
        warn_throttled(logger, "another message", every=3600)
    assert [r.getMessage() for r in caplog.records] == ["redis is down", "another message"]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(3):
            warn_throttled(logger, "redis is %s", "down", every=0)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("redis is down (4 more held back in the last ")
    assert messages[1:] == ["redis is down", "redis is down"]
