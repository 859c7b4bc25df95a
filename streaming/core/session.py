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
from audit.records import AttemptEntry
from audit.writer import audit_submit
from streaming.core import finished, redis_log
from streaming.core.admission import Admission
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
from streaming.core.outcome import new_audit, record_failure, served_headers
from streaming.core.reader import follow
from streaming.core.transcript import Transcript
from streaming.observability import metrics
from streaming.observability.logging import bind, stream_end_fields
from streaming.providers import ChatRequest, UpstreamError
from streaming.routing.fallback import has_output, route_stream
from streaming.routing.routes import ResolvedRoute

logger = logging.getLogger("sluice.stream")

_sessions: dict[str, StreamSession] = {}  # running; finished ones are in streaming.core.finished


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
    ) -> None:
        self.id = new_stream_id(id_prefix)
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
        self.transcript = Transcript()
        self.failure: Failure | None = None  # why it failed, once it has
        self.readers = 0
        self.resumes = 0
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
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"stream {self.id}")
        self.task.add_done_callback(self._ensure_ended)
        # A revoked token or app stops its generations too (they are paid for);
        # a token's expiry does not: the request was made while it was valid.
        self._watch = revocation.watch(self.identity, self._revoke, until_expiry=False)
        if redis_log.redis_enabled():
            mirror = redis_log.RedisMirror(
                self.id,
                self.log,
                app_id=self.app_id,
                model=self.route.model,
                created=self.created,
                inbound=self.inbound,
            )
            mirror.start()
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
    def attach(self, *, resumed: bool) -> None:
        self.readers += 1
        if resumed:
            self.resumes += 1
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None

    def detach(self) -> None:
        self.readers -= 1
        if self.readers == 0:
            self._arm_abandon()

    def follow(
        self, cursor: int, *, keepalive: float | None = None
    ) -> AsyncIterator[Sequence[Entry] | None]:
        """The log from ``cursor`` (see reader.follow); a Reader attaches around it."""
        buffer_bytes = settings.SLUICE_READER_BUFFER_BYTES
        return follow(self.log, cursor, buffer_bytes=buffer_bytes, keepalive=keepalive)

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
            async with aclosing(route_stream(self.route, self.request, audit)) as bodies:
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
                "log_full",
                str(error),
            )
            self._fail(Failure(502, str(error), code="stream_too_large", type="server_error"))
        except asyncio.CancelledError:
            self._record_cancel()
        except Exception:
            logger.exception("stream %s failed", self.id)
            audit.outcome, audit.error_class = "upstream_error", "internal_error"
            self._fail(Failure(500, "internal error", code="internal_error", type="server_error"))
        finally:
            self._end()

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
        if not self.log.ended:
            self._record_cancel()
            self._end()

    def _end(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
        if self._watch is not None:
            self._watch.close()
        self.log.append(END, b"")
        audit = self.audit
        self.transcript.fill(audit)
        audit.resumes = self.resumes
        audit.ended_at = time.time()
        audit.duration_ms = (audit.ended_at - audit.started_at) * 1000
        if audit.attempts:
            audit.provider = audit.attempts[-1].provider
            audit.upstream_model = audit.attempts[-1].upstream_model
        audit_submit(audit)
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


def get_session(stream_id: str) -> StreamSession | finished.EndedStream | None:
    """The stream if it runs on this instance, or ended here within its TTL."""
    return _sessions.get(stream_id) or finished.find(stream_id)
