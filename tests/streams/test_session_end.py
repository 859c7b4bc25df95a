"""What an ended stream's session still holds while a reader holds it.

A slow client can hold the session long after the generation ended (a
stalled one until it is cut off): it should keep the stream's log and
outcome, not the prompt, the text and the transcript a second time. The
audit record gets all of them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async

from accounts.identity import AppIdentity
from audit.models import AuditRecord
from audit.writer import audit_flush
from streaming.core.log import END
from streaming.core.session import StreamSession
from streaming.providers import ChatRequest, UpstreamTarget
from streaming.providers.pool import close_upstream_pool
from streaming.routing.routes import ResolvedRoute, RoutePolicy, TargetChoice

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(30),
    pytest.mark.usefixtures("upstream_pool_closed"),
]

ALICE = AppIdentity(
    app_id=1,
    client_id="alice-app",
    name="alice's app",
    token_id=None,
    scopes=frozenset({"chat"}),
    allowed_models=None,
    expires_at=2e9,
)


@pytest.fixture
async def upstream_pool_closed() -> AsyncIterator[None]:
    """The sessions run in the test's own event loop: close the pool they opened there."""
    yield
    await close_upstream_pool()


def demo_session(prompt: str, protocol: str) -> StreamSession:
    target = UpstreamTarget("demo", "demo", "", "demo", params={"delay": 0})
    return StreamSession(
        identity=ALICE,
        request=ChatRequest(model="demo", messages=[{"role": "user", "content": prompt}]),
        route=ResolvedRoute("demo", (TargetChoice(target),), RoutePolicy()),
        protocol=protocol,
        client_ip="127.0.0.1",
    )


async def test_a_reader_of_an_ended_stream_holds_its_log_not_its_prompt_or_text() -> None:
    prompt = "tell me about sluices " * 5000
    session = demo_session(prompt, "sse")
    held_by_the_request = sys.getrefcount(prompt)
    session.attach(resumed=False)
    reader = session.follow(0)  # held, like a slow client's
    session.start()

    events = [entry async for batch in reader if batch for entry in batch]
    await session.wait_finished()
    # With takeover (Redis), the record goes once the END is in Redis.
    for _ in range(500):
        if await AuditRecord.objects.filter(request_id=session.id, outcome="completed").aexists():
            break
        await asyncio.sleep(0.01)
    assert await sync_to_async(audit_flush)(10.0)

    assert events[-1][1] == END and session.log.ended
    assert session.audit.outcome == "completed"
    assert session.request.messages == [] and session.audit.request_messages == []
    assert session.transcript.text == "" and session.audit.response_text == ""
    # Nothing else holds it either: not the audit writer, once the record is written.
    assert sys.getrefcount(prompt) == held_by_the_request - 1
    record = await AuditRecord.objects.aget(request_id=session.id)
    assert record.request_messages == [{"role": "user", "content": prompt}]
    assert record.response_text.startswith('You asked: "tell me about sluices')
    assert record.outcome == "completed"


async def test_a_non_streaming_request_keeps_its_transcript_to_answer_with() -> None:
    session = demo_session("hello", "json")
    session.start()
    await session.wait_finished()
    assert await sync_to_async(audit_flush)(10.0)

    assert session.transcript.text.startswith('You asked: "hello"')
