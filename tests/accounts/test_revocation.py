"""The per-process revocation registry and its listener, without a server.

The end-to-end behaviour (real gateways, real clients, Redis) is in
tests/streams/test_revocation.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

import pytest
from channels_redis.core import RedisChannelLayer

from accounts import revocation
from accounts.identity import AppIdentity
from accounts.revocation import Revocation
from tests.live import free_port


def identity(app_id: int, token_id: int | None, expires_at: float = math.inf) -> AppIdentity:
    return AppIdentity(
        app_id=app_id,
        client_id=f"client-{app_id}",
        name=f"app-{app_id}",
        token_id=token_id,
        scopes=frozenset({"chat"}),
        allowed_models=None,
        expires_at=expires_at,
    )


async def test_a_revoked_token_ends_its_connections_once() -> None:
    ended: list[tuple[str, str]] = []
    revocation.watch(identity(1, 10), lambda reason: ended.append(("alice", reason)))
    bobs = revocation.watch(identity(2, 20), lambda reason: ended.append(("bob", reason)))

    revocation.apply(Revocation(token_id=10, reason="token_revoked"))
    revocation.apply(Revocation(token_id=10, reason="token_revoked"))

    assert ended == [("alice", "token_revoked")]
    bobs.close()
    assert revocation.watched() == 0


async def test_a_disabled_app_ends_every_connection_of_the_app() -> None:
    ended: list[str] = []
    for token_id in (10, 11, None):  # two tokens, and the playground's (no token)
        revocation.watch(identity(1, token_id), ended.append)

    revocation.apply(Revocation(app_id=1, reason="app_disabled"))

    assert ended == ["app_disabled"] * 3


async def test_a_change_without_a_reason_leaves_connections_open() -> None:
    ended: list[str] = []
    watch = revocation.watch(identity(1, 10), ended.append)

    revocation.apply(Revocation(app_id=1, token_id=10))

    assert ended == []
    watch.close()


async def test_a_connection_ends_at_its_tokens_expiry() -> None:
    expired = asyncio.get_running_loop().create_future()
    revocation.watch(identity(1, 10, expires_at=time.time() + 0.2), expired.set_result)

    assert await asyncio.wait_for(expired, 10) == "token_expired"
    assert revocation.watched() == 0


async def test_published_from_another_thread_it_ends_connections_on_the_loop() -> None:
    ended = asyncio.get_running_loop().create_future()
    revocation.watch(identity(1, 10), ended.set_result)

    publisher = threading.Thread(
        target=revocation.publish, args=(Revocation(token_id=10, reason="token_revoked"),)
    )
    publisher.start()
    publisher.join()

    assert await asyncio.wait_for(ended, 10) == "token_revoked"


async def test_the_listener_retries_quietly_while_the_layer_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
    listener = asyncio.ensure_future(revocation.listen(layer))
    with caplog.at_level(logging.WARNING, logger="sluice.revocation"):
        await asyncio.sleep(2.5)  # several attempts

    assert not listener.done()
    listener.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listener
    warnings = [r for r in caplog.records if r.name == "sluice.revocation"]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()
