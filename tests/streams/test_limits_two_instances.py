"""200 concurrent requests of one app, on two gateway processes sharing Redis,
against one tokens-per-minute limit: never more than the limit reserved."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest
import redis

from accounts.limiter import keys
from accounts.limits import TOKENS, Window
from accounts.models import AppPolicy
from streaming.core.admission import chat_estimate
from streaming.transports.schema import parse_chat_request
from tests.conftest import unique
from tests.live import GatewayServer, server_env

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (CI sets it)"),
]
LIMIT = 20_000


@pytest.fixture(scope="module")
def pair(django_db_setup):
    servers = [GatewayServer(env=server_env(REDIS_URL=REDIS_URL)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


async def _fire(urls: list[str], headers: dict[str, str], body: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(f"{urls[i % 2]}/v1/chat/completions", headers=headers, json=body)
                for i in range(200)
            )
        )


def test_200_concurrent_requests_never_overshoot_the_tpm_limit(
    pair, make_actor, make_route, upstream
):
    upstream_model = unique("tpm")
    upstream.script(upstream_model, tokens=["a ", "b "], delay=0.2)  # all in flight at once
    model = make_route(("openai", upstream.base_url, upstream_model))
    actor = make_actor("alice")
    AppPolicy.objects.filter(application_id=actor.app_id).update(tokens_per_minute=LIMIT)
    body = {"model": model, "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]}
    prompt, output = chat_estimate(parse_chat_request(body), None)
    estimate = prompt + output
    if time.time() % 60 > 45:  # one minute window for the whole burst
        time.sleep(61 - time.time() % 60)
    window = Window.at(time.time())

    responses = asyncio.run(_fire([s.url for s in pair], {**actor.headers}, body))

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) + len(refused) == 200, {r.status_code for r in responses}
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    assert len(admitted) * estimate <= LIMIT + estimate
    assert len(admitted) >= LIMIT // estimate - 1  # and the limit is used, not starved
    remaining = min(int(r.headers["x-ratelimit-remaining-tokens"]) for r in admitted)
    assert remaining >= 0
    # Every request has ended and settles: the window holds what they really used.
    counted = _settled_count(keys(actor.client_id, window)[TOKENS], len(admitted) * estimate)
    print(f"admitted {len(admitted)} x {estimate}, refused {len(refused)}, settled {counted}")
    assert 0 < counted <= LIMIT + estimate
    assert counted < len(admitted) * estimate  # settled: the real use replaced the estimates


def _settled_count(key: str, reserved: int) -> int:
    with redis.Redis.from_url(REDIS_URL) as client:
        for _ in range(50):
            counted = int(client.get(key) or 0)
            if counted < reserved:
                break
            time.sleep(0.05)
    return counted
