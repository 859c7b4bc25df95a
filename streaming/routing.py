"""URL patterns for the hot streaming routes (served outside Django's view stack)."""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path, re_path

from streaming import api
from streaming.consumers import StreamConsumer


def asgi(route: str, app: Any, *, regex: bool = False) -> URLPattern:
    """A URL pattern for a plain ASGI app (Channels' URLRouter accepts these)."""
    return (re_path if regex else path)(route, app)


http_patterns = [
    asgi("v1/chat/completions", api.chat_completions_app),
    asgi("v1/models", api.models_app),
    asgi("v1/streams", api.streams_app),
    asgi(r"^v1/streams/(?P<stream_id>[A-Za-z0-9_-]{1,100})$", api.stream_app, regex=True),
    asgi("v1/chat/stream", api.chat_stream_app),
    asgi("v1/tickets", api.tickets_app),
]

websocket_patterns = [
    asgi("v1/ws", StreamConsumer.as_asgi()),
]
