"""Health endpoints for load balancers and orchestrators.

``/healthz``: the process is alive and serving (no dependency is checked, so
a database outage does not get every instance restarted). ``/readyz``: the
instance can take traffic: its database answers and, when configured, Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from gateway.redis import async_client as redis_client
from gateway.redis import redis_enabled
from streaming.core.shutdown import draining

CHECK_SECONDS = 2.0


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _redis_ping() -> None:
    await redis_client().ping()


async def _check(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await probe()
    except Exception as error:  # a timeout, a refused connection, a driver's own errors
        return f"unreachable ({type(error).__name__})"
    return "ok"


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database (and Redis, if configured) answer within 2 s, else
    503 (at once when the instance is shutting down)."""
    if draining():
        body = {"status": "shutting_down", "checks": {}}
        return JsonResponse(body, status=503, headers={"Retry-After": "1"})
    checks = {"database": await _check(database_sync_to_async(_database_ping))}
    if redis_enabled():
        checks["redis"] = await _check(_redis_ping)
    ready = all(state == "ok" for state in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)
