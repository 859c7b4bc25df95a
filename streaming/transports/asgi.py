"""Routing for the hot streaming endpoints (served outside Django's view stack).

HTTP: ``/v1/...`` goes to its ASGI endpoint through one dict lookup (or a
regex for the paths with an id: ``/v1/streams/<id>``, ``/v1/responses/<id>``).
Channels' URLRouter, which walks Django URL patterns and copies the scope,
cost more per request than authenticating it. Any other ``/v1/`` path is an OpenAI-style JSON 404.
Everything else (admin, /o/, /metrics, pages) goes to Django. WebSocket
connections are rarer and long-lived: Channels routes them.
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import URLPattern, path

from streaming.transports import api, api_messages, api_responses, embeddings
from streaming.transports.http import Receive, Scope, Send, unknown_url
from streaming.transports.websocket import StreamConsumer

EXACT = {
    "/v1/chat/completions": api.chat_completions_app,
    "/v1/embeddings": embeddings.embeddings_app,
    "/v1/models": api.models_app,
    "/v1/streams": api.streams_app,
    "/v1/chat/stream": api.chat_stream_app,
    "/v1/tickets": api.tickets_app,
    "/v1/responses": api_responses.responses_app,
    "/v1/messages": api_messages.messages_app,
    "/v1/messages/count_tokens": api_messages.count_tokens_app,
}
_ID = r"[A-Za-z0-9_-]{1,100}"
# Paths with an id, tried in order after the exact ones.
PATTERNS = [
    (re.compile(rf"/v1/streams/(?P<stream_id>{_ID})"), api.stream_app),
    (re.compile(rf"/v1/responses/(?P<response_id>{_ID})"), api_responses.response_app),
    (
        re.compile(rf"/v1/responses/(?P<response_id>{_ID})/cancel"),
        api_responses.response_cancel_app,
    ),
]


class HttpRouter:
    """The ``http`` ASGI app: the streaming endpoints, else ``fallback`` (Django)."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope["path"]
        root = scope.get("root_path", "")
        if root and route.startswith(root):
            route = route[len(root) :]
        app = EXACT.get(route)
        if app is None:
            for pattern, with_id in PATTERNS:
                match = pattern.fullmatch(route)
                if match is not None:
                    scope = {**scope, "url_route": {"args": (), "kwargs": match.groupdict()}}
                    await with_id(scope, receive, send)
                    return
            api_path = route == "/v1" or route.startswith("/v1/")
            await (unknown_url if api_path else self.fallback)(scope, receive, send)
            return
        await app(scope, receive, send)


websocket_patterns: list[URLPattern] = [
    path("v1/ws", StreamConsumer.as_asgi()),
]
