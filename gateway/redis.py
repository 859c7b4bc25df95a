"""Every Redis client of the process, made in one place.

Async clients belong to an event loop (a redis.asyncio connection cannot
move between loops), so there is one per loop and purpose; the lifespan
closes them with ``close_async_clients``. Sync code (signal handlers, the
admin) shares one client per process. Clients are keyed by the URL too, so a
test that points ``settings.REDIS_URL`` elsewhere gets a client for it.

This module sits beneath every app, like the settings: it imports none of them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Literal

import redis
import redis.asyncio as aioredis
from django.conf import settings

Purpose = Literal["default", "blocking", "limits"]

# The longest a blocking read (XREAD BLOCK) waits when there is no keep-alive to send.
FOLLOW_BLOCK_SECONDS = 5.0
SYNC_SOCKET_TIMEOUT = 2.0

_async_clients: dict[tuple[asyncio.AbstractEventLoop, Purpose, str], aioredis.Redis] = {}
_sync_clients: dict[str, redis.Redis] = {}
_sync_lock = threading.Lock()


def redis_enabled() -> bool:
    """Whether Redis is configured (else everything stays in this process)."""
    return bool(settings.REDIS_URL)


def async_client(purpose: Purpose = "default") -> aioredis.Redis:
    """A client for this event loop; 'blocking' gets its own pool for XREAD BLOCK.

    redis-py 8 times a socket read out after 5 s unless told otherwise, then
    retries the command. An XREAD that blocks for the SSE keep-alive interval
    (15 s) timed out, started its wait over, and never came back empty: a
    reader on another instance sent no keep-alives through a silence, and one
    longer than the retries broke its response. Blocking reads get a read
    timeout past the longest block; other commands keep the 5 s default.
    A blocking read holds its connection for the whole wait, hence the big pool.
    'limits' (admission, accounts.limiter) waits for a free connection instead
    of failing: a burst of requests must queue for the check, not skip it.
    """
    url = settings.REDIS_URL
    key = (asyncio.get_running_loop(), purpose, url)
    client = _async_clients.get(key)
    if client is None:
        if purpose == "blocking":
            timeout = max(settings.SLUICE_SSE_KEEPALIVE_SECONDS, FOLLOW_BLOCK_SECONDS) + 5.0
            client = aioredis.Redis.from_url(url, max_connections=1000, socket_timeout=timeout)
        elif purpose == "limits":
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=50, timeout=5)
            client = aioredis.Redis(connection_pool=pool)
        else:
            client = aioredis.Redis.from_url(url, max_connections=50)
        _async_clients[key] = client
    return client


async def close_async_clients() -> None:
    """Close this event loop's clients (at the end of the ASGI lifespan)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _async_clients if k[0] is loop]:
        await _async_clients.pop(key).aclose()


def sync_client() -> redis.Redis:
    """The process's client for sync code; a short timeout, as a request may be waiting."""
    url = settings.REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        with _sync_lock:
            client = _sync_clients.get(url)
            if client is None:
                client = redis.Redis.from_url(url, socket_timeout=SYNC_SOCKET_TIMEOUT)
                _sync_clients[url] = client
    return client
