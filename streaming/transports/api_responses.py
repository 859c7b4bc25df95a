"""OpenAI's Responses API: ``/v1/responses``, resumable for every provider.

A response is a stream like any other (its id, ``resp_...``, is the stream
id): the request is translated to the engine's chat request
(``inbound.responses``), and its readers get the log rendered as Responses
events (``encoders.responses``), numbered by ``sequence_number``. Since the
numbering is a pure function of the log, ``GET /v1/responses/{id}?stream=true
&starting_after=N`` resumes exactly once, on any instance, for as long as the
stream is kept (``SLUICE_STREAM_TTL_SECONDS``), whichever provider answers.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from accounts.identity import AppIdentity
from streaming.core.events import END, Inbound
from streaming.core.log import CursorTrimmed
from streaming.core.reader import StreamHandle
from streaming.transports.api import (
    _error_response,
    _event_stream,
    _hold_first_event,
    _identity,
    _start,
    _wait_or_cancel,
)
from streaming.transports.consumer import endpoint
from streaming.transports.encoders.responses import ResponsesEncoder
from streaming.transports.errors import ApiError
from streaming.transports.http import ApiRequest, JsonResponse, StreamResponse
from streaming.transports.inbound.responses import parse_responses_request
from streaming.transports.schema import parse_json_body
from streaming.transports.streams import find_stream, request_cancel, shared_store

CANCEL_WAIT_SECONDS = 5.0  # how long a cancel waits for the generation to stop


async def create_response(request: ApiRequest) -> JsonResponse | StreamResponse:
    identity = await _identity(request)
    parsed = parse_responses_request(parse_json_body(request.body))
    inbound = Inbound("responses", orjson.dumps(parsed.echo))
    if parsed.background:
        parsed.chat.stream = True
    session = await _start(
        request,
        identity,
        parsed.chat,
        "responses",
        inbound=inbound,
        id_prefix="resp_",
        background=parsed.background,
    )
    if parsed.stream:
        encoder = ResponsesEncoder(session.id, session.created, parsed.echo)
        response = _event_stream(
            session, request, encoder, identity=identity, headers=session.limit_headers()
        )
        if not parsed.background:
            # As OpenAI does: a failure before any output is an HTTP error.
            # A background response is already accepted: its failure is an event.
            _hold_first_event(response, session)
        return response
    if parsed.background:
        headers = {"X-Sluice-Stream-Id": session.id, **session.limit_headers()}
        return JsonResponse(await _snapshot(session), headers=headers)
    await _wait_or_cancel(session, request, asyncio.ensure_future(session.wait_finished()))
    body = await _snapshot(session)
    if session.failure is not None and not body["output"]:
        return _error_response(session)
    return JsonResponse(body, headers=session.served_headers())


async def _snapshot(handle: StreamHandle) -> dict[str, object]:
    """The Response object as of what the stream has logged."""
    encoder = ResponsesEncoder(handle.id, handle.created, orjson.loads(handle.inbound.echo))
    entries = await handle.entries()
    if entries:
        encoder.encode(entries)
    return encoder.snapshot()


async def _find_response(request: ApiRequest) -> tuple[AppIdentity, StreamHandle]:
    response_id = request.path_params["response_id"]
    identity = await _identity(request, purpose=f"stream:{response_id}")
    handle = await find_stream(identity, response_id)
    if handle.inbound.api != "responses":
        raise ApiError(
            404,
            f"no response '{response_id}' (it is a {handle.inbound.api} stream)",
            code="response_not_found",
        )
    return identity, handle


def _starting_after(request: ApiRequest) -> int:
    raw = request.query.get("starting_after")
    if raw is None:
        raw = request.headers.get("last-event-id")
    if raw is None:
        return -1
    try:
        after = int(raw)
    except ValueError:
        raise ApiError(
            400, f"'starting_after' must be an integer, not '{raw}'", param="starting_after"
        ) from None
    if after < -1:
        raise ApiError(400, "'starting_after' must not be negative", param="starting_after")
    return after


async def retrieve_response(request: ApiRequest) -> JsonResponse | StreamResponse:
    """The response as it stands, or with ``stream=true`` its events after ``starting_after``."""
    identity, handle = await _find_response(request)
    if request.query.get("stream", "").lower() in {"true", "1"}:
        echo = orjson.loads(handle.inbound.echo)
        encoder = ResponsesEncoder(handle.id, handle.created, echo, after=_starting_after(request))
        return _event_stream(handle, request, encoder, identity=identity)
    with shared_store():
        body = await _snapshot(handle)
    return JsonResponse(body, headers={"X-Sluice-Stream-Id": handle.id})


async def cancel_response(request: ApiRequest) -> JsonResponse:
    """Stop the generation wherever it runs; the response as it ended (``cancelled``)."""
    _, handle = await _find_response(request)
    await request_cancel(handle)
    with shared_store():
        with contextlib.suppress(TimeoutError, CursorTrimmed):
            await asyncio.wait_for(_until_end(handle), CANCEL_WAIT_SECONDS)
        _, handle = await _find_response(request)  # where it ended, if it ended elsewhere
        body = await _snapshot(handle)
    return JsonResponse(body, headers={"X-Sluice-Stream-Id": handle.id})


async def _until_end(handle: StreamHandle) -> None:
    async for batch in handle.follow(0):
        if batch and batch[-1][1] == END:
            return


responses_app = endpoint({"POST": create_response})
response_app = endpoint({"GET": retrieve_response})
response_cancel_app = endpoint({"POST": cancel_response})
