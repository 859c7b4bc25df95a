"""Live tail: an auditor watches a stream in flight, read-only, from the admin.

``tail_page`` is a page whose ``EventSource`` opens ``tail_events``: the
stream's events as they are logged, from the same log and cursor machinery
its clients resume through (a reconnect sends ``Last-Event-ID``), on any
instance (a stream running elsewhere is read through Redis).

A watcher is not a reader: it does not attach (the stream's reader count,
its resume count and its abandonment are its clients' alone), it leaves no
reader's mark in Redis, and it can cancel nothing. Each watch is an
``AuditNote`` (kind ``watch``) naming the staff user. Staff holding
``audit.watch_stream`` only: 403 otherwise, 404 for an unknown stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import admin
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from redis.exceptions import RedisError

from accounts.services import app_redaction
from audit.redaction import HeldText, Rule, compile_rules, redact_json
from gateway.redis import redis_enabled, sync_client
from streaming.core import deliveries, session
from streaming.core.events import END, ERROR, FINISH, REASONING, REFUSAL, START, TEXT, TOOL_CALL
from streaming.core.log import CursorTrimmed
from streaming.core.reader import StreamHandle
from streaming.core.redis_log import RemoteStream

logger = logging.getLogger("sluice.tail")

WATCH_STREAM = "audit.watch_stream"
_NAMES = {
    START: b"start",
    TEXT: b"text",
    REASONING: b"reasoning",
    REFUSAL: b"refusal",
    TOOL_CALL: b"tool_call",
    FINISH: b"finish",
    ERROR: b"failure",  # not "error": EventSource fires that for its own errors
}


def may_watch(user: Any) -> bool:
    return bool(user.is_active and getattr(user, "is_staff", False) and user.has_perm(WATCH_STREAM))


def stream_running(stream_id: str) -> bool:
    """Whether the stream runs now, here or (with Redis) on another instance."""
    return stream_id in session._sessions or _shared_status(stream_id) == b"running"


def _stream_known(stream_id: str) -> bool:
    """Whether the stream can be watched: it runs, or ended within its TTL."""
    return session.get_session(stream_id) is not None or _shared_status(stream_id) is not None


def _shared_status(stream_id: str) -> bytes | None:
    if not redis_enabled():
        return None
    try:
        status = sync_client().hget(f"sluice:stream:{stream_id}:meta", "status")
    except RedisError:
        return None
    return status if isinstance(status, bytes) else None


async def _find(stream_id: str) -> StreamHandle | None:
    handle: StreamHandle | None = session.get_session(stream_id)
    if handle is None and redis_enabled():
        handle = await RemoteStream.find(stream_id)
    return handle


def tail_page(request: HttpRequest, stream_id: str) -> HttpResponse:
    """The watching page; it streams nothing itself (see ``tail_events``)."""
    if not request.user.is_authenticated:
        return admin.site.login(request)
    if not may_watch(request.user):
        return HttpResponseForbidden("Watching a stream needs the watch_stream permission.")
    if not _stream_known(stream_id):
        raise Http404(f"no stream '{stream_id}' (unknown or expired)")
    context = {
        **admin.site.each_context(request),
        "title": f"Live tail of {stream_id}",
        "stream_id": stream_id,
        "events_url": reverse("sluice:tail-events", args=[stream_id]),
    }
    return render(request, "sluice/tail.html", context)


def _cursor(request: HttpRequest) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    return int(raw) if raw.isdigit() else 0


async def tail_events(request: HttpRequest, stream_id: str) -> HttpResponse | StreamingHttpResponse:
    """Server-Sent Events of the stream from the cursor: ``id`` is the event's seq."""
    user = await request.auser()
    if not (user.is_active and getattr(user, "is_staff", False)):
        return HttpResponseForbidden("staff only")
    if not await user.ahas_perm(WATCH_STREAM):
        return HttpResponseForbidden("Watching a stream needs the watch_stream permission.")
    try:
        handle = await _find(stream_id)
        cursor = _cursor(request)
        if handle is None:
            raise Http404(f"no stream '{stream_id}' (unknown or expired)")
        rules = compile_rules(await sync_to_async(app_redaction)(app_id=handle.app_id))
        if not rules and not await handle.remaining(cursor):
            return HttpResponse(status=204)  # all seen: the EventSource stops
    except CursorTrimmed:
        return HttpResponse(f"event {cursor} is no longer kept", status=409)
    except RedisError:
        return HttpResponse("streams of other instances cannot be reached now", status=503)
    if cursor == 0:  # a reconnect continues the same watch
        detail = {"running": not handle.finished}
        deliveries.note(stream_id, "watch", user.get_username(), detail)
    # An app whose records are redacted is watched redacted too: from the start
    # on every connection (what was held back is not lost on a reconnect).
    if rules:
        events = _events(handle, 0, _Redacted(handle, rules).render, reset=True)
    else:
        events = _events(handle, cursor, partial(_render, handle))
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _follow(
    handle: StreamHandle, cursor: int
) -> AsyncIterator[Sequence[tuple[int, int, bytes]] | None]:
    keepalive = settings.SLUICE_SSE_KEEPALIVE_SECONDS
    if isinstance(handle, RemoteStream):
        return handle.follow(cursor, keepalive=keepalive, watch=True)
    return handle.follow(cursor, keepalive=keepalive)  # never attaches: not a reader


Render = Callable[[Sequence[tuple[int, int, bytes]]], bytes]


async def _events(
    handle: StreamHandle, cursor: int, render: Render, *, reset: bool = False
) -> AsyncIterator[bytes]:
    """``render``ed batches of the log after ``cursor``; ``reset`` first tells
    the page to start over (a redacted tail replays from the start)."""
    yield b"retry: 2000\nevent: reset\ndata: {}\n\n" if reset else b"retry: 2000\n\n"
    try:
        async for batch in _follow(handle, cursor):
            yield b": keep-alive\n\n" if batch is None else render(batch)
    except (CursorTrimmed, RedisError) as error:
        logger.info("tail of %s ended: %s", handle.id, type(error).__name__)
        yield b"event: gone\ndata: {}\n\n"


class _Redacted:
    """The tail's events with the stream's app's redaction applied.

    Text (and a refusal, shown with it) goes through ``HeldText``; a tool
    call's parts wait for the end of the answer and are then shown whole,
    redacted; reasoning is not shown; an error's message is redacted.
    """

    def __init__(self, handle: StreamHandle, rules: tuple[Rule, ...]) -> None:
        self.handle = handle
        self.rules = rules
        self.text = HeldText(rules)
        self.calls: dict[Any, dict[str, Any]] = {}

    def render(self, batch: Sequence[tuple[int, int, bytes]]) -> bytes:
        out = bytearray()
        for seq, kind, payload in batch:
            if kind in (TEXT, REFUSAL):
                self._text(out, seq, self.text.add(orjson.loads(payload)))
            elif kind == TOOL_CALL:
                self._tool_part(orjson.loads(payload))
                out += b"id: %d\nevent: skip\ndata: {}\n\n" % seq
            elif kind in (START, FINISH, ERROR, END):
                self._release(out, seq)
                out += _render(self.handle, [(seq, kind, self._shown(kind, payload))])
            else:  # reasoning, usage, log probabilities: not shown
                out += b"id: %d\nevent: skip\ndata: {}\n\n" % seq
        return bytes(out)

    def _text(self, out: bytearray, seq: int, text: str) -> None:
        if text:
            out += b"id: %d\nevent: text\ndata: %s\n\n" % (seq, orjson.dumps(text))

    def _tool_part(self, part: dict[str, Any]) -> None:
        call = self.calls.setdefault(part.get("index", 0), {"name": "", "arguments": ""})
        call["name"] += part.get("name") or ""
        call["arguments"] += part.get("arguments") or ""

    def _release(self, out: bytearray, seq: int) -> None:
        """What waits (text, tool calls), before an event that ends or restarts the answer."""
        self._text(out, seq, self.text.flush())
        for index, call in self.calls.items():
            shown = {"index": index, **redact_json(call, self.rules)}
            out += b"id: %d\nevent: tool_call\ndata: %s\n\n" % (seq, orjson.dumps(shown))
        self.calls = {}

    def _shown(self, kind: int, payload: bytes) -> bytes:
        if kind == ERROR:
            return orjson.dumps(redact_json(orjson.loads(payload), self.rules))
        return payload


def _render(handle: StreamHandle, batch: Sequence[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for seq, kind, payload in batch:
        if kind == END:
            end = orjson.dumps({"outcome": handle.outcome_now()})
            out += b"id: %d\nevent: end\ndata: %s\n\n" % (seq, end)
            continue
        name = _NAMES.get(kind)
        if name is None:  # usage, log probabilities: not shown, but the cursor moves on
            out += b"id: %d\nevent: skip\ndata: {}\n\n" % seq
            continue
        out += b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name, payload)
    return bytes(out)
