from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from audit.records import AttemptEntry, AuditEntry
from audit.writer import audit_flush


def make_entry(request_id: str, **fields: Any) -> AuditEntry:
    """A finished request as the streaming core would hand it over."""
    now = time.time()
    fields.setdefault("protocol", "sse")
    fields.setdefault("public_model", "sluice-small")
    fields.setdefault("started_at", now - 2)
    fields.setdefault("ended_at", now)
    fields.setdefault("app_name", "alice-notes")
    fields.setdefault("provider", "openai")
    fields.setdefault("upstream_model", "gpt-4o-mini")
    fields.setdefault("request_messages", [{"role": "user", "content": "Name a river."}])
    fields.setdefault("response_text", "The Danube.")
    fields.setdefault("finish_reason", "stop")
    fields.setdefault("usage", {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    fields.setdefault("ttft_ms", 120.0)
    return AuditEntry(request_id=request_id, **fields)


def make_attempt(provider: str, **fields: Any) -> AttemptEntry:
    fields.setdefault("upstream_model", f"{provider}-model")
    fields.setdefault("started_at", time.time() - 1)
    return AttemptEntry(provider=provider, **fields)


def auditor_client(username: str) -> Client:
    """A client logged in as ``username``: staff, in the auditors group."""
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name="auditors"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _drain_audit_writer() -> Iterator[None]:
    # The process-wide writer outlives a test: let it finish while the
    # test still has database access.
    yield
    assert audit_flush(timeout=10)
