"""Public pages served by the gateway (no login: they use a stream's ticket)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def eventsource_page(request: HttpRequest) -> HttpResponse:
    """A minimal EventSource client: ``/try/eventsource?events=<events_url with ticket>``."""
    return render(request, "streaming/eventsource.html")
