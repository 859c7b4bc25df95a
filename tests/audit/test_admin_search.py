"""The audit changelist: full-text search, filters named as the API's, and
export links that export exactly what the changelist shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import unescape
from urllib.parse import parse_qs

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from oauth2_provider.models import Application

from audit.models import AuditRecord
from audit.services import audit_record_write
from streaming.models import ModelRoute, Provider
from tests.audit.conftest import make_entry

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:audit_auditrecord_changelist")
EXPORT = reverse("admin:audit_auditrecord_export")
DAY = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture
def trail() -> None:
    audit_record_write(
        entry=make_entry(
            "rec-volga",
            request_messages=[{"role": "user", "content": "Longest river in Europe?"}],
            response_text="The Volga.",
            status_code=200,
            started_at=DAY + 60,
        )
    )
    audit_record_write(
        entry=make_entry(
            "rec-broken",
            app_name="bob-bot",
            outcome="upstream_error",
            status_code=502,
            error_class="first_token_timeout",
            response_text="Half an answ",
            started_at=DAY + 86400 + 60,
        )
    )


def _user(name: str, *, auditor: bool) -> User:
    user = User.objects.create_user(name, password="x", is_staff=True)
    if auditor:
        user.groups.add(Group.objects.get(name="auditors"))
    return user


@pytest.fixture
def ada() -> Client:
    """Ada is an auditor: staff, in the auditors group."""
    client = Client()
    client.force_login(_user("ada", auditor=True))
    return client


@pytest.fixture
def bob() -> Client:
    """Bob is staff without audit rights."""
    client = Client()
    client.force_login(_user("bob", auditor=False))
    return client


def shown(client: Client, **params: str) -> list[str]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return sorted(r.request_id for r in response.context["cl"].result_list)


def test_search_is_full_text_over_prompts_and_answers(ada: Client, trail: None) -> None:
    assert shown(ada, q="volga") == ["rec-volga"]
    assert shown(ada, q="river Europe") == ["rec-volga"]
    assert shown(ada, q="rec-broken") == ["rec-broken"]
    assert shown(ada, q="river broken") == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"outcome": "upstream_error"}, ["rec-broken"]),
        ({"status": "5xx"}, ["rec-broken"]),
        ({"status": "2xx"}, ["rec-volga"]),
        ({"error_class": "first_token_timeout"}, ["rec-broken"]),
        ({"app": "bob-bot"}, ["rec-broken"]),
        ({"since": "2026-03-02"}, ["rec-broken"]),
        ({"until": "2026-03-01"}, ["rec-volga"]),
        ({"since": "2026-03-01", "until": "2026-03-02", "q": "half"}, ["rec-broken"]),
    ],
)
def test_filters(ada: Client, trail: None, params: dict[str, str], expected: list[str]) -> None:
    assert shown(ada, **params) == expected


def test_filter_sidebar_offers_the_values(ada: Client, trail: None) -> None:
    page = ada.get(CHANGELIST).content.decode()
    for link in ("?outcome=upstream_error", "?status=5xx", "?error_class=first_token_timeout"):
        assert link in page
    assert 'id="started-between"' in page and 'name="since"' in page


def test_the_sidebar_names_come_from_their_tables_not_a_scan_of_the_records(
    ada: Client, trail: None
) -> None:
    Application.objects.create(
        name="alice-notes",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    Provider.objects.create(name="openai", kind=Provider.Kind.DEMO)
    ModelRoute.objects.create(model="sluice-small")

    with CaptureQueriesContext(connection) as queries:
        page = ada.get(CHANGELIST).content.decode()

    offered = ("?app=alice-notes", "?model=sluice-small", "?provider=openai", "?error_class=stall")
    assert all(link in page for link in offered)
    assert "?app=bob-bot" not in page  # only its records name it: no app has that name now
    records = AuditRecord._meta.db_table
    assert not [q["sql"] for q in queries if "DISTINCT" in q["sql"] and records in q["sql"]]


def test_a_bad_filter_value_is_the_admins_error_page_not_a_500(ada: Client, trail: None) -> None:
    for params in ({"status": "abc"}, {"since": "yesterday"}, {"outcome": "exploded"}):
        response = ada.get(CHANGELIST, params)
        assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_export_links_carry_the_changelist_query(ada: Client, trail: None) -> None:
    page = ada.get(CHANGELIST, {"q": "volga", "status": "2xx", "p": "1"}).content.decode()
    hrefs = [unescape(part.split('"')[0]) for part in page.split(f'href="{EXPORT}?')[1:]]
    # Every page of the same filters and search: the page number is dropped.
    assert [parse_qs(href) for href in hrefs] == [
        {"q": ["volga"], "status": ["2xx"], "format": ["jsonl"]},
        {"q": ["volga"], "status": ["2xx"], "format": ["csv"]},
    ]


async def test_export_is_what_the_changelist_shows(trail: None) -> None:
    from asgiref.sync import sync_to_async

    client = AsyncClient()
    await client.aforce_login(await sync_to_async(_user)("ada", auditor=True))
    response = await client.get(EXPORT, {"q": "volga", "format": "jsonl"})
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith('.jsonl"')
    body = b"".join([part async for part in response.streaming_content])
    assert [json.loads(line)["request_id"] for line in body.splitlines()] == ["rec-volga"]

    everything = await client.get(EXPORT, {"format": "csv"})
    csv_body = b"".join([part async for part in everything.streaming_content]).decode()
    assert csv_body.splitlines()[0].startswith("request_id,started_at")
    assert [line.split(",")[0] for line in csv_body.splitlines()[1:]] == ["rec-volga", "rec-broken"]


def test_export_needs_view_permission_and_good_parameters(
    ada: Client, bob: Client, trail: None
) -> None:
    assert bob.get(EXPORT, {"format": "jsonl"}).status_code == 403
    assert Client().get(EXPORT).status_code == 302  # to the login page
    bad_format = ada.get(EXPORT, {"format": "xlsx"})
    assert bad_format.status_code == 400 and b"xlsx" in bad_format.content
    bad_date = ada.get(EXPORT, {"since": "yesterday"})
    assert bad_date.status_code == 400 and b"since" in bad_date.content
