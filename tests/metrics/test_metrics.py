"""/metrics against real gateway processes: counters move as streams run and fail,
two worker processes report as one, and only allowed callers may scrape."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.fakes.upstream import refused_base_url
from tests.live import GatewayServer, server_env
from tests.metrics.conftest import Scrape, scrape

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def stream_sse(server: GatewayServer, actor, model: str) -> list[str]:
    """Read one SSE stream to its end; the data lines."""
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        headers=actor.headers,
        json={**CHAT, "model": model},
        timeout=20,
    ) as response:
        assert response.status_code == 200, response.read()
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def wait_for(server: GatewayServer, check, timeout: float = 10.0) -> Scrape:
    """Scrape until ``check(scrape)`` holds (stream ends are counted just after the end)."""
    deadline = time.monotonic() + timeout
    while True:
        result = scrape(server)
        if check(result):
            return result
        assert time.monotonic() < deadline, "metrics did not get there in time"
        time.sleep(0.1)


def test_a_completed_stream_moves_its_counters(workers, alice, demo_model):
    before = scrape(workers.first)
    lines = stream_sse(workers.first, alice, demo_model)
    assert lines[-1] == "[DONE]"
    after = wait_for(
        workers.first, lambda s: s.value("sluice_tokens_relayed_total", route=demo_model) > 0
    )
    route = {"route": demo_model}
    assert after.value("sluice_streams_started_total", transport="sse", **route) == 1
    # The demo provider reports its completion tokens: the answer's words.
    tokens = after.value("sluice_tokens_relayed_total", app=alice.name, **route)
    assert tokens == len(lines) - 3  # minus the role chunk, the finish chunk and [DONE]
    assert after.value("sluice_stream_duration_seconds_count", outcome="completed", **route) == 1
    assert after.value("sluice_ttft_seconds_count", **route) == 1
    assert after.value("sluice_upstream_ttft_seconds_count", **route) == 1
    assert after.value("sluice_gateway_ttft_added_seconds_count", **route) == 1
    assert after.value("sluice_streams_active") == 0

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("sluice_connections_opened_total", transport="sse") == 1
    assert delta("sluice_connections_closed_total", transport="sse", reason="completed") == 1
    assert delta("sluice_sent_bytes_total", transport="sse") > sum(map(len, lines))
    assert delta("sluice_upstream_attempts_total") == 1


def test_websocket_and_ndjson_are_counted_by_transport(workers, alice, demo_model):
    before = scrape(workers.first)
    with connect(
        f"ws://127.0.0.1:{workers.first.port}/v1/ws", additional_headers=alice.headers
    ) as socket:
        socket.send(json.dumps({"type": "chat.create", "model": demo_model, **CHAT}))
        while json.loads(socket.recv(timeout=10))["type"] != "stream.done":
            pass
    with httpx.stream(
        "POST",
        f"{workers.first.url}/v1/chat/completions",
        headers={**alice.headers, "Accept": "application/x-ndjson"},
        json={**CHAT, "model": demo_model},
        timeout=20,
    ) as response:
        assert '"done":true' in response.read().decode()
    after = wait_for(
        workers.first,
        lambda s: (
            s.value("sluice_connections_closed_total", transport="ws")
            > before.value("sluice_connections_closed_total", transport="ws")
        ),
    )
    for transport in ("ws", "ndjson"):
        assert (
            after.value("sluice_streams_started_total", route=demo_model, transport=transport) == 1
        )
        closed = after.value(
            "sluice_connections_closed_total", transport=transport, reason="completed"
        ) - before.value("sluice_connections_closed_total", transport=transport, reason="completed")
        assert closed == 1
        assert after.value("sluice_sent_bytes_total", transport=transport) > before.value(
            "sluice_sent_bytes_total", transport=transport
        )


def test_fallback_before_first_token_and_upstream_errors(workers, alice, make_route):
    model = make_route(
        ("openai", refused_base_url(), "gpt-x"), ("demo", "", "demo"), prefix="fallback"
    )
    assert stream_sse(workers.first, alice, model)[-1] == "[DONE]"
    after = wait_for(
        workers.first, lambda s: s.value("sluice_tokens_relayed_total", route=model) > 0
    )
    [refused] = {
        s.labels["provider"]
        for s in after.samples
        if s.name == "sluice_upstream_errors_total"
        and s.labels["error_class"] == "connect_error"
        and s.labels["provider"].startswith("openai")
        and after.value("sluice_fallbacks_total", provider=s.labels["provider"]) > 0
    }
    assert after.value("sluice_fallbacks_total", provider=refused, phase="before_first_token") == 1
    assert after.value("sluice_upstream_attempts_total", provider=refused) == 1


def test_retries_and_midstream_failures(workers, alice, make_route, upstream):
    upstream.script("dies", tokens=10, fault="die", fault_after=3)
    model = make_route(("openai", upstream.base_url, "dies"), prefix="dies")
    upstream.script("flaky", fault="http_500")
    retried = make_route(
        ("openai", upstream.base_url, "flaky"),
        prefix="flaky",
        attempts_per_target=2,
        backoff_seconds=0.01,
    )
    before = scrape(workers.first)
    lines = stream_sse(workers.first, alice, model)
    assert '"error"' in lines[-2] and lines[-1] == "[DONE]"
    response = httpx.post(
        f"{workers.first.url}/v1/chat/completions",
        headers=alice.headers,
        json={**CHAT, "model": retried},
        timeout=20,
    )
    assert response.status_code == 502
    after = wait_for(
        workers.first,
        lambda s: s.value("sluice_stream_duration_seconds_count", route=retried) == 1,
    )
    assert (
        after.value("sluice_stream_duration_seconds_count", route=model, outcome="upstream_error")
        == 1
    )
    closed = after.value(
        "sluice_connections_closed_total", transport="sse", reason="error"
    ) - before.value("sluice_connections_closed_total", transport="sse", reason="error")
    assert closed == 1
    flaky = [
        s.labels["provider"]
        for s in after.samples
        if s.name == "sluice_upstream_retries_total"
        and s.value == 1
        and s.labels["provider"].startswith("openai")
    ]
    assert any(
        after.value("sluice_upstream_errors_total", provider=p, error_class="server_error") == 2
        for p in flaky
    )


def test_cancel_resume_client_gone_and_abandon(workers, alice, make_route, upstream):
    upstream.script("slow", tokens=400, delay=0.01)
    model = make_route(("openai", upstream.base_url, "slow"), prefix="slow")
    before = scrape(workers.first)
    created = httpx.post(
        f"{workers.first.url}/v1/streams",
        headers=alice.headers,
        json={"model": model, "messages": CHAT["messages"]},
        timeout=10,
    ).json()
    url = f"{workers.first.url}{created['events_url']}"
    # Read a little, leave (client_gone), come back from event 3 (a resume), then cancel.
    with httpx.stream("GET", url, timeout=10) as response:
        next(line for line in response.iter_lines() if line.startswith("id: 3"))
    time.sleep(0.3)
    with httpx.stream("GET", url, headers={"Last-Event-ID": "3"}, timeout=10) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        httpx.delete(url, timeout=10)
        rest = [line for line in lines if line.startswith("data: ")]
        assert '"cancelled"' in rest[-2] and rest[-1] == "data: [DONE]"
    # A stream nobody reads is abandoned after SLUICE_STREAM_ABANDON_SECONDS (2 s here).
    abandoned = httpx.post(
        f"{workers.first.url}/v1/streams",
        headers=alice.headers,
        json={"model": model, "messages": CHAT["messages"]},
        timeout=10,
    )
    assert abandoned.status_code == 201
    after = wait_for(
        workers.first,
        lambda s: s.value("sluice_streams_abandoned_total", route=model) == 1,
        timeout=15,
    )

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("sluice_connections_closed_total", transport="sse", reason="client_gone") == 1
    assert delta("sluice_connections_closed_total", transport="sse", reason="cancelled") == 1
    assert delta("sluice_resumes_total", transport="sse") == 1
    assert delta("sluice_replayed_events_total", transport="sse") >= 1
    assert (
        after.value("sluice_stream_duration_seconds_count", route=model, outcome="cancelled") == 1
    )


def test_a_client_that_stops_reading_is_counted_as_slow(workers, alice, make_route, upstream):
    upstream.script("firehose", tokens=40_000)
    model = make_route(("openai", upstream.base_url, "firehose"), prefix="firehose")
    before = scrape(workers.first)
    with httpx.stream(
        "POST",
        f"{workers.first.url}/v1/chat/completions",
        headers=alice.headers,
        json={**CHAT, "model": model},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        # Read nothing: once the socket buffers are full the server's sends block,
        # and after SLUICE_READER_STALL_SECONDS (1 s here) it cuts us off.
        after = wait_for(
            workers.first,
            lambda s: (
                s.value("sluice_connections_closed_total", transport="sse", reason="slow_client")
                > before.value(
                    "sluice_connections_closed_total", transport="sse", reason="slow_client"
                )
            ),
            timeout=30,
        )
    assert after.value("sluice_connections_active", transport="sse") == 0


def test_a_second_worker_sees_the_first_ones_numbers(workers, alice, demo_model):
    stream_sse(workers.first, alice, demo_model)
    seen = wait_for(
        workers.second,
        lambda s: s.value("sluice_tokens_relayed_total", route=demo_model, app=alice.name) > 0,
    )
    assert seen.value("sluice_streams_started_total", route=demo_model) == 1
    stream_sse(workers.second, alice, demo_model)
    both = wait_for(
        workers.first,
        lambda s: s.value("sluice_streams_started_total", route=demo_model) == 2,
    )
    assert both.value("sluice_stream_duration_seconds_count", route=demo_model) == 2
    # The audit writer lives in each worker; its numbers are mirrored for the scrape.
    wait_for(workers.second, lambda s: s.value("sluice_audit_records_written_total") >= 2)
    assert "sluice_audit_queue_depth" in both.text


def test_scraping_needs_an_allowed_network_or_the_token(django_db_setup):
    server = GatewayServer(
        env=server_env(
            SLUICE_METRICS_ALLOWED_NETWORKS="192.0.2.0/24",
            SLUICE_METRICS_TOKEN="metrics-token-for-tests",
        )
    ).start()
    try:
        url = f"{server.url}/metrics"
        assert httpx.get(url, timeout=10).status_code == 403
        wrong = {"Authorization": "Bearer not-the-token"}
        assert httpx.get(url, headers=wrong, timeout=10).status_code == 403
        scraped = scrape(server, Authorization="Bearer metrics-token-for-tests")
        # One process: the default registry, with the audit writer's collector.
        assert scraped.value("sluice_audit_queue_depth") == 0
        assert "process_cpu_seconds_total" in scraped.text
    finally:
        server.stop()


def test_tokens_and_cost_are_counted_per_app_and_route(workers, alice, make_route):
    from streaming.models import ModelPrice, Provider

    model = make_route(("demo", "", "demo"), prefix="priced")
    provider = Provider.objects.get(targets__route__model=model)
    ModelPrice.objects.create(
        provider=provider, model="demo", input_per_mtok=1.0, output_per_mtok=2.0
    )

    lines = stream_sse(workers.first, alice, model)

    labels = {"app": alice.name, "route": model}
    after = wait_for(workers.first, lambda s: s.value("sluice_cost_usd_total", **labels) > 0)
    completion = len(lines) - 3  # the demo's words: minus role chunk, finish chunk, [DONE]
    # The demo provider counts the prompt's words: "hi".
    assert after.value("sluice_tokens_total", kind="prompt", **labels) == 1
    assert after.value("sluice_tokens_total", kind="completion", **labels) == completion
    assert after.value("sluice_cost_usd_total", **labels) == pytest.approx(
        (1 + 2 * completion) / 1e6
    )
