"""The spend page in the admin: tokens and cost per app per day and per month,
a bar chart of the last days, and what is left of each app's monthly budgets.

Everything comes from the audit trail (``audit.usage.usage_by``); the chart is
SVG drawn on the server. Reading it needs the auditors' permission to view
audit records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from oauth2_provider.models import get_application_model

from accounts.models import AppPolicy
from audit.usage import usage_by

DAYS = 30
MONTHS = 12
CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 600, 160, 10


@dataclass(frozen=True, slots=True)
class Bar:
    """One day of the chart, in SVG units."""

    x: float
    y: float
    width: float
    height: float
    title: str


def _months_back(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def daily_bars(rows: list[dict[str, Any]], first: date, days: int) -> list[Bar]:
    """A bar per day from ``first``: its cost, or its tokens when nothing had a price."""
    by_day = {row["day"]: row for row in rows}
    priced = any(row["cost_usd"] for row in rows)
    values = []
    for offset in range(days):
        row = by_day.get(first + timedelta(days=offset))
        value = (row["cost_usd"] if priced else row["total_tokens"]) if row else 0
        values.append((first + timedelta(days=offset), float(value), row))
    top = max((v for _, v, _ in values), default=0.0) or 1.0
    slot = CHART_WIDTH / days
    bars = []
    for offset, (day, value, row) in enumerate(values):
        height = (CHART_HEIGHT - CHART_TOP) * value / top
        tokens = row["total_tokens"] if row else 0
        cost = row["cost_usd"] if row else Decimal(0)
        title = f"{day:%Y-%m-%d}: {tokens:,} tokens, ${cost:.4f}"
        bars.append(Bar(offset * slot + 1, CHART_HEIGHT - height, max(slot - 2, 1), height, title))
    return bars


def _left(budget: Any, used: Any) -> Any:
    return None if budget is None else max(budget - used, 0)


def budget_rows(month_start: date) -> list[dict[str, Any]]:
    """Each app's month-to-date usage, and what is left of its budgets (None: no budget).

    The budgets are the policy's ``monthly_tokens`` and ``monthly_cost_usd``
    where the policy has them.
    """
    used = {row["app"]: row for row in usage_by(since=month_start, group=("app",))}
    rows = []
    for application in get_application_model().objects.select_related("policy").order_by("name"):
        policy = AppPolicy.of(application)
        tokens_budget = getattr(policy, "monthly_tokens", None)
        cost_budget = getattr(policy, "monthly_cost_usd", None)
        usage = used.get(application.name, {})
        tokens = usage.get("total_tokens", 0)
        cost = usage.get("cost_usd", Decimal(0))
        rows.append(
            {
                "app": application.name,
                "tokens": tokens,
                "cost_usd": cost,
                "tokens_budget": tokens_budget,
                "tokens_left": _left(tokens_budget, tokens),
                "cost_budget": cost_budget,
                "cost_left": _left(None if cost_budget is None else Decimal(cost_budget), cost),
            }
        )
    return rows


@staff_member_required
@require_GET
def spend_page(request: HttpRequest) -> HttpResponse:
    """``?app=NAME`` narrows the tables and the chart to one app."""
    if not request.user.has_perm("audit.view_auditrecord"):
        raise PermissionDenied("Spend is read from the audit trail: it needs view_auditrecord.")
    app = request.GET.get("app") or None
    today = timezone.localdate()
    first_day = today - timedelta(days=DAYS - 1)
    month_start = today.replace(day=1)
    daily = usage_by(app=app, since=first_day, group=("app", "day"))
    context = {
        **admin.site.each_context(request),
        "title": "Spend",
        "app": app,
        "apps": sorted({row["app"] for row in usage_by(group=("app",))}),
        "days": DAYS,
        "daily": sorted(daily, key=lambda row: (row["day"], row["app"]), reverse=True),
        "monthly": usage_by(
            app=app, since=_months_back(month_start, MONTHS - 1), group=("app", "month")
        ),
        "bars": daily_bars(usage_by(app=app, since=first_day, group=("day",)), first_day, DAYS),
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT},
        "budgets": [row for row in budget_rows(month_start) if app in (None, row["app"])],
    }
    return render(request, "sluice/spend.html", context)
