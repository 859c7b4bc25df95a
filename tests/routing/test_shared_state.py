"""With REDIS_URL, instances share config changes and circuit state.

Two gateway processes over one Redis; their route cache TTL is a minute, so
only the Redis config version can make a change show up on the other one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import unique
from tests.live import GatewayServer, server_env
from tests.routing.admin_client import AdminClient
from tests.routing.conftest import sdk_stream
from tests.routing.test_admin import route_form

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def pair(redis_url, django_db_setup) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    env = server_env(
        REDIS_URL=redis_url,
        SLUICE_CONFIG_CACHE_SECONDS="60",
        DJANGO_SETTINGS_MODULE="tests.routing.breaker_settings",
    )
    servers = [GatewayServer(env=dict(env)).start() for _ in range(2)]
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def openai_client(server: GatewayServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)


def until(check, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not seen in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_admin_change_on_one_instance_applies_on_the_other(pair, alice, upstream, make_route):
    from streaming.models import ModelRoute

    one, two = pair
    old, new = unique("old"), unique("new")
    upstream.script(old, tokens=["old"])
    upstream.script(new, tokens=["new"])
    model = make_route(("openai", upstream.base_url, old))
    with openai_client(two, alice.token) as client:
        assert sdk_stream(client, model)[1] == "old"  # cached on instance two for a minute

        route = ModelRoute.objects.get(model=model)
        target = route.targets.get()
        ops = AdminClient(one.url)
        try:
            ops.post(
                f"/admin/streaming/modelroute/{route.pk}/change/",
                route_form(
                    route,
                    [
                        {
                            "id": target.pk,
                            "priority": 0,
                            "provider": target.provider_id,
                            "upstream_model": new,
                        }
                    ],
                ),
            )
        finally:
            ops.close()

        took = until(lambda: sdk_stream(client, model)[1] == "new")
    assert took < 1.5


def test_a_circuit_opened_on_one_instance_is_open_on_the_other(pair, alice, upstream, make_route):
    one, two = pair
    flaky, backup = unique("flaky"), unique("backup")
    upstream.script(flaky, fault="http_500")
    upstream.script(backup, tokens=["backup"])
    model = make_route(("openai", upstream.base_url, flaky), ("openai", upstream.base_url, backup))
    with openai_client(one, alice.token) as first, openai_client(two, alice.token) as second:
        sdk_stream(second, model)  # failure 1, on instance two
        sdk_stream(first, model)  # failure 2, on instance one: the circuit opens
        assert len(upstream.requests_for(flaky)) == 2
        assert sdk_stream(first, model)[1] == "backup"
        assert len(upstream.requests_for(flaky)) == 2

        time.sleep(0.6)  # instance two's cached view of the circuit expires
        assert sdk_stream(second, model)[1] == "backup"
    assert len(upstream.requests_for(flaky)) == 2  # skipped on instance two as well
