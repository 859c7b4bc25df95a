"""The served gateway's garbage-collector settings (gateway.asgi.settle_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.asgi import settle_gc


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
def test_no_young_collection_before_the_threshold() -> None:
    settle_gc(50_000)
    collections: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(note)
    try:
        alive: list[list[int]] = [[] for _ in range(5_000)]  # far past Python's default of 700
    finally:
        gc.callbacks.remove(note)
    assert len(alive) == 5_000
    assert collections == []
