"""ASGI entry point: protocol routing.

http: the /v1/ streaming API goes straight to its ASGI endpoints; everything
else (admin, /o/ OAuth2, /metrics, pages) goes to Django.
websocket: the token middleware, then the stream consumer.
lifespan: closes the shared upstream client and flushes the audit writer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from streaming.routing import asgi, http_patterns, websocket_patterns  # noqa: E402


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from audit.writer import audit_flush
    from streaming.livestats import ensure_ticker
    from streaming.redis_log import close_redis_clients
    from streaming.upstream import close_upstream_client

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            ensure_ticker()  # every worker publishes its live numbers from the start
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_upstream_client()
            await close_redis_clients()
            await asyncio.to_thread(audit_flush, 5.0)
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": URLRouter([*http_patterns, asgi(r"", django_app, regex=True)]),
        "websocket": URLRouter(websocket_patterns),
        "lifespan": lifespan,
    }
)
