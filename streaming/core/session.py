"""StreamSession: one generation, owned by the gateway, not by a connection.

The session runs the upstream call as its own task and appends every chunk to
its StreamLog. Clients attach and detach as readers; the generation goes on
without them (the tokens are paid for) until it ends, is cancelled, or nobody
has read it for SLUICE_STREAM_ABANDON_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import orjson
from django.conf import settings

from accounts import revocation
from accounts.identity import AppIdentity
from audit.records import AttemptEntry, AuditEntry
from audit.writer import audit_submit
from streaming.core import deliveries, finished, redis_log
from streaming.core.admission import Admission
from streaming.core.deliveries import Delivery
from streaming.core.durable import DurableView
from streaming.core.events import (
    CHAT,
    END,
    ERROR,
    START,
    Entry,
    Failure,
    Inbound,
    events_of,
    start_event,
)
from streaming.core.log import LogLimits, MemoryStreamLog, StreamLogFull
from streaming.core.mirror import RedisMirror
from streaming.core.outcome import (
    INSTANCE_LOST,
    INTERNAL_ERROR,
    LOG_FULL,
    new_audit,
    record_failure,
    served_headers,
    write_ahead,
)
from streaming.core.reader import follow
from streaming.core.takeover_state import Adopted, registration
from streaming.core.transcript import Transcript
from streaming.observability import metrics
from streaming.observability.logging import bind, stream_end_fields
from streaming.providers import ChatRequest, UpstreamError
from streaming.routing.fallback import has_output, route_stream
from streaming.routing.routes import ResolvedRoute

logger = logging.getLogger("sluice.stream")

_sessions: dict[str, StreamSession] = {}  # running; finished ones are in streaming.core.finished
_waiting: set[StreamSession] = set()  # ended, their records waiting for readers to close


def new_stream_id(prefix: str = "chatcmpl-") -> str:
    return prefix + secrets.token_hex(12)


class StreamSession:
    """A running (or finished) generation and its log."""

    def __init__(
        self,
        *,
        identity: AppIdentity,
        request: ChatRequest,
        route: ResolvedRoute,
        protocol: str,
        client_ip: str | None,
        inbound: Inbound = CHAT,
        id_prefix: str = "chatcmpl-",
        background: bool = False,
        admission: Admission | None = None,
        stream_id: str | None = None,
    ) -> None:
        # A stream taken over from a lost instance keeps its id (streaming.core.takeover).
        self.id = stream_id or new_stream_id(id_prefix)
        # What the app's limits reserved for it; settled when it ends, however it ends.
        self.admission = admission
        self.inbound = inbound
        # A background generation runs to its end with no reader (OpenAI's
        # ``background: true``): it is never abandoned.
        self.background = background
        self.identity = identity
        self.request = request
        self.route = route
        self.created = int(time.time())
        limits = LogLimits.shared(
            settings.SLUICE_STREAM_MAX_EVENTS, settings.SLUICE_STREAM_MAX_BYTES
        )
        self.log = MemoryStreamLog(limits)
        # With takeover on, local readers see what Redis holds (streaming.core.durable).
        self.view: DurableView | None = None
        self.mirror: RedisMirror | None = None  # its copy in Redis
        self.adopted: Adopted | None = None  # what a lost instance left, once taken over
        self.handing_over = False  # shutting down: stopped without END, for another to carry on
        self.transcript = Transcript()
        self.failure: Failure | None = None  # why it failed, once it has
        self.readers = 0
        self.resumes = 0
        self.deliveries: list[Delivery] = []  # of its readers that closed
        self._open: set[Delivery] = set()  # of its readers still reading
        self._unsubmitted: AuditEntry | None = None  # ended, waiting for its readers
        self._submit_timer: asyncio.TimerHandle | None = None
        self._abandon: asyncio.TimerHandle | None = None
        self._cancel_reason = ""
        self._revoked = ""  # why the identity behind it was revoked, if it was
        self._watch: revocation.Watch | None = None
        self._answering: AttemptEntry | None = None  # the attempt whose output the log holds
        self.audit = new_audit(
            self.id,
            protocol,
            request.model,
            identity,
            client_ip,
            messages=request.messages,
            params={**request.params, "stream": request.stream},
        )
        self.task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        _sessions[self.id] = self
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run(), name=f"stream {self.id}")
        # After the task's first step has sent the upstream request: the copy
        # and its pickling (~13 us) then overlap the wait for the first token.
        # Should the final entry come first, it still wins (audit.services).
        if self.adopted is None:  # a taken-over stream's record is there already
            loop.call_soon(write_ahead, self.audit)
        self.task.add_done_callback(self._ensure_ended)
        # A revoked token or app stops its generations too (they are paid for);
        # a token's expiry does not: the request was made while it was valid.
        self._watch = revocation.watch(self.identity, self._revoke, until_expiry=False)
        if redis_log.redis_enabled():
            takeover = settings.SLUICE_TAKEOVER_SECONDS > 0
            if takeover:
                self.view = DurableView(self.log, self.adopted.seq if self.adopted else 0)
            self.mirror = RedisMirror(
                self.id,
                self.log,
                app_id=self.app_id,
                model=self.route.model,
                created=self.created,
                inbound=self.inbound,
                view=self.view,
                registration=(lambda: registration(self)) if takeover else None,
                resume_from=self.adopted.seq if self.adopted else 0,
            )
            self.mirror.on_fenced = self._fenced
            self.mirror.start()
            redis_log.ensure_cancel_listener(cancel_local)
        self._arm_abandon()

    def cancel(self, reason: str = "cancelled") -> None:
        if self.task is not None and not self.task.done():
            self._cancel_reason = reason
            self.task.cancel()

    def _revoke(self, reason: str) -> None:
        self._revoked = reason
        self.cancel("cancelled")

    @property
    def finished(self) -> bool:
        return self.log.ended

    @property
    def app_id(self) -> int:
        return self.identity.app_id

    @property
    def app_name(self) -> str:
        return self.identity.name

    @property
    def route_name(self) -> str:
        return self.route.model

    def outcome_now(self) -> str:
        return self.audit.outcome or "completed"

    def model_at(self, cursor: int) -> str:
        start = self.log.last_of(START, cursor)
        return orjson.loads(start)["model"] if start else self.route.model

    async def remaining(self, cursor: int) -> bool:
        """Whether events follow ``cursor``; CursorTrimmed if it is not in the log."""
        return bool(self.log.read_after(cursor, 1)) or not self.finished

    async def request_cancel(self) -> None:
        self.cancel("cancelled")

    async def entries(self) -> Sequence[Entry]:
        """Every event logged so far."""
        return self.log.read_after(0, 1 << 62)

    async def wait_finished(self) -> None:
        await self.log.wait_after(10**12)

    # -- readers ---------------------------------------------------------
    def attach(self, *, resumed: bool, delivery: Delivery | None = None) -> None:
        self.readers += 1
        if resumed:
            self.resumes += 1
        if delivery is not None:
            self._open.add(delivery)
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None

    def detach(self, delivery: Delivery | None = None) -> None:
        self.readers -= 1
        if delivery is not None:
            self._delivered(delivery)
        if self.readers == 0:
            self._arm_abandon()

    def _delivered(self, delivery: Delivery) -> None:
        """A reader closed: its delivery goes with the record, or (the record
        already submitted) into a note."""
        self._open.discard(delivery)
        if not self.finished or self._unsubmitted is not None:
            self.deliveries.append(delivery)
            if self._unsubmitted is not None and not self._open:
                self._submit_audit()
        else:
            deliveries.note_delivery(self.id, delivery, self.log.last_seq)

    def follow(
        self, cursor: int, *, keepalive: float | None = None
    ) -> AsyncIterator[Sequence[Entry] | None]:
        """The log from ``cursor`` (see reader.follow); a Reader attaches around it."""
        buffer_bytes = settings.SLUICE_READER_BUFFER_BYTES
        log: Any = self.view or self.log  # the same read side (streaming.core.durable)
        return follow(log, cursor, buffer_bytes=buffer_bytes, keepalive=keepalive)

    def _arm_abandon(self) -> None:
        if self.readers == 0 and not self.finished and not self.background:
            delay = settings.SLUICE_STREAM_ABANDON_SECONDS
            loop = asyncio.get_running_loop()
            self._abandon = loop.call_later(delay, self._abandon_check)

    def _abandon_check(self) -> None:
        if not redis_log.redis_enabled():
            self.cancel("abandoned")
            return
        # Someone may be reading this stream on another instance.
        asyncio.get_running_loop().create_task(self._abandon_unless_read_elsewhere())

    async def _abandon_unless_read_elsewhere(self) -> None:
        if await redis_log.remote_reader_active(self.id):
            self._arm_abandon()
        elif self.readers == 0:
            self.cancel("abandoned")

    # -- the generation --------------------------------------------------
    def _append(self, body: dict[str, Any]) -> None:
        """Log one chunk body from the router as neutral events (usage only
        for clients that asked for it; the transcript keeps it anyway)."""
        self.transcript.add(body)
        log = self.log
        # The answer names the model that made it (as OpenAI names the snapshot
        # it resolved to), so after a fallback or a continuation the client sees who answered.
        attempts = self.audit.attempts
        if attempts and attempts[-1] is not self._answering:
            continued = self._answering is not None
            self._answering = attempts[-1]
            log.append(START, start_event(attempts[-1].upstream_model, continued=continued))
        for kind, payload in events_of(body, usage=self.request.include_usage):
            log.append(kind, payload)

    def limit_headers(self) -> dict[str, str]:
        """The app's ``x-ratelimit-*`` headers, as of the stream's admission."""
        return self.admission.headers() if self.admission is not None else {}

    def served_headers(self) -> dict[str, str]:
        """Response headers that say which target answered, and how it came to,
        and what is left of the app's limits."""
        return {"X-Sluice-Stream-Id": self.id, **served_headers(self.audit), **self.limit_headers()}

    def _fail(self, failure: Failure) -> None:
        self.failure = failure
        self.log.append(ERROR, failure.payload())

    async def _run(self) -> None:
        audit = self.audit
        bind(stream_id=self.id)
        metrics.stream_started(self)
        try:
            # Closed before the end, however it comes: closing settles the
            # attempts' usage and cost on the audit entry.
            if self.adopted is not None and self.adopted.refusal is not None:
                # Interrupted, as a lost instance's stream that is not carried on.
                refusal = self.adopted.refusal
                audit.outcome, audit.error_class = "interrupted", INSTANCE_LOST
                audit.error_message = f"{audit.attempts[-1].error_message}: {refusal.message}"
                self._fail(refusal)
                return
            if self.adopted is not None and self.adopted.progress.finished:
                audit.outcome = "completed"  # the lost instance had it all but the END
                return
            progress = self.adopted.progress if self.adopted is not None else None
            bodies_of = route_stream(self.route, self.request, audit, progress=progress)
            async with aclosing(bodies_of) as bodies:
                async for body in bodies:
                    self._append(body)
                    if audit.ttft_ms is None and has_output(body):
                        audit.ttft_ms = (time.time() - audit.started_at) * 1000
                        metrics.first_token(self)
                        # The upstream may have sent more already; reading it all
                        # before yielding would hold the first token back from
                        # its readers. Let them send it first.
                        await asyncio.sleep(0)
            audit.outcome = "completed"
        except UpstreamError as error:
            self._fail(record_failure(self.audit, error))
        except StreamLogFull as error:
            audit.outcome, audit.error_class, audit.error_message = (
                "upstream_error",
                LOG_FULL,
                str(error),
            )
            self._fail(Failure(502, str(error), code="stream_too_large", type="server_error"))
        except asyncio.CancelledError:
            if self.handing_over:
                self._let_go_handed_over()
                return
            self._record_cancel()
        except Exception:
            logger.exception("stream %s failed", self.id)
            audit.outcome, audit.error_class = "upstream_error", INTERNAL_ERROR
            self._fail(Failure(500, "internal error", code="internal_error", type="server_error"))
        finally:
            if not self.handing_over:
                self._end()

    def _end_written(self) -> None:
        if not self._open:
            self._submit_audit()
        else:
            # Its readers are sending the last events: the record takes what
            # they delivered once they close, or (slow ones) what they have so far.
            loop = asyncio.get_running_loop()
            self._submit_timer = loop.call_later(deliveries.WAIT_SECONDS, self._submit_audit)
            _waiting.add(self)

    def _fenced(self) -> None:
        """Another instance took this stream over (this one was thought dead): stop."""
        logger.warning("stream %s: taken over by another instance; stopping here", self.id)
        self.handing_over = True
        self._unsubmitted = None  # its taker writes the record
        self.cancel("cancelled")

    def _let_go_handed_over(self) -> None:
        """Handed over at shutdown: no END, no record (its taker writes them)."""
        if self._abandon is not None:
            self._abandon.cancel()
        if self._watch is not None:
            self._watch.close()
        if self.admission is not None:
            self.admission.settle(self.audit)
        _sessions.pop(self.id, None)

    def _record_cancel(self) -> None:
        reason = self._cancel_reason or "cancelled"
        self.audit.outcome = reason
        if self._revoked:
            message = f"stream cancelled: {revocation.describe(self._revoked)}"
            self.audit.error_class, self.audit.error_message = self._revoked, message
            status = revocation.http_status(self._revoked)
            self._fail(Failure(status, message, code=self._revoked, type="invalid_request_error"))
            return
        self._fail(Failure(499, f"stream {reason}", code=reason, type="server_error"))

    def _ensure_ended(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before it ever ran never enters _run's finally:
        # end the log here so readers are not left waiting.
        if not self.log.ended and not self.handing_over:
            self._record_cancel()
            self._end()

    def _end(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
        if self._watch is not None:
            self._watch.close()
        audit = self.audit
        # What its client was answered with (a failure after the first token
        # was still a 200), not the failure's own status.
        audit.status_code = self._served_status() or audit.status_code
        self.log.append(END, b"")
        self.transcript.fill(audit)
        audit.resumes = self.resumes
        audit.ended_at = time.time()
        audit.duration_ms = (audit.ended_at - audit.started_at) * 1000
        if audit.attempts:
            audit.provider = audit.attempts[-1].provider
            audit.upstream_model = audit.attempts[-1].upstream_model
        self._unsubmitted = audit
        if self.mirror is not None and self.view is not None and not self.view.open:
            # Final once its END is in Redis while this instance owns the stream:
            # one taken over meanwhile gets its record from its taker.
            self.mirror.on_end = self._end_written
        else:
            self._end_written()
        if self.admission is not None:
            self.admission.settle(audit)
        metrics.stream_ended(self)
        logger.info("stream end", extra={"fields": stream_end_fields(self)})
        # From now on, what resume needs is kept, not the whole session.
        _sessions.pop(self.id, None)
        ttl = settings.SLUICE_STREAM_TTL_SECONDS
        finished.keep(
            self.id, self.app_id, self.created, audit.outcome, self.log, ttl, inbound=self.inbound
        )
        self._let_go()

    def _served_status(self) -> int | None:
        """The HTTP status its client was answered with (as ``api._hold_first_event``
        decides it): the failure's when the first event is an error, else 200;
        None when nothing was logged (the client left before any answer)."""
        if self.log.last_seq == 0:
            return None
        if self.log.read_after(0, 1)[0][1] != ERROR:
            return 200
        return self.failure.status if self.failure is not None else 502

    def _submit_audit(self) -> None:
        _waiting.discard(self)
        audit, self._unsubmitted = self._unsubmitted, None
        if self._submit_timer is not None:
            self._submit_timer.cancel()
            self._submit_timer = None
        if audit is None:
            return
        generated = self.log.last_seq
        # Readers still on are "open": how they end will be a note.
        readers = sorted((*self.deliveries, *self._open), key=lambda d: d.connected_at)
        audit.deliveries = [d.as_dict(generated) for d in readers]
        self.deliveries = []
        audit_submit(audit)

    def _let_go(self) -> None:
        """Drop what only the generation and its audit needed.

        Readers of an ended stream use its log and its outcome, and they can
        hold the session long after the end: a slow client for as long as it
        reads, a stalled one until it is cut off. The request, the text and
        the transcript go now (the audit writer has its own entry); a
        non-streaming response is built from the transcript, so that stays.
        """
        self.request = replace(self.request, messages=[])
        self.audit = replace(self.audit, request_messages=[], response_text="", tool_calls=[])
        if self.audit.protocol != "json":
            self.transcript = Transcript()


def cancel_local(stream_id: str) -> None:
    session = _sessions.get(stream_id)
    if session is not None:
        session.cancel("cancelled")


def submit_waiting_audits() -> None:
    """Submit now the records still waiting for their readers (at shutdown)."""
    for session in list(_waiting):
        session._submit_audit()


def get_session(stream_id: str) -> StreamSession | finished.EndedStream | None:
    """The stream if it runs on this instance, or ended here within its TTL."""
    return _sessions.get(stream_id) or finished.find(stream_id)
