"""Following a stream from a cursor: replay what was missed, then go live.

Every connection reads a stream through one ``Reader``: one loop that takes
the events after its cursor in batches, has its transport's encoder render
them, sends them, and tells its observers (metrics) what went out and why it
stopped. A client whose sends stall is cut off (``SendWatch``). A reader
that falls behind gets the events it missed in one larger batch, so it holds
no queue of its own: what it holds is bounded by SLUICE_READER_BUFFER_BYTES
(see ``follow``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from redis.exceptions import RedisError

from streaming.core.deliveries import Delivery
from streaming.core.events import Entry, Failure, Inbound
from streaming.core.log import CursorTrimmed, MemoryStreamLog

# What a reader's follow raises when the rest of its stream cannot be read:
# the log expired under a reader on another instance, or Redis failed. The
# head is out by then, so the transport ends the reader short ("broken").
UNREADABLE = (CursorTrimmed, RedisError)


class _KeepAlive:
    """Wakes a waiting reader after ``interval`` seconds without events.

    One timer per interval, not one per event: each event only records the
    time, and the timer, when it fires early, re-arms for the remainder.
    """

    __slots__ = ("_handle", "_interval", "_loop", "last", "waiter")

    def __init__(self, interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self.last = self._loop.time()
        self.waiter: asyncio.Future[None] | None = None
        self._handle = self._loop.call_at(self.last + interval, self._check)

    def _check(self) -> None:
        due = self.last + self._interval
        now = self._loop.time()
        if now >= due:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            due = now + self._interval
        self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._handle.cancel()


class SendWatch:
    """Cancels the current task when one send has waited ``limit`` seconds.

    Per send it only notes the time; its one timer fires once per ``limit``
    and re-arms for the remainder (a timer per send was a good part of the
    cost of relaying a token).
    """

    __slots__ = ("_handle", "_loop", "_since", "fired", "limit", "task")

    def __init__(self, limit: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.limit = limit
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None
        self._handle = self._loop.call_at(self._loop.time() + limit, self._check)

    def sending(self) -> None:
        self._since = self._loop.time()

    def sent(self) -> None:
        self._since = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now - since >= self.limit:
            self.fired = True
            self.task.cancel()
            return
        base = now if since is None else since
        self._handle = self._loop.call_at(base + self.limit, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


async def follow(
    log: MemoryStreamLog,
    cursor: int,
    *,
    buffer_bytes: int,
    keepalive: float | None = None,
) -> AsyncIterator[Sequence[Entry] | None]:
    """Yield batches of entries after ``cursor`` until END; None means 'send a keep-alive'.

    A batch is a view of the log (``LogBatch``), encoded into one write. While
    a slow client's socket is full, its reader holds that write, the server's
    framed copy of it, and what the transport still buffers from before (up
    to its high-water mark: 64 KiB on uvicorn). So a batch is at most a
    quarter of ``buffer_bytes``, and what one reader holds stays within it.
    (Measured with the default 256 KiB, 8 stalled readers: at half, 0.33 to
    0.44 MiB of RSS per reader; at a quarter, about 0.1.)
    """
    batch_bytes = buffer_bytes // 4
    idle = _KeepAlive(keepalive) if keepalive else None
    try:
        while True:
            if log.last_seq <= cursor and not log.ended:
                if idle is None:
                    await log.wait_after(cursor)
                else:
                    idle.waiter = log.next_append()
                    await idle.waiter
                    idle.waiter = None
                    if log.last_seq <= cursor and not log.ended:
                        idle.touch()
                        yield None
                        continue
            batch = log.read_after(cursor, batch_bytes)
            if not batch:
                return
            cursor += len(batch)
            if idle is not None:
                idle.touch()
            yield batch
            if log.ended and cursor == log.last_seq:
                return  # that batch ended with END
    finally:
        if idle is not None:
            idle.cancel()


# -- one reader loop per connection ------------------------------------------------
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class StreamHandle(Protocol):
    """A stream as its readers see it, wherever it runs: a ``StreamSession``
    here, an ``EndedStream`` kept here, a ``RemoteStream`` read through Redis
    (found by transports.streams)."""

    @property
    def id(self) -> str: ...

    @property
    def app_id(self) -> int: ...

    @property
    def created(self) -> int: ...

    @property
    def finished(self) -> bool: ...

    @property
    def inbound(self) -> Inbound:
        """The API the stream was started in: its readers get that protocol."""

    async def entries(self) -> Sequence[Entry]:
        """Every event logged so far, without waiting for more."""

    async def remaining(self, cursor: int) -> bool:
        """Whether events follow ``cursor``; CursorTrimmed if it is not in the log."""

    async def request_cancel(self) -> None: ...

    def model_at(self, cursor: int) -> str:
        """The model answering at ``cursor`` (for encoders that name it)."""

    def follow(
        self, cursor: int, *, keepalive: float | None = None
    ) -> AsyncIterator[Sequence[Entry] | None]: ...

    def attach(self, *, resumed: bool, delivery: Delivery | None = None) -> None: ...

    def detach(self, delivery: Delivery | None = None) -> None:
        """A reader closed; its ``delivery`` (what it was given) goes to the audit."""

    def outcome_now(self) -> str: ...


class Encoder(Protocol[T_co]):
    """Renders a stream's events in one protocol for one reader; may keep state."""

    def encode(self, batch: Sequence[Entry]) -> T_co: ...

    def keepalive(self) -> T_co: ...

    def farewell(self, failure: Failure) -> T_co:
        """Last words when the reader is ended early (its identity was revoked)."""


class ReaderObserver(Protocol):
    """Told when a reader starts, what it sent and, once, why it stopped (see ``Reader.run``)."""

    def opened(self) -> None: ...

    def sent(self, size: int) -> None: ...

    def closed(self, reason: str) -> None: ...


class ReaderStalled(Exception):
    """A send waited READER_STALL_SECONDS: the client is cut off (it can resume)."""


_CANCELLED_OUTCOMES = {"cancelled", "abandoned", "client_disconnected"}


def end_reason(outcome: str) -> str:
    """Why a reader that got to the end of a stream closed: completed, cancelled or error."""
    if outcome == "completed":
        return "completed"
    return "cancelled" if outcome in _CANCELLED_OUTCOMES else "error"


class Reader(Generic[T]):
    """One client reading one stream from ``cursor``: replay, then live, to the end.

    ``run(send)`` is the whole delivery: each batch of events is encoded once
    and handed to ``send`` (the transport's write). It returns at the stream's
    end; it raises ReaderStalled when a send waits ``stall`` seconds, the
    errors in ``UNREADABLE`` when the rest cannot be read, and whatever the
    transport's ``send`` raises. Observers hear of every send and of the close,
    with its reason: completed, cancelled, error, slow_client, client_gone or broken.
    """

    __slots__ = (
        "cursor",
        "delivery",
        "encoder",
        "handle",
        "keepalive",
        "observers",
        "resumed",
        "size",
        "stop_reason",
    )

    def __init__(
        self,
        handle: StreamHandle,
        cursor: int,
        encoder: Encoder[T],
        *,
        resumed: bool,
        size: Callable[[T], int],
        keepalive: float | None = None,
        observers: Sequence[ReaderObserver] = (),
        transport: str = "",
        actor: str = "",
        resumed_from: int | None = None,
    ) -> None:
        self.handle, self.cursor, self.encoder = handle, cursor, encoder
        self.resumed, self.size, self.keepalive, self.observers = (
            resumed,
            size,
            keepalive,
            observers,
        )
        # For the audit: the wire protocol, who reads, and the client's own
        # cursor where it is not the log's (Responses, Messages).
        self.delivery = Delivery(
            transport,
            actor,
            cursor,
            resumed=resumed,
            resumed_from=cursor if resumed_from is None else resumed_from,
        )
        self.stop_reason = ""  # set by the transport before it cancels the reader (revoked)

    async def run(self, send: Callable[[T], Awaitable[Any]], *, stall: float) -> None:
        handle, encoder, size = self.handle, self.encoder, self.size
        watch = SendWatch(stall)
        reason = "error"
        delivery = self.delivery
        handle.attach(resumed=self.resumed, delivery=delivery)
        for observer in self.observers:
            observer.opened()
        try:
            async for batch in handle.follow(self.cursor, keepalive=self.keepalive):
                data = encoder.keepalive() if batch is None else encoder.encode(batch)
                watch.sending()
                await send(data)
                watch.sent()
                if batch is not None:  # the last one sent: the delivery counts from it
                    delivery.batch = batch
                for observer in self.observers:
                    observer.sent(size(data))
                del data  # sent: not held while the next batch is read and encoded
            reason = end_reason(handle.outcome_now())
        except asyncio.CancelledError:
            if not watch.fired:
                reason = self.stop_reason or "client_gone"
                raise
            watch.task.uncancel()
            reason = "slow_client"
        except UNREADABLE:
            reason = "broken"
            raise
        except OSError:
            reason = "client_gone"
            raise
        finally:
            watch.cancel()
            delivery.close(reason)
            handle.detach(delivery)
            for observer in self.observers:
                observer.closed(reason)
        if reason == "slow_client":
            # Raised out here, not from the handler: an exception raised while
            # handling the cancellation would carry it, and its frames (with the
            # write that did not go out) for as long as the new one is kept.
            raise ReaderStalled(f"a send waited {watch.limit}s")
