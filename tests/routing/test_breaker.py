"""Circuit breakers end to end: a failing target is skipped, then probed, then used.

The gateway here opens a circuit after 2 consecutive failures and cools it
down for 1 s (tests/routing/breaker_settings.py).
"""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import unique, wait_for_audit
from tests.routing.conftest import HELLO, attempts

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(breaker_gateway, alice):
    with openai.OpenAI(
        base_url=f"{breaker_gateway.url}/v1", api_key=alice.token, max_retries=0
    ) as client:
        yield client


def ask(client, model):
    chunks = list(client.chat.completions.create(model=model, stream=True, messages=HELLO))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].id


def test_circuit_opens_then_half_open_probe_closes_it(client, upstream, make_route):
    flaky, backup = unique("flaky"), unique("backup")
    upstream.script(flaky, fault="http_500")
    upstream.script(backup, tokens=["from", " backup"])
    model = make_route(("openai", upstream.base_url, flaky), ("openai", upstream.base_url, backup))

    for _ in range(2):  # two failures open the circuit; the backup answers meanwhile
        assert ask(client, model)[0] == "from backup"
    text, stream_id = ask(client, model)
    assert text == "from backup"
    assert len(upstream.requests_for(flaky)) == 2  # skipped while open
    assert attempts(wait_for_audit(stream_id)) == [("ok", "", False)]

    time.sleep(1.1)  # cooldown over: half-open, and the probe fails again
    ask(client, model)
    assert len(upstream.requests_for(flaky)) == 3
    ask(client, model)
    assert len(upstream.requests_for(flaky)) == 3  # reopened by the failed probe

    time.sleep(1.1)
    upstream.script(flaky, tokens=["flaky", " is", " back"])  # the provider recovered
    assert ask(client, model)[0] == "flaky is back"  # the probe succeeds: closed
    assert ask(client, model)[0] == "flaky is back"
    assert len(upstream.requests_for(flaky)) == 5


def test_every_circuit_open_fails_fast(client, upstream, make_route):
    broken = unique("broken")
    upstream.script(broken, fault="http_500")
    model = make_route(("openai", upstream.base_url, broken))
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            ask(client, model)

    with pytest.raises(openai.APIStatusError) as raised:
        ask(client, model)

    # Fast means without trying: no third request, no attempt, so no backoff either.
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "circuit_open"
    assert len(upstream.requests_for(broken)) == 2
    record = wait_for_audit(raised.value.response.headers["x-sluice-stream-id"])
    assert record.error_class == "circuit_open" and attempts(record) == []


def test_a_half_open_circuit_is_probed_once_per_request_not_once_per_retry(
    client, upstream, make_route
):
    flaky, backup = unique("flaky"), unique("backup")
    upstream.script(flaky, fault="http_500")
    upstream.script(backup, tokens=["from", " backup"])
    model = make_route(
        ("openai", upstream.base_url, flaky),
        ("openai", upstream.base_url, backup),
        attempts_per_target=3,
        backoff_seconds=0.01,
    )

    # Two failures open the circuit: the third retry is not sent into it.
    assert ask(client, model)[0] == "from backup"
    assert len(upstream.requests_for(flaky)) == 2

    time.sleep(1.1)  # half-open: one probe, which fails and reopens the circuit
    assert ask(client, model)[0] == "from backup"
    assert len(upstream.requests_for(flaky)) == 3
