"""The one HTTP client every upstream request goes through.

httpx's own connection pool stalls under many concurrent long streams (see
DESIGN.md), so the client runs over aiohttp's transport. Timeouts are set for
minutes-long streams: the read timeout bounds silence between two chunks, not
the whole response; the router applies first-token and stall timeouts itself.
"""

from __future__ import annotations

import asyncio

import httpx
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def _build_client() -> httpx.AsyncClient:
    conf = settings.SLUICE
    limits = httpx.Limits(
        max_connections=conf["UPSTREAM_MAX_CONNECTIONS"],
        max_keepalive_connections=conf["UPSTREAM_MAX_CONNECTIONS"],
        keepalive_expiry=30.0,
    )
    timeout = httpx.Timeout(
        connect=conf["UPSTREAM_CONNECT_TIMEOUT"],
        read=conf["UPSTREAM_READ_TIMEOUT"],
        write=conf["UPSTREAM_CONNECT_TIMEOUT"],
        pool=conf["UPSTREAM_CONNECT_TIMEOUT"],
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=timeout,
        limits=limits,
        trust_env=False,
    )


def upstream_client() -> httpx.AsyncClient:
    """The shared client for the running event loop (one per process in production)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = _build_client()
    return client


async def close_upstream_client() -> None:
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
