"""Staff pages in the admin: the live dashboard and the playground.

The dashboard page draws itself from ``dashboard_feed``, a Server-Sent Events
stream of the deployment's snapshot once a second (streaming.observability.livestats).
The playground runs prompts through the public streaming API exactly as an
app's browser code would: with a short-lived ticket, never a token. It
streams only as its own app (``sluice-playground``), for staff holding
``accounts.use_playground``; the audit names the staff user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from functools import wraps
from typing import Any

import orjson
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.services import PLAYGROUND_APP, USE_PLAYGROUND, playground_app_ensure
from accounts.tickets import issue_playground_ticket
from streaming.models import ModelRoute
from streaming.observability import livestats

FEED_SECONDS = 600  # then the browser's EventSource reconnects: no connection lives forever


def _page(request: HttpRequest, template: str, title: str, **context: Any) -> HttpResponse:
    context = {**admin.site.each_context(request), "title": title, **context}
    return render(request, template, context)


# -- dashboard ----------------------------------------------------------------
@staff_member_required
@require_GET
def dashboard_page(request: HttpRequest) -> HttpResponse:
    return _page(request, "sluice/dashboard.html", "Live dashboard")


async def _snapshots(seconds: float) -> AsyncIterator[bytes]:
    deadline = time.monotonic() + seconds
    yield b"retry: 2000\n\n"
    while time.monotonic() < deadline:
        snapshot = await livestats.deployment_snapshot()
        yield b"data: " + orjson.dumps(snapshot) + b"\n\n"
        await asyncio.sleep(1.0)


@require_GET
async def dashboard_feed(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """SSE: the deployment's snapshot once a second, for staff sessions only."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return HttpResponseForbidden("staff only")
    response = StreamingHttpResponse(_snapshots(FEED_SECONDS), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# -- playground ---------------------------------------------------------------
def playground_user_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff with ``accounts.use_playground`` (the operators group; superusers
    implicitly). Other staff, auditors included, get a 403."""

    @wraps(view)
    def check(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(USE_PLAYGROUND):
            raise PermissionDenied("Using the playground needs the use_playground permission.")
        return view(request, *args, **kwargs)

    return staff_member_required(check)


@playground_user_required
@require_GET
def playground_page(request: HttpRequest) -> HttpResponse:
    routes = ModelRoute.objects.filter(enabled=True).order_by("model")
    config = {
        "routes": list(routes.values_list("model", flat=True)),
        "playgroundApp": PLAYGROUND_APP,
        "ticketUrl": reverse("sluice:playground-ticket"),
        "ticketSeconds": settings.SLUICE_TICKET_SECONDS,
    }
    return _page(request, "sluice/playground.html", "Playground", config=config)


@playground_user_required
@require_POST
def playground_ticket(request: HttpRequest) -> HttpResponse:
    """A chat ticket for the playground's own app, naming this staff user.

    The playground never acts as another app, whatever the request says.
    """
    user = request.user
    user_id = user.pk
    assert user_id is not None  # staff_member_required: a logged-in user
    ticket = issue_playground_ticket(user_id=user_id, username=user.get_username(), purpose="chat")
    expires_at = int(time.time()) + settings.SLUICE_TICKET_SECONDS
    app_id = playground_app_ensure()
    return JsonResponse({"ticket": ticket, "app_id": app_id, "expires_at": expires_at})
