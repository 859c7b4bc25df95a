"""Usage and spend read from the audit trail: ``usage_by`` and the admin's spend page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import AppPolicy
from accounts.services import app_create
from audit.services import audit_record_write
from audit.usage import usage_by
from tests.audit.conftest import make_attempt, make_entry

pytestmark = pytest.mark.django_db

NOW = timezone.now()
YESTERDAY = NOW - timedelta(days=1)


def charged(request_id: str, when: datetime, app: str, route: str, **usage: Any) -> None:
    """A stored request charged ``usage`` (prompt, completion, cached tokens, cost)."""
    fields = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.001,
        **usage,
    }
    entry = make_entry(
        request_id,
        app_name=app,
        public_model=route,
        started_at=when.timestamp(),
        ended_at=when.timestamp() + 1,
        attempts=[make_attempt("openai", **fields)],
        **fields,
    )
    audit_record_write(entry=entry)


@pytest.fixture
def trail() -> None:
    charged("r1", YESTERDAY, "alice-notes", "chat-small")
    charged("r2", YESTERDAY, "alice-notes", "chat-small", cached_tokens=40)
    charged("r3", NOW, "alice-notes", "chat-large", cost_usd=0.25, reasoning_tokens=7)
    charged("r4", NOW, "bob-search", "chat-small", prompt_tokens=1, completion_tokens=2)


def test_the_record_and_its_attempts_carry_the_charge(trail):
    from audit.models import AuditRecord

    record = AuditRecord.objects.get(request_id="r3")
    assert (record.prompt_tokens, record.completion_tokens, record.reasoning_tokens) == (
        100,
        20,
        7,
    )
    assert record.cost_usd == Decimal("0.25")
    assert record.attempts.get().cost_usd == Decimal("0.25")


def test_a_resubmitted_entry_replaces_its_charge(trail):
    charged("r1", YESTERDAY, "alice-notes", "chat-small", completion_tokens=50, cost_usd=0.002)

    rows = usage_by(app="alice-notes", until=YESTERDAY.date(), group=("app",))

    assert [(r["requests"], r["completion_tokens"], r["cost_usd"]) for r in rows] == [
        (2, 70, Decimal("0.003"))
    ]


def test_usage_by_app_route_and_day(trail):
    rows = usage_by()

    day, today = timezone.localdate(YESTERDAY), timezone.localdate(NOW)
    assert [(r["app"], r["route"], r["day"], r["requests"]) for r in rows] == [
        ("alice-notes", "chat-large", today, 1),
        ("alice-notes", "chat-small", day, 2),
        ("bob-search", "chat-small", today, 1),
    ]
    small = rows[1]
    assert small["prompt_tokens"] == 200 and small["completion_tokens"] == 40
    assert small["cached_tokens"] == 40 and small["total_tokens"] == 240
    assert small["cost_usd"] == Decimal("0.002")
    assert rows[0]["reasoning_tokens"] == 7


def test_usage_by_narrows_to_an_app_and_a_period(trail):
    alice = usage_by(app="alice-notes", since=NOW - timedelta(minutes=5), group=("app",))
    assert [(r["app"], r["requests"], r["cost_usd"]) for r in alice] == [
        ("alice-notes", 1, Decimal("0.25"))
    ]
    until = usage_by(until=YESTERDAY.date(), group=("app", "month"))
    assert [(r["app"], r["requests"]) for r in until] == [("alice-notes", 2)]
    assert until[0]["month"] == timezone.localdate(YESTERDAY).replace(day=1)
    assert usage_by(since=NOW + timedelta(hours=1)) == []


def test_usage_by_refuses_an_unknown_grouping():
    with pytest.raises(ValueError, match="colour"):
        usage_by(group=("app", "colour"))


# -- the spend page ---------------------------------------------------------------
def test_the_spend_page_shows_tables_a_chart_and_budgets(admin_client, trail):
    app, _ = app_create(name="alice-notes", scopes=["chat"])
    app_create(name="bob-search", scopes=["chat"])
    # The limits work adds monthly_tokens and monthly_cost_usd to the policy; until
    # then, and for a policy without them, the page says "no budget".
    policy = AppPolicy.of(app)
    policy.save()

    page = admin_client.get("/admin/sluice/spend/").content.decode()

    assert '<svg id="spend-chart"' in page and page.count('class="spend-bar"') == 30
    assert "alice-notes" in page and "bob-search" in page and "chat-small" not in page
    assert "no budget" in page
    month = 0.25 + (0.002 if YESTERDAY.month == NOW.month else 0)  # alice's spend this month
    assert f"<td>{month:.4f}</td>" in page
    one = admin_client.get("/admin/sluice/spend/?app=bob-search").content.decode()
    assert one.count('class="spend-bar"') == 30 and "alice-notes</td>" not in one


def test_the_spend_page_shows_what_is_left_of_a_budget(admin_client, trail):
    app, _ = app_create(name="alice-notes", scopes=["chat"])
    policy = AppPolicy.of(app)
    policy.monthly_tokens, policy.monthly_cost_usd = 1000, Decimal("1.0")
    policy.save()

    page = admin_client.get("/admin/sluice/spend/?app=alice-notes").content.decode()

    this_month = [NOW] + ([YESTERDAY] * 2 if YESTERDAY.month == NOW.month else [])
    tokens = 120 * len(this_month)
    assert f"<td>{1000 - tokens}</td>" in page


def test_the_spend_page_needs_the_audit_view_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("carol", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/sluice/spend/").status_code == 403


def test_a_day_is_the_servers_day():
    charged("late", datetime(2026, 1, 31, 23, 30, tzinfo=UTC), "alice-notes", "chat-small")
    rows = usage_by(group=("day",))
    assert rows[0]["day"] == timezone.localdate(datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
