"""Shared fixtures: the test database for server processes, a live gateway,
fake upstreams, and actors (apps with tokens) created through the real
OAuth2 token endpoint."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.live import GatewayServer, free_port, server_env

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@pytest.fixture(scope="session", autouse=True)
def _release_test_database(
    request: pytest.FixtureRequest, django_db_blocker: Any
) -> Iterator[None]:
    """Let pytest-django drop the PostgreSQL test database at the end.

    Threads of this process (Channels' database thread, the audit writer) keep
    their own connections, which DROP DATABASE refuses to run beside. This
    fixture depends on django_db_setup, so its teardown runs just before.
    """
    request.getfixturevalue("django_db_setup")
    yield
    from django.db import connection

    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql" or not str(name).startswith("test_"):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connection.close()


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_deadlocks() -> Iterator[None]:
    """Retry the table flush that ends a transactional test when PostgreSQL
    breaks a deadlock by failing it.

    The live gateway's audit writer may still be storing the last streams of a
    test while the flush runs; TRUNCATE and the writer's transaction can wait on
    each other's locks, and PostgreSQL then aborts one of them. The writer
    retries on its own; the flush is retried here. (Production never truncates.)
    """
    from django.core.management.base import CommandError
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self: flush.Command, **options: Any) -> None:
        for attempt in range(5):
            try:
                original(self, **options)
                return
            except CommandError as error:
                if "deadlock" not in str(error.__cause__).lower() or attempt == 4:
                    raise
                time.sleep(0.2)

    flush.Command.handle = handle  # type: ignore[method-assign]
    yield
    flush.Command.handle = original  # type: ignore[method-assign]


@pytest.fixture
def live_db(transactional_db: None) -> None:
    """Committed test data that gateway server processes can see.

    End-to-end tests create their data per test (transactional tests flush
    the tables when they end)."""


@pytest.fixture(scope="session")
def gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    server = GatewayServer(env=server_env()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@dataclass
class Actor:
    """An OAuth2 app and a bearer token it got from the token endpoint."""

    name: str
    client_id: str
    client_secret: str
    token: str
    app_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def fetch_token(base_url: str, client_id: str, secret: str, scope: str = "chat") -> httpx.Response:
    return httpx.post(
        f"{base_url}/o/token/",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
        timeout=10,
    )


@pytest.fixture
def make_actor(gateway: GatewayServer, live_db: None) -> Callable[..., Actor]:
    from accounts.services import app_create

    def make(
        name: str,
        *,
        scopes: list[str] | None = None,
        models: list[str] | None = None,
        token_scope: str = "chat",
    ) -> Actor:
        app, secret = app_create(name=unique(name), scopes=scopes or ["chat"], models=models)
        response = fetch_token(gateway.url, app.client_id, secret, token_scope)
        assert response.status_code == 200, response.text
        return Actor(app.name, app.client_id, secret, response.json()["access_token"], app.pk)

    return make


@pytest.fixture
def alice(make_actor: Callable[..., Actor]) -> Actor:
    return make_actor("alice")


@pytest.fixture
def bob(make_actor: Callable[..., Actor]) -> Actor:
    return make_actor("bob")


@pytest.fixture
def sdk(gateway: GatewayServer) -> Iterator[Callable[[Actor], Any]]:
    """The official OpenAI client for an actor, pointed at the gateway."""
    import openai

    clients: list[Any] = []

    def make(actor: Actor) -> Any:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=actor.token, max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def scripted_route(
    make_route: Callable[..., str], upstream: FakeUpstream, kind: str, **script: Any
) -> tuple[str, str]:
    """A route to one ``kind`` target on the fake upstream answering ``script``;
    (the public model, the upstream model)."""
    upstream_model = unique(kind)
    upstream.script(upstream_model, **script)
    return make_route((kind, upstream.base_url, upstream_model), api_key="sk-up"), upstream_model


@pytest.fixture
def claude(gateway: GatewayServer) -> Iterator[Callable[[Actor], Any]]:
    """The official Anthropic client for an actor, pointed at the gateway
    (its token as the API key, which the SDK sends as ``x-api-key``)."""
    import anthropic

    clients: list[Any] = []

    def make(actor: Actor) -> Any:
        client = anthropic.Anthropic(base_url=gateway.url, api_key=actor.token, max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def make_route(live_db: None) -> Callable[..., str]:
    """Create a route to providers; returns its public model name."""
    from streaming.models import ModelRoute, Provider, RouteTarget

    def make(
        *targets: tuple[str, str, str], prefix: str = "model", api_key: str = "", **policy: Any
    ) -> str:
        route = ModelRoute.objects.create(model=unique(prefix), **policy)
        for priority, (kind, base_url, upstream_model) in enumerate(targets):
            provider = Provider(name=unique(kind), kind=kind, base_url=base_url)
            provider.set_api_key(api_key)
            provider.save()
            RouteTarget.objects.create(
                route=route, provider=provider, upstream_model=upstream_model, priority=priority
            )
        return route.model

    return make


@pytest.fixture
def demo_model(make_route: Callable[..., str]) -> str:
    return make_route(("demo", "", "demo"), prefix="demo")


def wait_for_audit(request_id: str, timeout: float = 10.0, *, final: bool = True) -> Any:
    """The audit record the gateway wrote for a request (written off the hot path);
    with ``final``, once it is complete (not the write-ahead, ``in_progress``)."""
    from audit.models import AuditRecord

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = AuditRecord.objects.filter(request_id=request_id).first()
        if record is not None and not (final and record.outcome == "in_progress"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id} after {timeout}s")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for tests of shared state (skipped when not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)
