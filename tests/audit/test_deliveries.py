"""What each client connection was delivered, against what was generated (served gateway)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.conftest import unique, wait_for_audit
from tests.live import GatewayServer, server_env
from tests.streams.clients import Progress, read_ndjson, resume_sse, start_sse

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]
TOKENS = [f"t{i} " for i in range(12)]
REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.fixture
def slow_model(upstream, make_route):
    upstream_model = unique("deliv")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.05)
    return make_route(("openai", upstream.base_url, upstream_model))


def wait_for_notes(request_id: str, count: int, timeout: float = 10.0) -> list:
    from audit.models import AuditNote

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notes = list(AuditNote.objects.filter(request_id=request_id).order_by("at", "pk"))
        if len(notes) >= count:
            return notes
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} notes for {request_id}")


def test_a_dropped_and_resumed_client_is_two_connections_that_add_up(gateway, alice, slow_model):
    progress = start_sse(gateway.url, alice.headers, slow_model, stop_after=5)
    assert progress.cursor == 5 and not progress.done
    resume_sse(gateway.url, alice.headers, progress)
    assert progress.done and progress.content == "".join(TOKENS)

    record = wait_for_audit(progress.stream_id)

    first, second = record.deliveries
    generated = progress.cursor  # the client's last event is the log's last: END ([DONE])
    assert first["transport"] == second["transport"] == "sse"
    assert first["actor"] == alice.name
    assert (first["resumed"], first["from"]) == (False, None)
    assert (first["events"], first["last_seq"], first["ended"]) == (5, 5, "client_gone")
    assert (second["resumed"], second["from"]) == (True, 5)
    assert second["events"] == generated - 5
    assert (second["last_seq"], second["ended"]) == (generated, "completed")
    assert first["generated"] == second["generated"] == generated
    assert first["events"] + second["events"] == generated
    assert first["connected_at"] <= first["ended_at"] <= second["connected_at"]
    assert record.resumes == 1


def test_one_client_reading_to_the_end_is_one_full_delivery(gateway, alice, slow_model):
    progress = start_sse(gateway.url, alice.headers, slow_model, stop_after=None)
    assert progress.done

    (only,) = wait_for_audit(progress.stream_id).deliveries

    assert only["events"] == only["generated"] == only["last_seq"] == progress.cursor
    assert only["ended"] == "completed"


def test_a_resume_after_the_end_is_a_delivery_note(gateway, alice, slow_model):
    progress = start_sse(gateway.url, alice.headers, slow_model, stop_after=None)
    record = wait_for_audit(progress.stream_id)
    assert len(record.deliveries) == 1

    again = Progress(cursor=3)
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{progress.stream_id}?after=3",
        headers={**alice.headers, "Accept": "application/x-ndjson"},
        timeout=20,
    ) as response:
        read_ndjson(response, again, None)
    assert again.done

    (note,) = wait_for_notes(progress.stream_id, 1)
    assert (note.kind, note.actor) == ("delivery", alice.name)
    assert note.detail["transport"] == "ndjson"
    assert (note.detail["resumed"], note.detail["from"]) == (True, 3)
    assert note.detail["events"] == progress.cursor - 3
    assert note.detail["generated"] == progress.cursor
    assert note.detail["ended"] == "completed"
    record.refresh_from_db()
    assert len(record.deliveries) == 1  # the record itself is not rewritten


@pytest.fixture(scope="module")
def pair(django_db_setup):
    servers = [GatewayServer(env=server_env(REDIS_URL=REDIS_URL)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (CI sets it)")
def test_a_resume_on_another_instance_is_a_delivery_note(pair, alice, slow_model):
    a, b = pair
    progress = start_sse(a.url, alice.headers, slow_model, stop_after=4)
    resume_sse(b.url, alice.headers, progress)  # live, through Redis
    assert progress.done

    record = wait_for_audit(progress.stream_id)
    (note,) = wait_for_notes(progress.stream_id, 1)

    (first,) = record.deliveries  # the connection on A, where the stream ran
    assert (first["events"], first["ended"]) == (4, "client_gone")
    assert (note.kind, note.actor, note.detail["transport"]) == ("delivery", alice.name, "sse")
    assert (note.detail["from"], note.detail["ended"]) == (4, "completed")
    assert note.detail["events"] == progress.cursor - 4 == note.detail["generated"] - 4
    assert record.resumes == 0  # counted where the stream runs; B's reader is elsewhere


def test_a_responses_stream_is_delivered_as_responses(gateway, alice, slow_model):
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        headers=alice.headers,
        json={"model": slow_model, "input": "hi", "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        stream_id = response.headers["x-sluice-stream-id"]
        response.read()

    (only,) = wait_for_audit(stream_id).deliveries

    assert (only["transport"], only["ended"], only["resumed"]) == ("responses", "completed", False)
    assert only["events"] == only["generated"]


@pytest.mark.skipif(not os.environ.get("DATABASE_URL"), reason="PostgreSQL checks lengths")
def test_a_note_the_database_refuses_is_logged_not_raised(live_db, caplog):
    from audit.models import AuditNote
    from audit.services import audit_note_add

    note = audit_note_add(
        request_id="chatcmpl-x", kind="k" * 40, actor="carol", detail={}, at=time.time()
    )

    assert note is None and not AuditNote.objects.exists()
    assert "audit note lost: " + "k" * 40 + " chatcmpl-x" in caplog.text
