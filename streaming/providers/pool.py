"""The one connection pool every upstream request goes through: aiohttp.

Measured here (DESIGN.md and bench/): httpx's own pool stalls under many
concurrent long streams, and httpx over aiohttp's transport cost about
0.55 ms more per request than aiohttp alone (0.4 ms in the client layer:
cookie jar, auth and redirect machinery; 0.15 ms building and translating
requests and responses), plus two layers per chunk. That was half of the
gateway's whole budget for the first token, so upstream calls use one
aiohttp session per process directly. The session keeps no cookies (one
app's upstream cookies must never reach the next app's request) and
follows no redirects.

Timeouts: connecting (including waiting for a pooled connection) is
bounded here; silence before the first token and between chunks is the
router's job (the route's first-token and stall timeouts), so there is no
socket read timeout to re-arm on every chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from django.conf import settings


class UpstreamResponse:
    """What an adapter sees of an upstream response: status, headers, body."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers  # case-insensitive

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in whatever pieces the socket delivers."""
        return self._response.content.iter_any()

    async def aread(self) -> bytes:
        return await self._response.read()

    async def finish(self, grace: float = 0.25) -> None:
        """Read the rest of a body the adapter is done with (an upstream's ``[DONE]``
        comes just before the end of its body), so the connection goes back to
        the pool instead of being closed: a new connection per request cost
        the upstream and the gateway a TCP handshake each time."""
        content = self._response.content
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout(grace):
                while not content.at_eof():
                    await content.readany()


class UpstreamPool:
    """Keep-alive connections to the upstreams, with the gateway's limits and timeouts."""

    def __init__(self) -> None:
        connect = settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.SLUICE_UPSTREAM_MAX_CONNECTIONS, keepalive_timeout=30.0
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )

    @property
    def is_closed(self) -> bool:
        return self._session.closed

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: dict[str, str], content: bytes
    ) -> AsyncIterator[UpstreamResponse]:
        """Send a request; yield its response with the body unread; close it on leaving.

        Failures are aiohttp.ClientError or TimeoutError.
        """
        async with self._session.request(
            method,
            url,
            headers=headers,
            data=content,
            allow_redirects=False,
            timeout=self._timeout,
        ) as response:
            yield UpstreamResponse(response)

    async def aclose(self) -> None:
        await self._session.close()


_pools: dict[asyncio.AbstractEventLoop, UpstreamPool] = {}


def upstream_pool() -> UpstreamPool:
    """The shared pool for the running event loop (one per process in production)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None or pool.is_closed:
        pool = _pools[loop] = UpstreamPool()
    return pool


async def close_upstream_pool() -> None:
    loop = asyncio.get_running_loop()
    pool = _pools.pop(loop, None)
    if pool is not None:
        await pool.aclose()
