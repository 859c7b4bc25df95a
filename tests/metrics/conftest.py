"""Gateway processes with Prometheus multiprocess mode, and a scrape helper."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.live import GatewayServer, server_env


@dataclass
class Workers:
    """Two gateway processes sharing one PROMETHEUS_MULTIPROC_DIR, as two workers would."""

    first: GatewayServer
    second: GatewayServer


@pytest.fixture(scope="module")
def workers(django_db_setup: None) -> Iterator[Workers]:
    directory = tempfile.mkdtemp(prefix="sluice-prom-")
    env = server_env(
        PROMETHEUS_MULTIPROC_DIR=directory,
        SLUICE_DEMO_TOKEN_DELAY="0.005",
        SLUICE_READER_STALL_SECONDS="1",
    )
    first = GatewayServer(env=env).start()
    second = GatewayServer(env=env).start()
    yield Workers(first, second)
    first.stop()
    second.stop()


class Scrape:
    """One /metrics response, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(server: GatewayServer, **headers: str) -> Scrape:
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)
