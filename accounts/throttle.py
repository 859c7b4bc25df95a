"""Brakes on guessing secrets: failures counted per key in a fixed window.

The counts live in the ``throttle`` cache: Redis when ``REDIS_URL`` is set, so
every instance counts together; process memory otherwise. Once a key is over
its limit, callers refuse the request before doing any work on it (no
password hash), until the window ends.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.core.cache import caches


@dataclass(frozen=True, slots=True)
class FailureThrottle:
    """At most ``limit`` failures per key in each window of ``window`` seconds."""

    name: str
    limit: int
    window: int

    def _key(self, kind: str, value: str, now: float) -> str:
        # Hashed: client ids, usernames and addresses are untrusted text.
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.name}:{kind}:{digest}:{int(now // self.window)}"

    def retry_after(self, kind: str, value: str) -> int | None:
        """Seconds until ``value`` may try again, or None if it may now."""
        if self.limit <= 0:
            return None
        now = time.time()
        if (caches["throttle"].get(self._key(kind, value, now)) or 0) < self.limit:
            return None
        return max(1, int(self.window - now % self.window) + 1)

    def fail(self, kind: str, value: str) -> None:
        if self.limit <= 0:
            return
        cache, key = caches["throttle"], self._key(kind, value, time.time())
        cache.add(key, 0, timeout=self.window + 1)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: a new window
            cache.add(key, 1, timeout=self.window + 1)


def first_refusal(throttles: list[tuple[FailureThrottle, str, str]]) -> int | None:
    """The longest wait any of (throttle, kind, value) imposes, or None."""
    waits = [t.retry_after(kind, value) for t, kind, value in throttles]
    refused = [w for w in waits if w is not None]
    return max(refused) if refused else None
