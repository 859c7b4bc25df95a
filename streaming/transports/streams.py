"""Finding a stream by id: running here, ended here, or (with Redis) on another instance.

Each kind offers the same surface (``core.reader.StreamHandle``), so the
transports do not care where a stream runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError

from accounts.identity import AppIdentity
from gateway.redis import redis_enabled
from streaming.core.log import CursorTrimmed
from streaming.core.reader import StreamHandle
from streaming.core.redis_log import RemoteStream
from streaming.core.session import get_session
from streaming.transports.errors import ApiError


@contextlib.contextmanager
def shared_store() -> Iterator[None]:
    """A Redis failure as a 503: the stream may exist on another instance, and
    this one cannot tell until Redis is back (a 500 would say it is our bug)."""
    try:
        yield
    except RedisError as error:
        raise ApiError(
            503,
            f"streams of other instances cannot be reached now ({type(error).__name__})",
            code="stream_store_unavailable",
        ) from None


async def find_stream(identity: AppIdentity, stream_id: str) -> StreamHandle:
    """The stream, if it exists and belongs to this app (404 / 403 otherwise)."""
    handle: StreamHandle | None = get_session(stream_id)
    if handle is None and redis_enabled():
        with shared_store():
            handle = await RemoteStream.find(stream_id)
    if handle is None:
        raise ApiError(
            404, f"no stream '{stream_id}' (unknown or expired)", code="stream_not_found"
        )
    if handle.app_id != identity.app_id:
        raise ApiError(403, "this stream belongs to another app", code="stream_forbidden")
    return handle


async def check_cursor(handle: StreamHandle, cursor: int) -> bool:
    """Whether anything follows ``cursor``; 409 if the cursor cannot be resumed from."""
    try:
        with shared_store():
            return await handle.remaining(cursor)
    except CursorTrimmed:
        raise ApiError(
            409,
            f"event {cursor} is not in this stream; it cannot resume from there",
            code="cursor_out_of_range",
        ) from None


async def request_cancel(handle: StreamHandle) -> None:
    """Cancel the stream wherever it runs (through Redis if on another instance)."""
    with shared_store():
        await handle.request_cancel()
