"""The served gateway's garbage-collector settings (gateway.asgi.settle_gc, run by the lifespan)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.asgi import lifespan, settle_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settle_gc_freezes_what_is_loaded_and_makes_young_collections_rarer() -> None:
    _, older, oldest = gc.get_threshold()
    kept: list[list[int]] = [[] for _ in range(100)]  # tracked, alive: must end up frozen

    settle_gc(12_345)

    assert gc.get_threshold() == (12_345, older, oldest)
    # Frozen objects sit in no generation: no collection walks them any more.
    walked = {id(obj) for obj in gc.get_objects()}
    assert not walked & {id(obj) for obj in kept}


@pytest.mark.usefixtures("restored_gc")
def test_the_served_gateway_starts_with_the_configured_threshold(settings: Any) -> None:
    # The lifespan is what uvicorn runs at start-up: SLUICE_GC_YOUNG_THRESHOLD takes effect there.
    settings.SLUICE_GC_YOUNG_THRESHOLD = 23_456
    settings.SLUICE_AUDIT_PROCESS = False

    async def start() -> list[str]:
        sent: list[str] = []
        started = asyncio.Event()
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, str]:
            message = next(messages, None)
            if message is None:
                await asyncio.Event().wait()  # no shutdown in this test
            assert message is not None
            return message

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])
            started.set()

        task = asyncio.create_task(lifespan({"type": "lifespan"}, receive, send))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        return sent

    assert asyncio.run(start()) == ["lifespan.startup.complete"]
    assert gc.get_threshold()[0] == 23_456
