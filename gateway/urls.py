"""Django routes: admin (and the staff pages in it), OAuth2, the management API,
health, metrics, static files. The streaming API is served by gateway.asgi."""

import mimetypes
from pathlib import Path

from django.contrib import admin
from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import include, path, re_path

from accounts.api.urls import urlpatterns as accounts_api
from accounts.views import admin_login, token
from audit.api.urls import urlpatterns as audit_api
from streaming.observability.export import metrics_view
from streaming.pages import eventsource_page, favicon, landing_page
from streaming.transports.health import healthz, readyz


def static_file(request: HttpRequest, path: str) -> HttpResponse:
    """The admin's and the staff pages' assets, found where they live (no
    collectstatic); a proxy or CDN in front can serve STATIC_ROOT instead."""
    found = finders.find(path)
    if not isinstance(found, str):
        raise Http404(path)
    content_type = mimetypes.guess_type(found)[0] or "application/octet-stream"
    response = HttpResponse(Path(found).read_bytes(), content_type=content_type)
    response["Cache-Control"] = "public, max-age=3600"
    return response


# The management API (djangorestframework; REST_FRAMEWORK in settings): each app's
# routes join here.
api_v1 = [*accounts_api, *audit_api]

urlpatterns = [
    path("", landing_page, name="landing"),
    path("favicon.ico", favicon),
    path("admin/sluice/", include("streaming.urls")),
    # Throttled wrappers first: they shadow the same paths in the includes below.
    path("admin/login/", admin_login, name="sluice_admin_login"),
    path("o/token/", token, name="sluice_token"),
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("api/v1/", include(api_v1)),
    path("healthz", healthz),
    path("readyz", readyz),
    path("try/eventsource", eventsource_page),
    path("metrics", metrics_view),
    re_path(r"^static/(?P<path>.+)$", static_file),
]
