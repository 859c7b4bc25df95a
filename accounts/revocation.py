"""Revocation that bites: on every gateway process, at once.

Revoking a token (deleting it: the admin, ``sluice_app revoke``, DOT's
``/o/revoke_token/``), disabling or deleting an app, or a token reaching its
expiry, refuses new requests and ends what that identity holds open.

- ``publish`` runs when the change commits (signal handlers call it through
  ``transaction.on_commit``, so no process re-reads the old row). It applies
  the revocation to this process, then sends it to the channel layer group
  ``GROUP`` for the other processes. With the in-memory layer (no Redis) it
  holds for this one process only.
- ``listen`` (one task per gateway process, started from the ASGI lifespan)
  receives the group's messages and applies them. While the layer is down it
  retries quietly with backoff, and the gateway keeps serving; revocations
  sent meanwhile reach it through the token cache's TTL instead.
- Applying drops the cached identities, then calls the ``on_end(reason)`` of
  every open connection and running generation watched for that token or app.
  Transports and sessions ``watch`` their identity and ``close`` the watch when
  they end; a watched connection also ends at its token's expiry (one timer
  per connection, nothing per chunk). A ticket only authorises opening: the
  token behind it governs how long the connection lives.

Reasons, as sent to clients: ``token_revoked``, ``token_expired``,
``app_disabled``, ``app_deleted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from accounts.identity import AppIdentity, invalidate_app, invalidate_token

logger = logging.getLogger("sluice.revocation")

GROUP = "sluice.revocation"
MESSAGE_TYPE = "sluice.revocation"
REJOIN_SECONDS = 60.0  # group membership is refreshed this often (Redis may have lost it)
MAX_BACKOFF_SECONDS = 30.0
ORIGIN = secrets.token_hex(8)  # this process: it applies its own revocations without Redis

TOKEN_REVOKED = "token_revoked"
TOKEN_EXPIRED = "token_expired"
APP_DISABLED = "app_disabled"
APP_DELETED = "app_deleted"
_DESCRIPTIONS = {
    TOKEN_REVOKED: "token revoked",
    TOKEN_EXPIRED: "token expired",
    APP_DISABLED: "app disabled",
    APP_DELETED: "app deleted",
}
CLOSE_CODE = 4401  # the WebSocket close code for all of them (4000 + HTTP 401)


def describe(reason: str) -> str:
    """The words a client sees for a reason (a WebSocket close reason, an error message)."""
    return _DESCRIPTIONS.get(reason, reason.replace("_", " "))


def http_status(reason: str) -> int:
    return 403 if reason == APP_DISABLED else 401


@dataclass(frozen=True, slots=True)
class Revocation:
    """What changed. With no ``reason`` only cached identities are dropped
    (a renamed app, a narrowed policy): open connections stay."""

    app_id: int | None = None
    token_id: int | None = None
    reason: str | None = None


# --- the per-process registry -------------------------------------------------
# Touched only on the event loop's thread: watch() runs there, and revocations
# published from other threads are handed to it with call_soon_threadsafe.


def _ignore(reason: str) -> None:
    """What a closed watch calls: nothing."""


class Watch:
    """One connection or generation whose life ends with its identity's."""

    __slots__ = ("app_id", "on_end", "timer", "token_id")

    def __init__(self, identity: AppIdentity, on_end: Callable[[str], None]) -> None:
        self.app_id = identity.app_id
        self.token_id = identity.token_id
        self.on_end = on_end
        self.timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Stop watching (the connection ended on its own). Idempotent."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Let go of the connection: its callback holds the request's task.
        self.on_end = _ignore
        _discard(_by_app, self.app_id, self)
        if self.token_id is not None:
            _discard(_by_token, self.token_id, self)

    def end(self, reason: str) -> None:
        on_end = self.on_end
        self.close()
        try:
            on_end(reason)
        except Exception:
            logger.exception("ending a connection (%s) failed", reason)


_by_app: dict[int, set[Watch]] = {}
_by_token: dict[int, set[Watch]] = {}
_loop: asyncio.AbstractEventLoop | None = None


def _discard(index: dict[int, set[Watch]], key: int, watch: Watch) -> None:
    watches = index.get(key)
    if watches is not None:
        watches.discard(watch)
        if not watches:
            del index[key]


def watch(
    identity: AppIdentity, on_end: Callable[[str], None], *, until_expiry: bool = True
) -> Watch:
    """Call ``on_end(reason)`` once, on this loop, when ``identity`` is revoked
    (or, with ``until_expiry``, when its token expires). Call ``close()`` when done."""
    global _loop
    loop = asyncio.get_running_loop()
    _loop = loop
    ensure_listener()
    entry = Watch(identity, on_end)
    _by_app.setdefault(identity.app_id, set()).add(entry)
    if identity.token_id is not None:
        _by_token.setdefault(identity.token_id, set()).add(entry)
    if until_expiry and math.isfinite(identity.expires_at):
        delay = max(0.0, identity.expires_at - time.time())
        entry.timer = loop.call_later(delay, entry.end, TOKEN_EXPIRED)
    return entry


def watched() -> int:
    """How many connections and generations are watched (for tests and metrics)."""
    return len({w for watches in _by_app.values() for w in watches})


def apply(revocation: Revocation) -> None:
    """Drop the cached identities, then end what the revoked identity holds open.

    Runs on the event loop that owns the watches.
    """
    if revocation.token_id is not None:
        invalidate_token(revocation.token_id)
    if revocation.app_id is not None:
        invalidate_app(revocation.app_id)
    if revocation.reason is None:
        return
    ending: set[Watch] = set()
    if revocation.token_id is not None:
        ending |= _by_token.get(revocation.token_id, set())
    if revocation.app_id is not None:
        ending |= _by_app.get(revocation.app_id, set())
    for entry in ending:
        entry.end(revocation.reason)


# --- publishing -----------------------------------------------------------------


def publish(revocation: Revocation) -> None:
    """Apply ``revocation`` here and send it to every other gateway process.

    Call once the change is committed (``transaction.on_commit``). A channel
    layer that is down is logged, not raised: the change is committed, and
    other processes' caches age out within SLUICE_TOKEN_CACHE_SECONDS.
    """
    _apply_here(revocation)
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return  # one process: applied above
    message = {
        "type": MESSAGE_TYPE,
        "origin": ORIGIN,
        "app_id": revocation.app_id,
        "token_id": revocation.token_id,
        "reason": revocation.reason,
    }
    try:
        _send(layer, message)
    except Exception as error:
        logger.warning("revocation not sent to other instances: %s", _name(error))


def _send(layer: Any, message: dict[str, Any]) -> None:
    # The layer's connections belong to the loop that made them: a gateway
    # process sends on its own loop, without waiting (the caller may be a
    # thread serving the admin); a management command has no loop and waits.
    loop = _loop if _loop is not None and _loop.is_running() else _running_loop()
    if loop is None:
        async_to_sync(layer.group_send)(GROUP, message)
        return
    send = layer.group_send(GROUP, message)
    if _running_loop() is loop:
        future: Any = loop.create_task(send)
    else:
        future = asyncio.run_coroutine_threadsafe(send, loop)
    future.add_done_callback(_log_send_failure)


def _apply_here(revocation: Revocation) -> None:
    apply(Revocation(revocation.app_id, revocation.token_id))  # the caches: thread-safe
    loop = _loop
    if revocation.reason is None or loop is None or not loop.is_running():
        return  # nothing is watched here (a management command, or no connection yet)
    if _running_loop() is loop:
        apply(revocation)
    else:
        loop.call_soon_threadsafe(apply, revocation)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _log_send_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("revocation not sent to other instances: %s", _name(future.exception()))


def _name(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


# --- listening --------------------------------------------------------------------

_listener: asyncio.Task[None] | None = None
_shared: bool | None = None  # whether the channel layer reaches other processes


def ensure_listener() -> None:
    """Start this process's listener on the running loop, once (no-op without a shared layer)."""
    global _listener, _loop, _shared
    if (_listener is not None and not _listener.done()) or _shared is False:
        return
    layer = get_channel_layer()
    _shared = layer is not None and not isinstance(layer, InMemoryChannelLayer)
    if not _shared:
        return
    _loop = asyncio.get_running_loop()
    _listener = _loop.create_task(listen(layer), name="revocation listener")


async def stop_listener() -> None:
    global _listener
    task, _listener = _listener, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def listen(layer: Any) -> None:
    """Apply the revocations other processes publish, for as long as the process runs."""
    failures = 0
    while True:
        try:
            channel = await layer.new_channel()
            await layer.group_add(GROUP, channel)
            if failures:
                logger.warning("revocation listener: back after %d failed attempts", failures)
            failures = 0
            rejoin = asyncio.ensure_future(_rejoin(layer, channel))
            try:
                while True:
                    _receive(await layer.receive(channel))
            finally:
                rejoin.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures += 1
            if failures == 1:
                logger.warning(
                    "revocation listener: channel layer unreachable (%s); retrying", _name(error)
                )
            await asyncio.sleep(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 6)))


async def _rejoin(layer: Any, channel: str) -> None:
    # Group membership expires, and a Redis restarted without its data forgot it.
    while True:
        await asyncio.sleep(REJOIN_SECONDS)
        with contextlib.suppress(Exception):
            await layer.group_add(GROUP, channel)


def _receive(message: dict[str, Any]) -> None:
    if message.get("type") != MESSAGE_TYPE or message.get("origin") == ORIGIN:
        return
    app_id, token_id, reason = message.get("app_id"), message.get("token_id"), message.get("reason")
    apply(Revocation(app_id=app_id, token_id=token_id, reason=reason))
