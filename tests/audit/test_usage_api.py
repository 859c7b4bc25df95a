"""``GET /api/v1/usage/``: what each app used and spent, per route and day, on a served gateway."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from tests.conftest import wait_for_audit

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def test_usage_per_app_route_and_day(gateway, make_actor, alice, sdk, make_route):
    from django.utils import timezone

    from streaming.models import ModelPrice, RouteTarget

    model = make_route(("demo", "", "demo"), prefix="priced")
    provider = RouteTarget.objects.get(route__model=model).provider
    ModelPrice.objects.create(
        provider=provider, model="demo", input_per_mtok=1000.0, output_per_mtok=2000.0
    )
    client = sdk(alice)
    ids = [
        client.chat.completions.create(
            model=model, max_tokens=20, messages=[{"role": "user", "content": f"Hi {n}"}]
        ).id
        for n in range(2)
    ]
    records = [wait_for_audit(request_id) for request_id in ids]
    ops = make_actor("ops", scopes=["admin"], token_scope="admin")
    today = timezone.localdate().isoformat()

    response = httpx.get(
        f"{gateway.url}/api/v1/usage/",
        params={"app": records[0].app_name, "since": today, "until": today},
        headers=ops.headers,
        timeout=20,
    )

    assert response.status_code == 200, response.text
    rows = [row for row in response.json()["data"] if row["route"] == model]
    assert len(rows) == 1
    row = rows[0]
    assert row["app"] == records[0].app_name and row["day"] == today
    assert row["requests"] == 2
    assert row["prompt_tokens"] == sum(r.prompt_tokens for r in records) > 0
    assert row["completion_tokens"] == sum(r.completion_tokens for r in records) > 0
    assert Decimal(row["cost_usd"]) == sum(Decimal(r.cost_usd) for r in records) > 0

    group = httpx.get(
        f"{gateway.url}/api/v1/usage/",
        params={"group": "app,month"},
        headers=ops.headers,
        timeout=20,
    ).json()["data"]
    assert any(r["app"] == records[0].app_name and r["requests"] >= 2 for r in group)


def test_usage_needs_the_admin_scope_and_valid_filters(gateway, make_actor, alice):
    url = f"{gateway.url}/api/v1/usage/"
    ops = make_actor("ops", scopes=["admin"], token_scope="admin")

    assert httpx.get(url, timeout=20).status_code == 401
    assert httpx.get(url, headers=alice.headers, timeout=20).status_code == 403
    bad_date = httpx.get(url, params={"since": "yesterday"}, headers=ops.headers, timeout=20)
    bad_group = httpx.get(url, params={"group": "color"}, headers=ops.headers, timeout=20)
    assert bad_date.status_code == 400 and "since" in bad_date.json()
    assert bad_group.status_code == 400 and "group" in bad_group.json()
