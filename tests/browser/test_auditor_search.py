"""An auditor searches, filters and exports the audit trail in a real browser.

Ada (staff, in the ``auditors`` group, nothing else) searches prompts and
answers from the changelist's search box, narrows by date range and outcome,
and downloads what she sees as CSV and JSONL. Screenshots go to test-output/
(copied to docs/audit-search.png and docs/audit-filters.png).
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.browser.conftest import CHROMIUM, logged_in_page, shot

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no browser at {CHROMIUM} (make browser installs it)", allow_module_level=True)

DAY = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture
def ada(live_db: None) -> tuple[str, str]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user("ada", password="s3cret-pass-ada", is_staff=True)
    user.groups.add(Group.objects.get(name="auditors"))
    return "ada", "s3cret-pass-ada"


@pytest.fixture
def trail(live_db: None) -> None:
    """Six requests of three apps over three days; two ask about rivers."""
    from audit.services import audit_record_write
    from tests.audit.conftest import make_attempt, make_entry

    rows = [
        (
            "alice-notes",
            "river-1",
            "Which river crosses Budapest?",
            "The Danube.",
            "completed",
            200,
        ),
        ("alice-notes", "lake-1", "Deepest lake on Earth?", "Lake Baikal.", "completed", 200),
        (
            "bob-bot",
            "river-2",
            "Which river flows through Vienna?",
            "The Danube too.",
            "completed",
            200,
        ),
        ("bob-bot", "timeout-1", "Summarise the Danube's delta", "", "upstream_error", 504),
        ("carol-ci", "limit-1", "Write a haiku", "", "rejected", 429),
        (
            "carol-ci",
            "poem-1",
            "Write a haiku about rivers",
            "Water finds its way",
            "completed",
            200,
        ),
    ]
    for n, (app, request_id, prompt, answer, outcome, status) in enumerate(rows):
        failed = outcome == "upstream_error"
        started = DAY + (n // 2) * 86400 + n * 60
        audit_record_write(
            entry=make_entry(
                request_id,
                app_name=app,
                public_model="sluice-small" if n % 2 else "sluice-large",
                request_messages=[{"role": "user", "content": prompt}],
                response_text=answer,
                outcome=outcome,
                status_code=status,
                error_class="UpstreamTimeout" if failed else "",
                started_at=started,
                ended_at=started + 0.8 + n / 10,
                ttft_ms=180.0 + 25 * n,
                attempts=[make_attempt("openai", outcome="failed" if failed else "ok")],
            )
        )


def rows_shown(page) -> list[str]:
    """The app column of each changelist row."""
    return page.locator("#result_list tbody td.field-app_name").all_inner_texts()


def download(page, link: str) -> str:
    with page.expect_download() as info:
        page.click(link)
    return Path(info.value.path()).read_text()


def test_auditor_searches_filters_and_exports(gateway, ada, trail, browser):
    page = logged_in_page(browser, gateway, ada)
    page.set_viewport_size({"width": 1600, "height": 900})  # every column in view
    page.goto(f"{gateway.url}/admin/audit/auditrecord/")
    page.click("#toggle-nav-sidebar")  # room for the table
    assert len(rows_shown(page)) == 6

    # Full text over prompts and answers: both river questions and the failed one.
    page.fill("#searchbar", "Danube")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=Danube**")
    assert sorted(rows_shown(page)) == ["alice-notes", "bob-bot", "bob-bot"]
    prompts = page.locator("#result_list tbody td.field-prompt").all_inner_texts()
    assert "Which river crosses Budapest?" in prompts
    shot(page, "audit-search")

    # The JSONL export is what the changelist shows.
    jsonl = download(page, "#export-jsonl")
    exported = [json.loads(line) for line in jsonl.splitlines()]
    assert [r["request_id"] for r in exported] == ["river-1", "river-2", "timeout-1"]
    assert exported[0]["request_messages"][0]["content"] == "Which river crosses Budapest?"

    # Narrow to the second day and to completed requests: the search stays.
    page.fill("#since", "2026-03-02")
    page.fill("#until", "2026-03-02")
    page.click("#started-between input[type=submit]")
    page.wait_for_url("**since=2026-03-02**")
    assert sorted(rows_shown(page)) == ["bob-bot", "bob-bot"]
    page.click("details[data-filter-title='outcome'] a:text-is('Completed')")
    page.wait_for_url("**outcome=completed**")
    assert rows_shown(page) == ["bob-bot"]
    assert page.input_value("#searchbar") == "Danube"
    shot(page, "audit-filters")

    rows = list(csv.DictReader(io.StringIO(download(page, "#export-csv"))))
    assert [(r["request_id"], r["outcome"], r["app"]) for r in rows] == [
        ("river-2", "completed", "bob-bot")
    ]
    assert rows[0]["prompt"] == "user: Which river flows through Vienna?"
    assert rows[0]["attempt_chain"] == "openai/openai-model ok"
