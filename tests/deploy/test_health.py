"""/healthz says the process serves; /readyz whether it can take traffic."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.live import GatewayServer, free_port, server_env

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def test_a_healthy_instance_is_alive_and_ready(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}

    response = httpx.get(f"{gateway.url}/readyz")

    assert response.status_code == 200
    expected = {"database": "ok"}
    if os.environ.get("REDIS_URL"):
        expected["redis"] = "ok"
    assert response.json() == {"status": "ready", "checks": expected}


def test_an_instance_without_its_database_or_redis_is_alive_but_not_ready(live_db):
    closed = free_port()  # nothing listens there
    server = GatewayServer(
        env=server_env(
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed}/sluice",
            REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        )
    ).start()
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        response = httpx.get(f"{server.url}/readyz", timeout=10)
    finally:
        server.stop()

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("unreachable")
    assert body["checks"]["redis"].startswith("unreachable")
