"""ASGI entry point: protocol routing.

http: the /v1/ streaming API goes straight to its ASGI endpoints; everything
else (admin, /o/ OAuth2, /metrics, pages) goes to Django.
websocket: the token middleware, then the stream consumer.
lifespan: starts the audit writer's process, its upkeep thread (checkpoints,
pruning), the revocation listener and the instance watch (heartbeat,
interrupted requests of dead instances), and
keeps the garbage collector out of the way (start-up objects frozen, young
collections rarer); at the end, stops the listeners, closes the upstream pool
and Redis clients, stops the audit writer once it has written what it was
given, and takes this worker's live gauges out of the metrics' sums.
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from streaming.transports.asgi import HttpRouter, websocket_patterns  # noqa: E402


def settle_gc(young_threshold: int) -> None:
    """Keep the garbage collector out of the way of the streams it serves.

    Everything loaded so far lives as long as the process: it is frozen, so
    no collection walks it again (a full collection over Django's objects held
    a request up by tens of ms). And young collections are made rarer: at
    Python's default (one per 700 objects allocated and still alive), 100
    streams at 50 tokens/s ran one every 0.4 s, each stopping every stream for
    0.3 ms and up to several ms; about 1 request in 100 started during one,
    which added 1 to 2 ms to the steady TTFT p99. A gateway makes almost no cyclic
    garbage (20,000 requests with no collection at all left RSS where it was),
    so a higher threshold costs no memory to speak of.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from django.conf import settings

    from accounts import revocation
    from audit.maintenance import audit_maintenance_start, audit_maintenance_stop
    from audit.writer import audit_writer_stop, audit_writer_use_process
    from gateway.redis import close_async_clients
    from streaming.core.deliveries import notes_written
    from streaming.core.memory import map_large_buffers
    from streaming.core.recovery import start_instance_watch, stop_instance_watch
    from streaming.core.redis_log import stop_cancel_listener
    from streaming.core.session import submit_waiting_audits
    from streaming.core.shutdown import hand_over_with, wait_drained
    from streaming.core.shutdown import install as hear_shutdown
    from streaming.core.takeover import hand_over, start_takeover, stop_takeover
    from streaming.observability.export import process_exiting
    from streaming.observability.livestats import ensure_ticker
    from streaming.providers.pool import close_upstream_pool

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.SLUICE_AUDIT_PROCESS:
                audit_writer_use_process()
            settle_gc(settings.SLUICE_GC_YOUNG_THRESHOLD)
            map_large_buffers()
            ensure_ticker()  # every worker publishes its live numbers from the start
            revocation.ensure_listener()  # revocations published by other processes end here
            audit_maintenance_start()  # signed checkpoints and pruning, on their timers
            start_instance_watch()  # heartbeat; completes requests dead instances left open
            start_takeover()  # heartbeat of this worker's streams; carries on lost instances' ones
            hand_over_with(hand_over)  # what the grace period's end does to a running stream
            hear_shutdown(asyncio.get_running_loop())  # SIGTERM: drain, hand streams over
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await wait_drained()  # streams still running at the grace are handed over first
            await stop_takeover()
            await revocation.stop_listener()
            await asyncio.to_thread(audit_maintenance_stop)
            await asyncio.to_thread(stop_instance_watch)
            await close_upstream_pool()
            await stop_cancel_listener()  # it would reconnect the clients closed next
            await close_async_clients()
            submit_waiting_audits()  # records still waiting for their readers to close
            await notes_written()
            # Writes what is queued, then ends the writer and its process: uvicorn
            # ends the process by its signal, and atexit handlers do not run then.
            await asyncio.to_thread(audit_writer_stop, 5.0)
            process_exiting()  # several workers: this one's live gauges leave the sums
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": HttpRouter(django_app),
        "websocket": URLRouter(websocket_patterns),
        "lifespan": lifespan,
    }
)
