"""Public pages served by the gateway (no login: they use a stream's ticket)."""

from __future__ import annotations

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET


@require_GET
def landing_page(request: HttpRequest) -> HttpResponse:
    """``/``: what this is, and where to go (the admin's "View site" lands here)."""
    api_base = request.build_absolute_uri("/v1")
    return render(request, "sluice/landing.html", {"api_base": api_base})


@require_GET
@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on every page: Sluice's icon, not a 404."""
    path = finders.find("sluice/favicon.svg")
    assert isinstance(path, str)
    with open(path, "rb") as icon:
        return HttpResponse(icon.read(), content_type="image/svg+xml")


def eventsource_page(request: HttpRequest) -> HttpResponse:
    """A minimal EventSource client: ``/try/eventsource?events=<events_url with ticket>``."""
    return render(request, "streaming/eventsource.html")
