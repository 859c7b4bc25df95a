from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from streaming.providers.pool import UpstreamPool, close_upstream_pool, upstream_pool
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
async def client() -> AsyncIterator[UpstreamPool]:
    yield upstream_pool()
    await close_upstream_pool()
