"""Gateways started with the network-edge settings under test, and actors on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Actor, fetch_token, unique
from tests.live import GatewayServer, server_env


@pytest.fixture
def start_gateway(django_db_setup: None) -> Iterator[Callable[..., GatewayServer]]:
    """Start a gateway with environment overrides; each is stopped after the test."""
    started: list[GatewayServer] = []

    def start(**overrides: str) -> GatewayServer:
        server = GatewayServer(env=server_env(**overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def actor_on(server: GatewayServer, name: str) -> Actor:
    """An app with a token fetched from ``server``'s own token endpoint."""
    from accounts.services import app_create

    app, secret = app_create(name=unique(name), scopes=["chat"])
    response = fetch_token(server.url, app.client_id, secret)
    assert response.status_code == 200, response.text
    return Actor(app.name, app.client_id, secret, response.json()["access_token"], app.pk)
