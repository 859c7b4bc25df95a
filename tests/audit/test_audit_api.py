"""``/api/v1/audit/``: list, filter, search, fetch and export audit records on a
served gateway, with real OAuth2 tokens (the ``audit:read`` scope)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from audit.services import audit_record_write, audit_records_write
from tests.audit.conftest import make_attempt, make_entry
from tests.conftest import fetch_token, wait_for_audit

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

DAY = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture
def auditor(make_actor):
    """Ada's tool: an app with the audit:read scope only."""
    return make_actor("ada-audit", scopes=["audit:read"], token_scope="audit:read")


@pytest.fixture
def trail(live_db) -> list[str]:
    """Four records over two days, oldest first."""
    entries = [
        make_entry(
            "rec-river",
            app_name="alice-notes",
            started_at=DAY + 3600,
            ended_at=DAY + 3602,
            status_code=200,
            request_messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Which river crosses Budapest?"},
            ],
            response_text="The Danube.",
            tool_calls=[{"function": {"name": "atlas", "arguments": '{"city": "Budapest"}'}}],
            attempts=[
                make_attempt("anthropic", outcome="failed", status_code=529, started_at=DAY + 3600),
                make_attempt(
                    "openai",
                    started_at=DAY + 3601,
                    first_token_at=DAY + 3601.25,
                    ended_at=DAY + 3602,
                    status_code=200,
                ),
            ],
            resumes=1,
            redactions=2,
            instance="vm:101:aaa",
            taken_over_by="vm:202:bbb",
            deliveries=[
                {"transport": "sse", "delivered": 6, "generated": 9, "ended": "client_gone"}
            ],
        ),
        make_entry(
            "rec-timeout",
            app_name="bob-bot",
            public_model="big",
            provider="anthropic",
            outcome="upstream_error",
            status_code=504,
            error_class="UpstreamTimeout",
            error_message="no first byte in 30 s",
            started_at=DAY + 7200,
            response_text="=cmd|' /C calc'!A0",
        ),
        make_entry(
            "rec-limited",
            app_name="bob-bot",
            outcome="rejected",
            status_code=429,
            error_class="RateLimited",
            started_at=DAY + 86400 + 60,
            response_text="",
        ),
        make_entry(
            "rec-lake",
            app_name="alice-notes",
            started_at=DAY + 86400 + 120,
            status_code=200,
            request_messages=[{"role": "user", "content": "Deepest lake?"}],
            response_text="Lake Baikal.",
        ),
    ]
    for entry in entries:
        audit_record_write(entry=entry)
    return [e.request_id for e in entries]


def get(gateway, path: str, actor, **params) -> httpx.Response:
    headers = actor.headers if actor else {}
    return httpx.get(f"{gateway.url}{path}", params=params, headers=headers, timeout=60)


def listed(gateway, actor, **params) -> list[str]:
    response = get(gateway, "/api/v1/audit/records/", actor, **params)
    assert response.status_code == 200, response.text
    return [item["request_id"] for item in response.json()["results"]]


def test_sluice_app_create_grants_audit_read_through_the_token_endpoint(gateway, live_db, trail):
    from django.core.management import call_command

    out = io.StringIO()
    call_command("sluice_app", "create", "ada-tool", "--scopes", "audit:read", stdout=out)
    app = json.loads(out.getvalue())
    assert app["scopes"] == ["audit:read"]
    token = fetch_token(gateway.url, app["client_id"], app["client_secret"], "audit:read")
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "audit:read"
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    response = httpx.get(f"{gateway.url}/api/v1/audit/records/", headers=headers, timeout=30)
    assert response.status_code == 200
    # An app without the scope is refused it at the token endpoint.
    chat_only = fetch_token(gateway.url, app["client_id"], app["client_secret"], "admin")
    assert chat_only.status_code == 400 and chat_only.json()["error"] == "invalid_scope"


@pytest.mark.parametrize(
    "path", ["/api/v1/audit/records/", "/api/v1/audit/records/rec-river/", "/api/v1/audit/export/"]
)
def test_every_endpoint_needs_the_audit_read_scope(gateway, make_actor, alice, trail, path):
    ops = make_actor("ops", scopes=["admin"], token_scope="admin")

    anonymous = get(gateway, path, None)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    for actor in (alice, ops):  # chat; admin does not imply audit:read
        refused = get(gateway, path, actor)
        assert refused.status_code == 403
        assert "audit:read" in refused.json()["detail"]
    bad = httpx.get(f"{gateway.url}{path}", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad.status_code == 401


def test_read_only(gateway, auditor, trail):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/api/v1/audit/records/", "/api/v1/audit/records/rec-river/"):
            response = httpx.request(
                method, f"{gateway.url}{path}", headers=auditor.headers, json={}, timeout=30
            )
            assert response.status_code == 405, (method, path)
    head = httpx.head(f"{gateway.url}/api/v1/audit/export/", headers=auditor.headers, timeout=30)
    assert head.status_code == 405  # it would run the whole export for nothing


def test_list_is_newest_first_with_summaries(gateway, auditor, trail):
    response = get(gateway, "/api/v1/audit/records/", auditor)
    body = response.json()
    assert [item["request_id"] for item in body["results"]] == trail[::-1]
    assert body["next"] is None
    item = body["results"][-1]
    assert item["app"] == "alice-notes" and item["outcome"] == "completed"
    assert item["status"] == 200 and item["started_at"] == "2026-03-01T01:00:00Z"
    assert "request_messages" not in item  # a summary


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"app": "bob-bot"}, ["rec-limited", "rec-timeout"]),
        ({"model": "big"}, ["rec-timeout"]),
        ({"provider": "anthropic"}, ["rec-timeout"]),
        ({"outcome": "rejected"}, ["rec-limited"]),
        ({"status": "429"}, ["rec-limited"]),
        ({"status": "5xx"}, ["rec-timeout"]),
        ({"error_class": "UpstreamTimeout"}, ["rec-timeout"]),
        ({"since": "2026-03-02"}, ["rec-lake", "rec-limited"]),
        ({"until": "2026-03-01"}, ["rec-timeout", "rec-river"]),  # the whole day
        (
            {"since": "2026-03-01T01:30:00Z", "until": "2026-03-02T00:01:30Z"},
            ["rec-limited", "rec-timeout"],
        ),
        ({"q": "budapest"}, ["rec-river"]),  # the prompt, any case
        ({"q": "Baikal"}, ["rec-lake"]),  # the answer
        ({"q": "Lake Danube"}, []),  # every word
        ({"q": "rec-limited"}, ["rec-limited"]),  # a request id
        ({"app": "alice-notes", "q": "Danube", "status": "2xx"}, ["rec-river"]),
    ],
)
def test_filters(gateway, auditor, trail, params, expected):
    assert listed(gateway, auditor, **params) == expected


def test_a_datetime_typed_into_a_url_keeps_its_offset(gateway, auditor, trail):
    """An unencoded '+01:00' reaches the server as ' 01:00'; it is still an offset
    (the same window as the 'Z' case above, an hour ahead)."""
    query = "since=2026-03-01T02:30:00+01:00&until=2026-03-02T01:01:30+01:00"
    response = httpx.get(
        f"{gateway.url}/api/v1/audit/records/?{query}", headers=auditor.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    assert [item["request_id"] for item in response.json()["results"]] == [
        "rec-limited",
        "rec-timeout",
    ]


def test_status_is_what_each_served_request_was_answered_with(
    gateway, auditor, alice, make_route, upstream
):
    """Real traffic, not made-up records: a stream answered 200 (SSE and not
    streamed), an upstream 429 passed on to its client, and a mid-stream failure
    (its head was a 200) are each found under their status."""
    upstream.script("status-ok", tokens=["fine"])
    upstream.script("status-429", fault="http_429", retry_after=0)
    upstream.script("status-die", tokens=["a ", "b ", "c "], fault="die", fault_after=2)
    models = {
        name: make_route(("openai", upstream.base_url, name), attempts_per_target=1, prefix=name)
        for name in ("status-ok", "status-429", "status-die")
    }
    served = {}
    for name, stream in (
        ("status-ok", True),
        ("status-ok", False),
        ("status-429", True),
        ("status-die", True),
    ):
        body = {
            "model": models[name],
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with httpx.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers=alice.headers,
            timeout=30,
        ) as response:
            response.read()
            served[response.headers["x-sluice-stream-id"]] = response.status_code
    assert sorted(served.values()) == [200, 200, 200, 429]
    for request_id in served:
        wait_for_audit(request_id)

    def ids(**params: str) -> set[str]:
        return set(listed(gateway, auditor, **params)) & set(served)

    assert ids(status="200") == {rid for rid, status in served.items() if status == 200}
    assert ids(status="2xx") == ids(status="200")
    assert (
        ids(status="429")
        == ids(status="4xx")
        == {rid for rid, status in served.items() if status == 429}
    )


def test_app_filter_takes_the_app_id(gateway, auditor, live_db):
    audit_record_write(entry=make_entry("rec-own", app_id=auditor.app_id, app_name=auditor.name))
    assert listed(gateway, auditor, app=str(auditor.app_id)) == ["rec-own"]


def test_cursor_pagination_walks_every_record_once(gateway, auditor, trail):
    seen: list[str] = []
    url: str | None = f"{gateway.url}/api/v1/audit/records/?limit=3"
    while url:
        page = httpx.get(url, headers=auditor.headers, timeout=30).json()
        assert len(page["results"]) <= 3
        seen += [item["request_id"] for item in page["results"]]
        url = page["next"]
    assert seen == trail[::-1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
        ({"status": "abc"}, "status"),
        ({"status": "700"}, "status"),
        ({"outcome": "exploded"}, "outcome"),
        ({"q": "x" * 501}, "q"),
    ],
)
def test_bad_filters_are_a_400_naming_the_parameter(gateway, auditor, params, field):
    for path in ("/api/v1/audit/records/", "/api/v1/audit/export/"):
        response = get(gateway, path, auditor, **params)
        assert response.status_code == 400, response.text
        assert field in response.json()


def test_detail_has_the_transcript_and_attempts(gateway, auditor, trail):
    response = get(gateway, "/api/v1/audit/records/rec-river/", auditor)
    assert response.status_code == 200
    record = response.json()
    assert record["request_messages"][1] == {
        "role": "user",
        "content": "Which river crosses Budapest?",
    }
    assert record["response_text"] == "The Danube."
    assert record["tool_calls"][0]["function"]["name"] == "atlas"
    assert record["usage"]["total_tokens"] == 8 and record["resumes"] == 1
    assert record["duration_ms"] == 2000.0 and record["ttft_ms"] == 120.0
    first, second = record["attempts"]
    assert (first["provider"], first["outcome"], first["status"]) == ("anthropic", "failed", 529)
    assert second["first_token_ms"] == 250.0 and second["duration_ms"] == 1000.0
    # How many were redacted (never what), the instances, what each connection got.
    assert record["redactions"] == 2
    assert (record["instance"], record["taken_over_by"]) == ("vm:101:aaa", "vm:202:bbb")
    assert record["deliveries"][0]["delivered"] == 6

    missing = get(gateway, "/api/v1/audit/records/chatcmpl-nope/", auditor)
    assert missing.status_code == 404 and "chatcmpl-nope" in missing.json()["detail"]


def test_export_jsonl_is_every_filtered_record_oldest_first(gateway, auditor, trail):
    response = get(gateway, "/api/v1/audit/export/", auditor, format="jsonl", app="alice-notes")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="audit-records-')
    assert disposition.endswith('.jsonl"')
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["request_id"] for line in lines] == ["rec-river", "rec-lake"]
    detail = get(gateway, "/api/v1/audit/records/rec-river/", auditor).json()
    assert lines[0] == detail  # the same document as the detail view


def test_export_csv_flat_rows_with_attempts_summarised(gateway, auditor, trail):
    response = get(gateway, "/api/v1/audit/export/", auditor, format="csv", since="2026-03-01")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["request_id"] for row in rows] == trail
    river = rows[0]
    assert river["attempts"] == "2"
    assert (
        river["attempt_chain"]
        == "anthropic/anthropic-model failed 529 > openai/openai-model ok 200"
    )
    assert river["prompt"] == "system: Be brief.\nuser: Which river crosses Budapest?"
    assert river["response_text"] == "The Danube." and river["status"] == "200"
    # A cell a spreadsheet would run as a formula is defused.
    assert rows[1]["response_text"] == "'=cmd|' /C calc'!A0"


def test_export_unknown_format_is_a_400(gateway, auditor):
    response = get(gateway, "/api/v1/audit/export/", auditor, format="xlsx")
    assert response.status_code == 400 and "format" in response.json()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _export_ids(gateway, auditor, during=None, **params) -> list[str]:
    url = f"{gateway.url}/api/v1/audit/export/"
    params = {"format": "jsonl", **params}
    ids = []
    with httpx.stream("GET", url, params=params, headers=auditor.headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            ids.append(json.loads(line)["request_id"])
            if during:
                during(len(ids))
    return ids


def test_export_of_30000_records_streams_each_once_in_order_in_flat_memory(
    gateway, auditor, live_db
):
    answer = "x" * 3000
    for start in range(0, 30_000, 3_000):
        audit_records_write(
            entries=[
                make_entry(f"bulk-{n:05d}", response_text=f"{answer} {n}", started_at=DAY + n)
                for n in range(start, start + 3_000)
            ]
        )
    assert gateway.process is not None
    # A first, smaller export brings the process to its working size for exports.
    until = datetime.fromtimestamp(DAY + 4_999.5, UTC).isoformat()
    assert len(_export_ids(gateway, auditor, until=until)) == 5_000
    before = _peak_rss_kib(gateway.process.pid)

    def meanwhile(received: int) -> None:
        if received == 1_000:  # written after the export began
            audit_record_write(entry=make_entry("late", started_at=DAY))

    ids = _export_ids(gateway, auditor, during=meanwhile)

    # Each once, in order; and read as it is sent (a record written while the
    # export ran is in it), not gathered first.
    assert ids == [f"bulk-{n:05d}" for n in range(30_000)] + ["late"]
    # Six times the records (93 MB of JSON) leave the peak about where it was;
    # gathered first they would raise it by more than their size (143 MiB measured).
    grown_mib = (_peak_rss_kib(gateway.process.pid) - before) / 1024
    assert grown_mib < 25, f"the gateway's peak RSS grew {grown_mib:.1f} MiB"
