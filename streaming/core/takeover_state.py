"""What a stream must leave in Redis to be carried on elsewhere, and what is
made of it there (streaming.core.takeover runs the takeover itself).

``registration`` is written with the stream's meta hash by its mirror, off
the hot path, before its first event. ``adopt`` fills a new StreamSession on
the claimant from it and from the log: the log so far (same seqs), the
transcript, the record (the lost instance's, an attempt lost with it), and
either the progress to continue from or why the route may not continue it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from audit.instance import instance_id
from audit.records import AttemptEntry
from streaming.core.events import END, FINISH, START, TEXT, TOOL_CALL, Entry, Failure
from streaming.core.outcome import INSTANCE_LOST
from streaming.routing.continuation import StreamProgress

if TYPE_CHECKING:
    from accounts.identity import AppIdentity
    from audit.records import AuditEntry
    from streaming.core.admission import Admission
    from streaming.core.log import MemoryStreamLog
    from streaming.core.transcript import Transcript
    from streaming.providers import ChatRequest
    from streaming.routing.routes import ResolvedRoute

ERROR_CLASS = INSTANCE_LOST


@dataclass(slots=True)
class Adopted:
    """A stream taken over: how far its log went, and how it goes on."""

    seq: int  # the last event the lost instance wrote
    lost: str  # the lost instance's id
    progress: StreamProgress
    refusal: Failure | None = None  # set: the stream ends with this error


class StreamSession(Protocol):
    """What of a ``streaming.core.session.StreamSession`` this module reads and
    fills (a protocol: the session imports this module, not the other way)."""

    identity: AppIdentity
    request: ChatRequest
    audit: AuditEntry
    route: ResolvedRoute
    background: bool
    log: MemoryStreamLog
    transcript: Transcript
    _answering: AttemptEntry | None
    adopted: Adopted | None
    admission: Admission | None


def registration(session: StreamSession) -> dict[str, Any]:
    """The meta fields another instance needs to carry ``session`` on."""
    identity, request, audit = session.identity, session.request, session.audit
    held = session.admission.reservation if session.admission is not None else None
    return {
        # Its admission: the taker keeps the concurrency slot and settles it.
        "reservation": b"" if held is None or held.settled else orjson.dumps(held.kept()),
        "owner": instance_id(),
        "request": orjson.dumps(
            {
                "messages": request.messages,
                "params": request.params,
                "stream": request.stream,
                "include_usage": request.include_usage,
            }
        ),
        "route": session.route.model,
        "protocol": audit.protocol,
        "client_ip": audit.client_ip or "",
        "started_at": repr(audit.started_at),
        "background": int(session.background),
        "identity": orjson.dumps(
            {
                "app_id": identity.app_id,
                "client_id": identity.client_id,
                "name": identity.name,
                "token_id": identity.token_id,
                "staff_user_id": identity.staff_user_id,
                "staff_username": identity.staff_username,
                "redact": list(identity.redact),
            }
        ),
    }


def adopt(
    session: StreamSession, entries: Sequence[Entry], *, lost: str, started_at: float
) -> Adopted:
    """Make ``session`` (new, not started) the continuation of ``entries``."""
    progress = StreamProgress()
    answering = ""
    tokens = 0
    for _, kind, payload in entries:
        session.log.append(kind, payload)
        session.transcript.add_event(kind, payload)
        if kind == START:
            answering = orjson.loads(payload)["model"]
        elif kind == TEXT:
            text = orjson.loads(payload)
            progress.observe({"choices": [{"delta": {"content": text}}]})
            tokens += 1
        elif kind == TOOL_CALL:
            progress.observe({"choices": [{"delta": {"tool_calls": [{}]}}]})
            tokens += 1
        elif kind == FINISH:
            progress.finished = True
    audit = session.audit
    audit.started_at = started_at
    audit.instance, audit.taken_over_by = lost, instance_id()
    now = time.time()
    # The lost instance's attempts went with it: one stands for them, with what its log kept.
    attempt = AttemptEntry(
        provider="",
        upstream_model=answering,
        started_at=started_at,
        ended_at=now,
        outcome="failed",
        error_class=ERROR_CLASS,
        error_message=f"gateway instance {lost} lost; taken over by {instance_id()}",
        tokens=tokens,
    )
    if entries:
        audit.attempts.append(attempt)
        session._answering = attempt  # the next answer's START says it is a continuation
    adopted = Adopted(seq=len(entries), lost=lost, progress=progress)
    adopted.refusal = refusal(session, progress)
    session.adopted = adopted
    return adopted


def refusal(session: StreamSession, progress: StreamProgress) -> Failure | None:
    """Why the stream cannot be carried on (then it ends with this error), or None."""
    if progress.tool_call_started:
        return _lost("a tool call had begun, so the answer cannot be continued")
    continuing = progress.started and not progress.finished
    if continuing and not session.route.policy.allow_midstream_fallback:
        return _lost("this model's route does not allow continuing an answer")
    return None


def _lost(why: str) -> Failure:
    message = f"the gateway instance generating this stream was lost and {why}"
    return Failure(502, message, code=ERROR_CLASS, type="server_error")


def ended(entries: Sequence[Entry]) -> bool:
    return bool(entries) and entries[-1][1] == END
