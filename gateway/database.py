"""The database is unreachable: what that looks like, and a 503 (never a 500) for Django views.

The streaming hot path keeps working on cached tokens and routes
(``gateway.cache.SingleFlightCache(stale_on=DATABASE_UNAVAILABLE)``); what
needs the database and cannot get it is answered 503. The ``/v1`` endpoints
do that themselves; ``DatabaseUnavailableMiddleware`` does it for Django's
views: JSON for ``/api/`` (OpenAI's error shape) and ``/o/`` (OAuth2's
``temporarily_unavailable``), a plain page elsewhere.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger("sluice.database")

# A connection that cannot be made, or was lost: not a data error.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError)
MESSAGE = "The gateway's database is unreachable; try again shortly."
RETRY_AFTER = "5"


def database_unavailable_response(path: str) -> HttpResponse:
    """The 503 a Django view answers while the database is unreachable."""
    response: HttpResponse
    if path.startswith("/o/"):
        body = {"error": "temporarily_unavailable", "error_description": MESSAGE}
        response = JsonResponse(body, status=503)
    elif path.startswith("/api/"):
        error = {"message": MESSAGE, "type": "server_error", "code": "database_unavailable"}
        response = JsonResponse({"error": error}, status=503)
    else:
        response = HttpResponse(MESSAGE + "\n", status=503, content_type="text/plain")
    response["Retry-After"] = RETRY_AFTER
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that fails because the database is unreachable answers 503, not 500.

    Sync and async capable (MiddlewareMixin): a sync-only middleware would make
    Django run every async view (the live tail, exports) through async_to_sync,
    in a thread whose executor is gone once the view returns.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        # The class only: a driver's message can quote the query.
        logger.warning("database unavailable on %s: %s", request.path, type(exception).__name__)
        return database_unavailable_response(request.path)
