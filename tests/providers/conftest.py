from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from streaming.upstream import close_upstream_client, upstream_client
from tests.fakes import FakeUpstream


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeUpstream) -> FakeUpstream:
    fake_server.reset()
    return fake_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    yield upstream_client()
    await close_upstream_client()
