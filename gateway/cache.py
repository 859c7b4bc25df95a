"""An in-process cache that loads each key at most once at a time (single flight).

Hot-path lookups (tokens, routes) go through one: Channels'
``database_sync_to_async`` runs every query on one thread, so a burst of
misses for the same key must wait for one query, not queue one each.

This module sits beneath every app, like the settings: it imports none of them.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightCache(Generic[K, V]):
    """Values loaded on a miss and kept a while; concurrent misses share one load.

    ``get(key, load)`` returns a fresh entry at once: a dict lookup and a clock
    read, no await and no lock. On a miss the first caller starts ``load()`` as
    a task and every caller missing the same key meanwhile awaits that task; a
    caller cancelled while it waits does not cancel the load.

    ``ttl(value)`` says how long to keep a loaded value, in seconds of
    ``clock``; zero or less keeps nothing (a value the caller must not reuse).
    A load that raises gives its exception to every waiter and keeps nothing.
    At most ``max_entries`` values are kept; keeping one more drops the oldest.

    A load that raises one of ``stale_on`` (the database is unreachable) while
    an expired value is still held, and ``stale_ok(value)``, gives that value
    instead, kept ``stale_retry`` seconds more before the next load is tried:
    hot paths keep working on what they last knew during an outage.

    ``invalidate`` drops entries; a load already under way is then neither kept
    nor joined by later misses, as it may have read what was just changed.
    Invalidation may come from other threads (signal handlers): writers take a
    lock, readers do not need one (a dict lookup is atomic).
    """

    def __init__(
        self,
        *,
        ttl: Callable[[V], float],
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        stale_on: tuple[type[BaseException], ...] = (),
        stale_ok: Callable[[V], bool] = lambda value: True,
        stale_retry: float = 1.0,
    ) -> None:
        self.ttl = ttl
        self.stale_on = stale_on
        self.stale_ok = stale_ok
        self.stale_retry = stale_retry
        self.max_entries = max_entries
        self.clock = clock
        # key -> (value, deadline); insertion order is age order.
        self._entries: dict[K, tuple[V, float]] = {}
        self._loads: dict[K, asyncio.Task[V]] = {}
        self._generation = 0  # bumped by invalidate: a load started before is not kept
        self._lock = threading.Lock()

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value for ``key``: cached if fresh, else from the load under way or a new one."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self.clock():
            return entry[0]
        try:
            return await asyncio.shield(self._load_task(key, load))
        except self.stale_on:
            if entry is None or not self.stale_ok(entry[0]) or not self._hold(key, entry):
                raise
            return entry[0]

    def _hold(self, key: K, entry: tuple[V, float]) -> bool:
        """Keep a stale ``entry`` a little longer, unless it was invalidated meanwhile."""
        with self._lock:
            if self._entries.get(key) is not entry:
                return False
            self._entries[key] = (entry[0], self.clock() + self.stale_retry)
        return True

    def peek(self, key: K) -> V | None:
        """The fresh cached value for ``key``, or None; never loads."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self.clock():
            return entry[0]
        return None

    def __len__(self) -> int:
        """Entries held, stale ones included (they go when evicted or replaced)."""
        return len(self._entries)

    def invalidate(self, predicate: Callable[[V], bool] | None = None) -> None:
        """Drop the entries whose value matches ``predicate`` (all without one)."""
        with self._lock:
            self._generation += 1
            self._loads.clear()
            if predicate is None:
                self._entries.clear()
                return
            for key in [k for k, (value, _) in self._entries.items() if predicate(value)]:
                del self._entries[key]

    def _load_task(self, key: K, load: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._loads.get(key)
            # A load on another event loop (a sync caller's async_to_sync) cannot be awaited here.
            if task is None or task.get_loop() is not loop:
                task = loop.create_task(self._load(key, load, self._generation))
                task.add_done_callback(functools.partial(self._forget_load, key))
                self._loads[key] = task
        return task

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], generation: int) -> V:
        value = await load()
        self._keep(key, value, generation)
        return value

    def _forget_load(self, key: K, task: asyncio.Task[V]) -> None:
        with self._lock:
            if self._loads.get(key) is task:
                del self._loads[key]

    def _keep(self, key: K, value: V, generation: int) -> None:
        ttl = self.ttl(value)
        if ttl <= 0:
            return
        deadline = self.clock() + ttl
        with self._lock:
            if generation != self._generation:
                return
            self._entries.pop(key, None)  # re-inserted at the end: the newest
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (value, deadline)
