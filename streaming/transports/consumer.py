"""The ``/v1`` HTTP endpoints as Channels consumers.

``endpoint(methods)`` is the ASGI app of one path: an ``ApiConsumer`` that
reads the body (``SLUICE_MAX_REQUEST_BYTES`` at most), calls the handler for
the method and sends what it returns, a JSON response or a stream
(Server-Sent Events, NDJSON or text: ``http.StreamResponse``), turning an
``ApiError`` into OpenAI's error JSON.

Two of Channels' defaults are left out, each measured (docs/architecture.md,
``python -m bench.transports``): no channel layer (a consumer with one makes
a channel per request, and nothing here listens on it), and no closing of
stale database connections around each message (a hop to the process's one
sync thread, three per request, which cost +0.3 ms to the first byte;
every query on this path runs through ``database_sync_to_async``, which
closes them itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from audit.writer import audit_refusing
from gateway.database import DATABASE_UNAVAILABLE
from streaming.core.events import Failure
from streaming.observability.logging import bind, request_id
from streaming.transports.errors import ApiError, audit_unavailable, database_unavailable
from streaming.transports.http import ApiRequest, JsonResponse, Receive, Scope, Send, StreamResponse

logger = logging.getLogger("sluice.http")

Handler = Callable[[ApiRequest], Awaitable[JsonResponse | StreamResponse]]
ErrorBody = Callable[[Failure], Any]  # an error's JSON body in the endpoint's protocol
NO_CHANNEL_LAYER = "sluice.none"
# an alias no setting configures: get_channel_layer gives None


class ApiConsumer(AsyncHttpConsumer):
    """One endpoint: parse, check, hand off (the handlers in ``transports.api``).

    The response runs inside ``handle``, while the consumer's own dispatch
    waits for it: it watches the client's ``receive`` itself, so a client that
    leaves stops its reader at once (Channels' loop would see the disconnect
    only after ``handle`` returned).
    """

    channel_layer_alias = NO_CHANNEL_LAYER
    methods: ClassVar[dict[str, Handler]] = {}
    errors: ClassVar[ErrorBody | None] = None  # None: OpenAI's shape

    def error_body(self, failure: Failure) -> Any:
        render = type(self).errors
        return failure.openai_error() if render is None else render(failure)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.base_receive = receive
        self.size = 0
        bind(request_id=request_id(scope["headers"]))
        await super().__call__(scope, receive, send)

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.request":
            await self.http_request(message)
        elif message["type"] == "http.disconnect":
            raise StopConsumer  # gone before its body arrived: nothing was started

    async def http_request(self, message: dict[str, Any]) -> None:
        chunk = message.get("body", b"")
        self.size += len(chunk)
        limit = settings.SLUICE_MAX_REQUEST_BYTES
        if self.size > limit:
            error = ApiError(
                413, f"request body larger than {limit} bytes", code="request_too_large"
            )
            await self.respond(JsonResponse(self.error_body(error.failure()), status=413))
            raise StopConsumer
        self.body.append(chunk)
        if not message.get("more_body"):
            await self.handle(b"".join(self.body))
            raise StopConsumer

    async def handle(self, body: bytes) -> None:
        scope = self.scope
        response: JsonResponse | StreamResponse
        try:
            handler = self.methods.get(scope["method"])
            if handler is None:
                allowed = ", ".join(sorted(self.methods))
                raise ApiError(
                    405, f"method {scope['method']} not allowed", headers={"Allow": allowed}
                )
            if scope["method"] == "POST" and audit_refusing():
                raise audit_unavailable()
            response = await handler(_build_request(scope, body, self.base_receive))
        except ApiError as error:
            body = self.error_body(error.failure())
            response = JsonResponse(body, status=error.status, headers=error.headers)
        except asyncio.CancelledError:
            return
        except DATABASE_UNAVAILABLE as error:
            # The class only: a driver's message can quote the query.
            logger.warning("database unavailable on %s: %s", scope["path"], type(error).__name__)
            unavailable = database_unavailable()
            body = self.error_body(unavailable.failure())
            response = JsonResponse(body, status=503, headers=unavailable.headers)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            internal = ApiError(500, "internal error", code="internal_error")
            response = JsonResponse(self.error_body(internal.failure()), status=500)
        await self.respond(response)

    async def respond(self, response: JsonResponse | StreamResponse) -> None:
        await response.send(self.base_send, self.base_receive)


def endpoint(
    methods: dict[str, Handler], *, errors: ErrorBody | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app of one path: an ``ApiConsumer`` serving ``methods``, its
    errors rendered by ``errors`` (OpenAI's shape by default)."""
    attrs: dict[str, Any] = {"methods": methods, "errors": errors}
    consumer: type[ApiConsumer] = type("ApiConsumer", (ApiConsumer,), attrs)
    app: Callable[[Scope, Receive, Send], Awaitable[None]] = consumer.as_asgi()
    return app


def _build_request(scope: Scope, body: bytes, receive: Receive) -> ApiRequest:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    client = scope.get("client")
    return ApiRequest(
        method=scope["method"],
        path=scope["path"],
        headers=headers,
        query=query,
        body=body,
        client_ip=client[0] if client else None,
        path_params=scope.get("url_route", {}).get("kwargs", {}),
        receive=receive,
    )
