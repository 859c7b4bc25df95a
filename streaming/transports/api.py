"""The streaming API: /v1/chat/completions, /v1/models, /v1/streams, /v1/tickets.

Handlers parse, check and hand off to a StreamSession; transports only
encode what the session's log holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from django.conf import settings

from accounts.auth import authenticate
from accounts.identity import AppIdentity, AuthError
from accounts.tickets import issue_ticket
from streaming.core.events import CHAT, ERROR, Failure, Inbound
from streaming.core.reader import Encoder, Reader, StreamHandle
from streaming.core.session import StreamSession
from streaming.core.shutdown import draining
from streaming.observability import metrics
from streaming.providers import ChatRequest
from streaming.routing.routes import ResolvedRoute, resolve_route, route_names
from streaming.transports.consumer import ErrorBody, endpoint
from streaming.transports.encoders import encoder_for
from streaming.transports.encoders.chat import ChatChunks, ChatEventSource, ChatNDJSON, ChatSSE
from streaming.transports.encoders.text import PlainText
from streaming.transports.errors import ApiError
from streaming.transports.http import ApiRequest, JsonResponse, StreamResponse, wait_disconnect
from streaming.transports.limits import admit_chat
from streaming.transports.refused import recorded_if_refused
from streaming.transports.schema import parse_chat_request, parse_json_body
from streaming.transports.streams import check_cursor, find_stream, request_cancel

CONTENT_TYPES = {
    "sse": b"text/event-stream; charset=utf-8",
    "ndjson": b"application/x-ndjson",
    "text": b"text/plain; charset=utf-8",
}


# -- checks ---------------------------------------------------------------
async def _identity(request: ApiRequest, *, purpose: str | None = None) -> AppIdentity:
    try:
        return await authenticate(
            request.headers.get("authorization"),
            api_key=request.headers.get("x-api-key"),
            ticket=request.query.get("ticket"),
            scope="chat",
            purpose=purpose,
        )
    except AuthError as error:
        headers = {"WWW-Authenticate": 'Bearer realm="sluice"'} if error.status == 401 else {}
        raise ApiError(error.status, error.message, code=error.code, headers=headers) from None


async def _route_for(identity: AppIdentity, model: str) -> ResolvedRoute:
    if not identity.may_use(model):
        raise ApiError(403, f"this app may not use the model '{model}'", code="model_not_allowed")
    route = await resolve_route(model)
    if route is None:
        raise ApiError(
            404, f"the model '{model}' does not exist", code="model_not_found", param="model"
        )
    return route


async def _start(
    request: ApiRequest,
    identity: AppIdentity,
    chat: ChatRequest,
    protocol: str,
    *,
    inbound: Inbound = CHAT,
    id_prefix: str = "chatcmpl-",
    background: bool = False,
) -> StreamSession:
    params = {**chat.params, "stream": chat.stream}
    with recorded_if_refused(
        identity,
        protocol,
        chat.model,
        request.client_ip,
        messages=chat.messages,
        params=params,
        id_prefix=id_prefix,
    ):
        if draining():
            raise ApiError(
                503,
                "this gateway instance is shutting down; retry (another instance will answer)",
                code="shutting_down",
                headers={"Retry-After": "1"},
            )
        route = await _route_for(identity, chat.model)
        # The one place every HTTP protocol's generation is admitted (WebSocket: its consumer).
        admission = await admit_chat(identity, chat, route)
    session = StreamSession(
        identity=identity,
        request=chat,
        route=route,
        protocol=protocol,
        client_ip=request.client_ip,
        inbound=inbound,
        id_prefix=id_prefix,
        background=background,
        admission=admission,
    )
    session.start()
    return session


# -- streaming bodies -----------------------------------------------------
def transport_of(request: ApiRequest) -> str:
    """The streaming transport a request asks for: ``ndjson``, ``text`` or ``sse``."""
    if request.accepts("application/x-ndjson"):
        return "ndjson"
    if request.accepts("text/plain") and not request.accepts("text/event-stream"):
        return "text"
    return "sse"


def _encoder(transport: str, handle: StreamHandle, cursor: int, *, browser: bool) -> Encoder[bytes]:
    """The encoder of one reader of ``handle``, for the transport asked for.

    Server-Sent Events are OpenAI's exact format, or with ``browser`` (the GET
    endpoints an ``EventSource`` opens) end with a named ``done`` event.
    """
    if transport == "text":
        return PlainText()
    chunks = ChatChunks(handle.id, handle.created, handle.model_at(cursor))
    if transport == "ndjson":
        return ChatNDJSON(chunks)
    framing = ChatEventSource if browser else ChatSSE
    return framing(chunks, retry_ms=settings.SLUICE_SSE_RETRY_MS)


def _stream_response(
    handle: StreamHandle,
    request: ApiRequest,
    cursor: int,
    *,
    resumed: bool,
    identity: AppIdentity,
    browser: bool = False,
    headers: dict[str, str] | None = None,
) -> StreamResponse:
    """The response that reads ``handle`` from ``cursor`` in the transport asked for;
    it ends early, with the encoder's farewell, if ``identity`` is revoked."""
    transport = transport_of(request)
    reader = Reader(
        handle,
        cursor,
        _encoder(transport, handle, cursor, browser=browser),
        resumed=resumed,
        size=len,
        keepalive=settings.SLUICE_SSE_KEEPALIVE_SECONDS if transport == "sse" else None,
        observers=[metrics.ReaderTracker(transport, handle, cursor, resumed=resumed)],
        transport=transport,
        actor=identity.name,
    )
    headers = {"X-Sluice-Stream-Id": handle.id, **(headers or {})}
    return StreamResponse(reader, CONTENT_TYPES[transport], headers=headers, identity=identity)


def _event_stream(
    handle: StreamHandle,
    request: ApiRequest,
    encoder: Encoder[bytes],
    *,
    identity: AppIdentity,
    headers: dict[str, str] | None = None,
) -> StreamResponse:
    """Server-Sent Events of a protocol whose encoder numbers its own events
    (Responses, Messages): its reader replays the log from the start and the
    encoder drops what the client already has."""
    resumed = getattr(encoder, "after", -1) >= 0
    reader = Reader(
        handle,
        0,
        encoder,
        resumed=resumed,
        size=len,
        keepalive=settings.SLUICE_SSE_KEEPALIVE_SECONDS,
        observers=[metrics.ReaderTracker("sse", handle, 0, resumed=resumed)],
        transport=handle.inbound.api,  # responses, messages
        actor=identity.name,
        resumed_from=getattr(encoder, "after", -1),
    )
    headers = {"X-Sluice-Stream-Id": handle.id, **(headers or {})}
    return StreamResponse(reader, CONTENT_TYPES["sse"], headers=headers, identity=identity)


def _hold_first_event(
    response: StreamResponse, session: StreamSession, errors: ErrorBody = Failure.openai_error
) -> None:
    """Hold ``response``'s headers until the session's first event, so a failure
    before any token is an HTTP error status (body by ``errors``) instead of a
    200 with an error inside; a client gone meanwhile cancels the session."""
    # The dict, not the response: a closure over the response that the response
    # holds is a cycle, which kept its body (and the stream's log) until a full
    # garbage collection (the stalled-reader benchmark's memory after expiry).
    headers = response.headers

    async def first_event() -> JsonResponse | None:
        await session.log.wait_after(0)
        if session.log.read_after(0, 1)[0][1] == ERROR:
            return _error_response(session, errors)
        headers.update(session.served_headers())  # who answered the first token
        return None

    response.hold = first_event
    response.on_gone = lambda: session.cancel("client_disconnected")


async def _wait_or_cancel(
    session: StreamSession, request: ApiRequest, ready: asyncio.Future[Any]
) -> None:
    """Wait for ``ready``; if the client leaves first, the session is abandoned early."""
    assert request.receive is not None  # set for every request the endpoint builds
    watch = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        await asyncio.wait({ready, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if not ready.done():
        ready.cancel()
        session.cancel("client_disconnected")
        raise asyncio.CancelledError


def _error_response(
    session: StreamSession, errors: ErrorBody = Failure.openai_error
) -> JsonResponse:
    failure = session.failure or Failure(502, "the stream failed", code="internal_error")
    return JsonResponse(
        errors(failure),
        status=failure.status,
        headers=session.served_headers(),
    )


# -- endpoints ------------------------------------------------------------
async def chat_completions(request: ApiRequest) -> JsonResponse | StreamResponse:
    identity = await _identity(request)
    chat = parse_chat_request(parse_json_body(request.body))
    if not chat.stream:
        return await _complete(request, identity, chat)
    session = await _start(request, identity, chat, transport_of(request))
    response = _stream_response(
        session, request, 0, resumed=False, identity=identity, headers=session.limit_headers()
    )
    _hold_first_event(response, session)
    return response


async def _complete(request: ApiRequest, identity: AppIdentity, chat: ChatRequest) -> JsonResponse:
    session = await _start(request, identity, chat, "json")
    await _wait_or_cancel(session, request, asyncio.ensure_future(session.wait_finished()))
    if session.failure is not None:
        return _error_response(session)
    transcript = session.transcript
    body: dict[str, Any] = {
        "id": session.id,
        "object": "chat.completion",
        "created": session.created,
        "model": session.audit.attempts[-1].upstream_model
        if session.audit.attempts
        else session.route.model,
        "choices": [
            {
                "index": 0,
                "message": transcript.message(),
                "finish_reason": transcript.finish_reason or "stop",
                "logprobs": None,
            }
        ],
    }
    if transcript.usage:
        body["usage"] = transcript.usage
    return JsonResponse(body, headers=session.served_headers())


async def list_models(request: ApiRequest) -> JsonResponse:
    identity = await _identity(request)
    names = [n for n in await route_names() if identity.may_use(n)]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "sluice"} for n in names]
    return JsonResponse({"object": "list", "data": data})


async def create_stream(request: ApiRequest) -> JsonResponse:
    identity = await _identity(request)
    chat = parse_chat_request(parse_json_body(request.body))
    chat.stream = True
    session = await _start(request, identity, chat, "sse")
    ticket = issue_ticket(identity, purpose=f"stream:{session.id}")
    # The ticket rides on events_url: it is the URL a browser's EventSource
    # opens, and EventSource cannot send a header.
    return JsonResponse(
        {
            "id": session.id,
            "object": "stream",
            "events_url": f"/v1/streams/{session.id}?ticket={ticket}",
            "ticket": ticket,
        },
        status=201,
        headers={
            "Location": f"/v1/streams/{session.id}",
            "X-Sluice-Stream-Id": session.id,
            **session.limit_headers(),
        },
    )


def _cursor(request: ApiRequest, *, default: int = 0) -> int:
    raw = (
        request.headers.get("last-event-id")
        or request.query.get("last_event_id")
        or request.query.get("after")
    )
    if raw is None:
        return default
    try:
        cursor = int(raw)
    except ValueError:
        raise ApiError(
            400, f"the cursor '{raw}' is not an event id", code="invalid_cursor"
        ) from None
    if cursor < 0:
        raise ApiError(400, "the cursor must not be negative", code="invalid_cursor")
    return cursor


async def read_stream(request: ApiRequest) -> JsonResponse | StreamResponse:
    stream_id = request.path_params["stream_id"]
    identity = await _identity(request, purpose=f"stream:{stream_id}")
    handle = await find_stream(identity, stream_id)
    if handle.inbound.api != "chat":
        # Its own protocol, numbered by its encoder: the id is the last event the client had.
        after = _cursor(request, default=-1)
        return _event_stream(handle, request, encoder_for(handle, after), identity=identity)
    cursor = _cursor(request)
    if not await check_cursor(handle, cursor):
        # Everything was delivered; 204 also tells a browser's EventSource to stop reconnecting.
        return JsonResponse(b"", status=204)
    return _stream_response(
        handle, request, cursor, resumed=cursor > 0, identity=identity, browser=True
    )


async def cancel_stream(request: ApiRequest) -> JsonResponse:
    stream_id = request.path_params["stream_id"]
    identity = await _identity(request, purpose=f"stream:{stream_id}")
    handle = await find_stream(identity, stream_id)
    was_running = not handle.finished
    await request_cancel(handle)
    return JsonResponse({"id": handle.id, "object": "stream", "cancelled": was_running})


async def chat_stream_get(request: ApiRequest) -> JsonResponse | StreamResponse:
    """``GET /v1/chat/stream?model=M&prompt=TEXT``: create and stream in one GET (EventSource)."""
    identity = await _identity(request, purpose="chat")
    model = request.query.get("model", "")
    prompt = request.query.get("prompt", "")
    if not model or not prompt:
        raise ApiError(
            400, "'model' and 'prompt' query parameters are required", code="invalid_request"
        )
    # The same rules as a POSTed body: one schema for every transport.
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    chat = parse_chat_request(body)
    session = await _start(request, identity, chat, transport_of(request))
    return _stream_response(
        session,
        request,
        0,
        resumed=False,
        identity=identity,
        browser=True,
        headers=session.limit_headers(),
    )


async def create_ticket(request: ApiRequest) -> JsonResponse:
    identity = await _identity(request)
    ttl = settings.SLUICE_TICKET_SECONDS
    return JsonResponse(
        {
            "ticket": issue_ticket(identity, purpose="chat"),
            "purpose": "chat",
            "expires_at": int(time.time()) + ttl,
        },
        status=201,
    )


chat_completions_app = endpoint({"POST": chat_completions})
models_app = endpoint({"GET": list_models})
streams_app = endpoint({"POST": create_stream})
stream_app = endpoint({"GET": read_stream, "DELETE": cancel_stream})
chat_stream_app = endpoint({"GET": chat_stream_get})
tickets_app = endpoint({"POST": create_ticket})
