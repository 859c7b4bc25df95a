"""Full-text search over prompts and answers, and the filters beside it.

PostgreSQL: websearch_to_tsquery over the GIN index of migration 0007_search
(EXPLAIN shows the index); SQLite: every word as a substring. Both run here,
whichever backend DATABASE_URL names.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from audit.models import AuditRecord
from audit.search import SEARCH_TEXT_LIMIT, search_text_of
from audit.selectors import audit_record_filter, audit_record_search, record_filters_parse
from audit.services import audit_record_write
from tests.audit.conftest import make_entry

pytestmark = pytest.mark.django_db

on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL full-text search"
)
on_sqlite = pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite fallback")

CONVERSATION = [
    {"role": "system", "content": "You are a cartographer."},
    {"role": "user", "content": [{"type": "text", "text": "Where does the Okavango end?"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "atlas_lookup", "arguments": '{"river": "Okavango"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Inland delta in Botswana"},
]


def ids(records) -> list[str]:
    return sorted(r.request_id for r in records)


def search(q: str) -> list[str]:
    return ids(audit_record_search(records=AuditRecord.objects.all(), q=q))


@pytest.fixture
def trail() -> None:
    audit_record_write(
        entry=make_entry(
            "chat-river",
            request_messages=CONVERSATION,
            response_text="It ends in the Kalahari desert.",
        )
    )
    audit_record_write(
        entry=make_entry(
            "chat-tools",
            request_messages=[{"role": "user", "content": "Book a table"}],
            response_text="",
            tool_calls=[{"function": {"name": "reserve_table", "arguments": '{"city": "Lisbon"}'}}],
        )
    )
    audit_record_write(
        entry=make_entry(
            "embed-1",
            protocol="embeddings",
            request_messages=["granite quarry", "marble quarry"],
            response_text="",
        )
    )


def test_search_text_holds_prompts_tool_results_answer_and_tool_arguments() -> None:
    text = search_text_of(CONVERSATION, "It ends in the Kalahari.", [])
    for words in ("cartographer", "Okavango end", "atlas_lookup", "Inland delta", "Kalahari"):
        assert words in text
    assert text.index("Kalahari") < text.index("Inland delta") < text.index("cartographer")
    assert search_text_of(["a", {"content": 3}, None], "", None) == "a"


def test_search_text_is_cut_keeping_the_answer_and_the_latest_turn() -> None:
    old = {"role": "user", "content": "old " * SEARCH_TEXT_LIMIT}
    text = search_text_of([old, {"role": "user", "content": "latest question"}], "answer", [])
    assert len(text) == SEARCH_TEXT_LIMIT
    assert text.startswith("answer\nlatest question\nold old")


def test_stored_records_carry_their_search_text(trail: None) -> None:
    record = AuditRecord.objects.get(request_id="chat-river")
    assert "Botswana" in record.search_text and "Kalahari" in record.search_text
    # A snapshot that replaces the record replaces its search text too.
    audit_record_write(entry=make_entry("chat-river", response_text="Rewritten"))
    assert "Kalahari" not in AuditRecord.objects.get(request_id="chat-river").search_text


def test_search_finds_prompts_answers_tool_calls_and_results(trail: None) -> None:
    assert search("kalahari") == ["chat-river"]  # the answer, any case
    assert search("Botswana delta") == ["chat-river"]  # a tool result
    assert search("Lisbon") == ["chat-tools"]  # a tool call's arguments
    assert search("quarry") == ["embed-1"]  # embeddings inputs
    assert search("Okavango Lisbon") == []  # every word must match
    assert search("chat-tools") == ["chat-tools"]  # a request id
    assert search("zeppelin") == []


@on_postgres
def test_postgres_web_search_syntax(trail: None) -> None:
    assert search('"inland delta"') == ["chat-river"]
    assert search('"delta inland"') == []
    assert search("Lisbon or quarry") == ["chat-tools", "embed-1"]
    assert search("quarry -marble") == []
    assert search("quarry -basalt") == ["embed-1"]


@on_sqlite
def test_sqlite_matches_substrings_of_every_word(trail: None) -> None:
    assert search("kalah") == ["chat-river"]
    assert search("Lis quarry") == []


@on_postgres
def test_postgres_search_uses_the_gin_index(trail: None) -> None:
    records = audit_record_filter(filters=record_filters_parse({"q": "Okavango"}))
    sql, params = records.query.sql_with_params()
    with connection.cursor() as cursor:
        # A table this small is read whole by choice; forbid that to see the index fit.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # The query's expression is the index's: PostgreSQL can answer it from the index.
    assert "Bitmap Index Scan on audit_search_idx" in plan, plan


@on_postgres
def test_postgres_index_is_chosen_on_a_larger_trail() -> None:
    from audit.services import audit_records_write

    filler = " ".join(f"word{k}" for k in range(60))
    entries = [
        make_entry(f"bulk-{n}", response_text=f"routine answer number {n} {filler}")
        for n in range(5000)
    ]
    entries.append(make_entry("needle", response_text="a rare xylophone"))
    audit_records_write(entries=entries)
    with connection.cursor() as cursor:
        # What autovacuum does: new entries leave GIN's pending list for the index proper.
        cursor.execute("SELECT gin_clean_pending_list('audit_search_idx')")
        cursor.execute("ANALYZE audit_auditrecord")
    records = audit_record_search(records=AuditRecord.objects.all(), q="xylophone")
    sql, params = records.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "audit_search_idx" in plan and "Seq Scan" not in plan, plan
    assert [r.request_id for r in records] == ["needle"]


def test_a_huge_prompt_is_stored_and_found_by_its_latest_words() -> None:
    # 3 MB of distinct words would be a tsvector over PostgreSQL's 1 MiB limit.
    words = " ".join(f"w{n}" for n in range(400_000))
    messages = [{"role": "user", "content": words}, {"role": "user", "content": "zebra crossing"}]
    audit_record_write(entry=make_entry("huge", request_messages=messages))
    assert search("zebra") == ["huge"]
    assert len(AuditRecord.objects.get(request_id="huge").search_text) == SEARCH_TEXT_LIMIT


def test_migration_backfills_existing_records(trail: None) -> None:
    from django.apps import apps

    AuditRecord.objects.update(search_text="")
    migration = importlib.import_module("audit.migrations.0007_search")
    migration.CHUNK = 2  # several chunks

    class Editor:
        connection = connection

    try:
        migration.backfill(apps, Editor())
    finally:
        migration.CHUNK = 1000
    assert search("Botswana") == ["chat-river"] and search("quarry") == ["embed-1"]


def test_filters_parse_and_narrow(trail: None) -> None:
    audit_record_write(
        entry=make_entry(
            "failed",
            app_name="bob-bot",
            public_model="big",
            provider="anthropic",
            outcome="upstream_error",
            status_code=503,
            error_class="UpstreamTimeout",
            started_at=datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp(),
        )
    )

    def narrow(**params: str) -> list[str]:
        return ids(audit_record_filter(filters=record_filters_parse(params)))

    assert narrow(app="bob-bot") == ["failed"]
    assert narrow(model="big", provider="anthropic") == ["failed"]
    assert narrow(outcome="upstream_error") == narrow(status="5xx") == narrow(status="503")
    assert narrow(status="429") == []
    assert narrow(error_class="UpstreamTimeout") == ["failed"]
    assert narrow(since="2026-03-01", until="2026-03-01") == ["failed"]  # the whole day
    assert narrow(until="2026-03-01T23:00:00Z") == []
    assert narrow(since="2026-03-02") == ["chat-river", "chat-tools", "embed-1"]
    assert narrow(protocol="embeddings") == ["embed-1"]
    assert narrow(q="Kalahari", app="alice-notes") == ["chat-river"]


def test_app_filter_takes_a_name_or_an_id() -> None:
    from accounts.services import app_create

    app, _ = app_create(name="carol-app", scopes=["chat"])
    audit_record_write(entry=make_entry("by-app", app_id=app.pk, app_name="carol-app"))
    for value in (str(app.pk), "carol-app"):
        assert ids(audit_record_filter(filters=record_filters_parse({"app": value}))) == ["by-app"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"outcome": "exploded"}, "outcome"),
        ({"status": "600"}, "status"),
        ({"status": "abc"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
        ({"protocol": "carrier-pigeon"}, "protocol"),
        ({"q": "x" * 501}, "q"),
        ({"q": "nul\x00"}, "q"),
    ],
)
def test_bad_filters_name_the_parameter(params: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        record_filters_parse(params)
    assert field in caught.value.message_dict
