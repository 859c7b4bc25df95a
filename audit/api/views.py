"""``/api/v1/usage/``: tokens and cost per app, route and day, from the audit trail.

Authentication and the ``admin`` scope are the API's defaults (REST_FRAMEWORK
in gateway/settings.py), as for ``/api/v1/apps/``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.usage import GROUPS, usage_by

DEFAULT_GROUP = ("app", "route", "day")


def _bound(request: Request, name: str) -> date | datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw) if "T" in raw or " " in raw else parse_date(raw)
    if value is None:
        raise ValidationError({name: [f"'{raw}' is not a date (YYYY-MM-DD) or an ISO datetime"]})
    return value


def _group(request: Request) -> tuple[str, ...]:
    raw = request.query_params.get("group")
    if not raw:
        return DEFAULT_GROUP
    group = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = sorted(set(group) - set(GROUPS))
    if unknown or not group:
        raise ValidationError({"group": [f"group by any of {', '.join(GROUPS)}"]})
    return group


def _row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, date):
            out[key] = value.isoformat()
        elif key == "cost_usd":
            out[key] = str(value)  # a Decimal, exact
        else:
            out[key] = value
    return out


class UsageView(APIView):
    """``GET /api/v1/usage/?app=&since=&until=&group=app,route,day``.

    ``since`` is inclusive, ``until`` a date includes that whole day; ``cost_usd``
    is a decimal string (exact sums).
    """

    def get(self, request: Request) -> Response:
        since, until = _bound(request, "since"), _bound(request, "until")
        if since is not None and until is not None and str(since) > str(until):
            raise ValidationError({"until": ["'until' is before 'since'"]})
        rows = usage_by(
            app=request.query_params.get("app") or None,
            since=since,
            until=until,
            group=_group(request),
        )
        return Response({"object": "list", "data": [_row(row) for row in rows]})
