"""What each client connection was delivered, for the audit.

A ``Reader`` counts what it sends in its ``Delivery`` (two stores per batch,
in the loop it already runs) and hands it to its stream when it attaches and
detaches. A stream running here keeps its readers' deliveries and hands them
to the audit with its record: the record waits for the readers still sending
the last events when the stream ends, up to ``WAIT_SECONDS``. A connection
that cannot reach the record (it read the stream after it was made, or on
another instance) is an ``AuditNote`` of kind ``delivery`` instead, written
off the event loop; so is a staff member's live watch (kind ``watch``, see
streaming.tail).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from channels.db import database_sync_to_async

from streaming.core.events import Entry

WAIT_SECONDS = 0.5  # a reader that takes longer to finish is "open" in the record, then a note
NOTES_WAIT_SECONDS = 5.0
_pending: set[asyncio.Task[Any]] = set()  # notes being written: held until done


class Delivery:
    """One connection's reading of one stream: where from, how much, how it ended."""

    __slots__ = (
        "actor",
        "batch",
        "connected_at",
        "cursor",
        "ended",
        "ended_at",
        "last_seq",
        "resumed",
        "resumed_from",
        "transport",
    )

    def __init__(
        self, transport: str, actor: str, cursor: int, *, resumed: bool, resumed_from: int
    ) -> None:
        self.transport, self.actor = transport, actor
        # ``cursor``: where in the log it starts; ``resumed_from``: the client's
        # own cursor (the same, but in Responses' or Messages' numbering for those).
        self.cursor = cursor
        self.resumed, self.resumed_from = resumed, resumed_from
        self.connected_at = time.time()
        # The last batch handed to the connection: one store per batch, counted
        # when asked (a reader gets the log's events in order, from ``cursor``).
        self.batch: Sequence[Entry] | None = None
        self.last_seq = cursor  # as of ``close``
        self.ended = ""  # why it closed (Reader.run's reasons); "" while open
        self.ended_at: float | None = None

    def _last(self) -> int:
        return self.batch[-1][0] if self.batch else self.last_seq

    @property
    def events(self) -> int:
        """Log events handed to the connection."""
        return self._last() - self.cursor

    def close(self, reason: str) -> None:
        self.last_seq, self.batch = self._last(), None  # the batch holds a log: let it go
        self.ended, self.ended_at = reason, time.time()

    def as_dict(self, generated: int | None) -> dict[str, Any]:
        """As the audit keeps it; ``generated``: the stream's events, if known."""
        return {
            "transport": self.transport,
            "actor": self.actor,
            "connected_at": self.connected_at,
            "resumed": self.resumed,
            "from": self.resumed_from if self.resumed else None,
            "events": self.events,
            "last_seq": self._last(),
            "ended_at": self.ended_at,
            "ended": self.ended or "open",
            "generated": generated,
        }


@database_sync_to_async
def _note_add(**fields: Any) -> None:
    # Imported here: streaming.core is imported before the apps are ready.
    from audit.services import audit_note_add

    audit_note_add(**fields)


def note(request_id: str, kind: str, actor: str, detail: dict[str, Any]) -> None:
    """Write a note in the background; never raises, never waits (a note lost is logged)."""
    task = asyncio.get_running_loop().create_task(
        _note_add(request_id=request_id, kind=kind, actor=actor, detail=detail, at=time.time())
    )
    _pending.add(task)
    task.add_done_callback(_pending.discard)


def note_delivery(request_id: str, delivery: Delivery, generated: int | None) -> None:
    """A connection that read ``request_id`` beyond its record: a ``delivery`` note."""
    detail = delivery.as_dict(generated)
    note(request_id, "delivery", str(detail.pop("actor")), detail)


async def notes_written() -> None:
    """Wait for the notes being written, at most ``NOTES_WAIT_SECONDS`` (shutdown, tests)."""
    if _pending:
        await asyncio.wait(list(_pending), timeout=NOTES_WAIT_SECONDS)
