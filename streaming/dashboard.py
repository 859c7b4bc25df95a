"""Staff pages in the admin: the live dashboard and the playground.

The dashboard page draws itself from ``dashboard_feed``, a Server-Sent Events
stream of the deployment's snapshot once a second (streaming.livestats).
The playground runs prompts through the public streaming API exactly as an
app's browser code would: with a short-lived ticket, never a token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
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
from oauth2_provider.models import get_application_model

from accounts.models import AppPolicy
from accounts.services import AppExists, app_create
from accounts.tickets import issue_staff_ticket
from streaming import livestats
from streaming.models import ModelRoute

FEED_SECONDS = 600  # then the browser's EventSource reconnects: no connection lives forever
PLAYGROUND_APP = "sluice-playground"


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
def _apps() -> list[dict[str, Any]]:
    Application = get_application_model()
    rows = []
    for app in Application.objects.select_related("policy").order_by("name"):
        policy = AppPolicy.of(app)
        if policy.enabled and "chat" in policy.scopes:
            rows.append({"id": app.pk, "name": app.name, "models": policy.allowed_models})
    return rows


@staff_member_required
@require_GET
def playground_page(request: HttpRequest) -> HttpResponse:
    routes = ModelRoute.objects.filter(enabled=True).order_by("model")

    config = {
        "routes": list(routes.values_list("model", flat=True)),
        "apps": _apps(),
        "playgroundApp": PLAYGROUND_APP,
        "ticketUrl": reverse("sluice:playground-ticket"),
        "ticketSeconds": settings.SLUICE["TICKET_SECONDS"],
    }
    return _page(request, "sluice/playground.html", "Playground", config=config)


def _playground_app_id() -> int:
    Application = get_application_model()
    app = Application.objects.filter(name=PLAYGROUND_APP).first()
    if app is None:
        try:
            app, _secret = app_create(name=PLAYGROUND_APP, scopes=["chat"])
        except AppExists:  # created by a concurrent request
            app = Application.objects.get(name=PLAYGROUND_APP)
    return int(app.pk)


@staff_member_required
@require_POST
def playground_ticket(request: HttpRequest) -> JsonResponse:
    """A chat ticket acting as the chosen app (or the playground app), for this page only."""
    raw = request.POST.get("app", "")
    if raw == PLAYGROUND_APP:
        app_id = _playground_app_id()
    elif raw.isdigit() and any(app["id"] == int(raw) for app in _apps()):
        app_id = int(raw)
    else:
        return JsonResponse({"error": "unknown or disabled app"}, status=400)
    ticket = issue_staff_ticket(app_id, purpose="chat")
    expires_at = int(time.time()) + settings.SLUICE["TICKET_SECONDS"]
    return JsonResponse({"ticket": ticket, "app_id": app_id, "expires_at": expires_at})
