"""Graceful shutdown: on SIGTERM, drain this instance without losing a stream.

At once: ``draining()`` turns true, so ``/readyz`` answers 503 and a new
stream is refused with 503 and ``Retry-After`` (a proxy retries elsewhere);
uvicorn stops listening. Running streams go on for up to
SLUICE_SHUTDOWN_GRACE_SECONDS; those still running then are handed over
(streaming.core.takeover.hand_over: stopped without END, their events in
Redis, their heartbeat released so another instance claims them at its next
look), and their local readers are told to go elsewhere: an SSE response
ends after its last event (with its id, so EventSource or an SDK resumes
with it); a WebSocket closes with 1001 (going away). uvicorn waits for the
connections up to the grace and a margin (sluice_serve sets it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from django.conf import settings

logger = logging.getLogger("sluice.shutdown")

_draining = False
_task: asyncio.Task[None] | None = None
HANDOVER_MARGIN = 5.0  # seconds past the grace for handing over and readers' last writes


def draining() -> bool:
    """Whether this instance is shutting down (no new streams)."""
    return _draining


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Hear SIGTERM (and SIGINT) before uvicorn does, from its lifespan start-up."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(begin)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def begin() -> None:
    """Start draining (once)."""
    global _draining, _task
    if _draining:
        return
    _draining = True
    logger.warning("shutting down: draining for up to %ss", settings.SLUICE_SHUTDOWN_GRACE_SECONDS)
    _task = asyncio.get_running_loop().create_task(_drain())


# What the deadline does to a stream still running: streaming.core.takeover's
# hand_over, which the ASGI lifespan registers (the takeover imports this
# module, so this one may not import it); cancelling, if nothing was.
HandOver = Callable[[Any], Awaitable[bool]]
_hand_over: HandOver | None = None


def hand_over_with(hand_over: HandOver) -> None:
    """What to do with each stream still running at the grace period's end."""
    global _hand_over
    _hand_over = hand_over


async def _cancel(session: Any) -> bool:
    session.cancel("cancelled")
    return False


async def _drain() -> None:
    from streaming.core import session as sessions

    hand_over = _hand_over or _cancel
    deadline = time.monotonic() + settings.SLUICE_SHUTDOWN_GRACE_SECONDS
    # Streams end one by one, each its own way: a look every 50 ms is enough.
    while sessions._sessions and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    running = list(sessions._sessions.values())
    if running:
        handed = await asyncio.gather(*(hand_over(s) for s in running), return_exceptions=True)
        logger.warning("handed %d stream(s) over", sum(1 for h in handed if h is True))


async def wait_drained() -> None:
    """At lifespan shutdown: the drain has handed over what it had to."""
    if _task is not None:
        await asyncio.wait({_task}, timeout=HANDOVER_MARGIN)
