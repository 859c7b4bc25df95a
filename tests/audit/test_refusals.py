"""A request refused once its app is known leaves a ``rejected`` record.

The refusal's ``X-Sluice-Request-Id`` header (a WebSocket error's
``record_id``) names the record; it holds who asked what, the status and the
error class the client was answered with, and it is on the record, not on the
bill.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from django.urls import reverse
from websockets.sync.client import connect

from accounts.models import AppPolicy
from audit.usage import usage_by
from tests.audit.conftest import auditor_client
from tests.conftest import Actor, unique, wait_for_audit

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

PROMPT = [{"role": "user", "content": "may I?"}]


def _post(gateway, actor: Actor, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=actor.headers, timeout=30)


def _ws_create(gateway, actor: Actor, model: str) -> dict[str, Any]:
    with connect(
        gateway.url.replace("http", "ws") + "/v1/ws", additional_headers=actor.headers
    ) as ws:
        ws.send(
            json.dumps(
                {"type": "chat.create", "request_id": "q1", "model": model, "messages": PROMPT}
            )
        )
        return json.loads(ws.recv(timeout=10))


def test_each_refusal_is_on_the_record_with_what_its_client_was_answered(
    gateway, make_actor, make_route, demo_model, sdk
):
    other = make_route(("demo", "", "demo"), prefix="other")
    alice = make_actor("alice", models=[demo_model])
    AppPolicy.objects.filter(application_id=alice.app_id).update(requests_per_minute=1)
    bob = make_actor("bob")

    served = sdk(alice).chat.completions.create(model=demo_model, messages=PROMPT)
    refused: dict[str, tuple[int, str, Actor]] = {}  # record id: status, code, app

    with pytest.raises(openai.RateLimitError) as limited:
        sdk(alice).chat.completions.create(model=demo_model, messages=PROMPT, stream=True)
    refused[limited.value.response.headers["x-sluice-request-id"]] = (
        429,
        "rate_limit_exceeded",
        alice,
    )

    for actor, path, body, status, code in (
        (
            alice,
            "/v1/chat/completions",
            {"model": other, "messages": PROMPT},
            403,
            "model_not_allowed",
        ),
        (
            bob,
            "/v1/chat/completions",
            {"model": "no-such-model", "messages": PROMPT},
            404,
            "model_not_found",
        ),
        (
            bob,
            "/v1/responses",
            {"model": "no-such-model", "input": "may I?"},
            404,
            "model_not_found",
        ),
        (
            bob,
            "/v1/embeddings",
            {"model": "no-such-model", "input": "may I?"},
            404,
            "model_not_found",
        ),
        (
            alice,
            "/v1/messages",
            {"model": demo_model, "max_tokens": 10, "messages": PROMPT},
            429,
            "rate_limit_exceeded",
        ),
    ):
        response = _post(gateway, actor, path, body)
        assert response.status_code == status, response.text
        refused[response.headers["x-sluice-request-id"]] = (status, code, actor)

    error = _ws_create(gateway, alice, demo_model)
    assert (error["type"], error["status"], error["error"]["code"]) == (
        "error",
        429,
        "rate_limit_exceeded",
    )
    refused[error["record_id"]] = (429, "rate_limit_exceeded", alice)

    assert len(refused) == 7
    for request_id, (status, code, actor) in refused.items():
        record = wait_for_audit(request_id)
        assert (record.outcome, record.status_code, record.error_class) == (
            "rejected",
            status,
            code,
        )
        assert (record.app_id, record.app_name) == (actor.app_id, actor.name)
        assert "may I?" in json.dumps(record.request_messages)
        assert record.attempts.count() == 0 and record.response_text == ""

    served_record = wait_for_audit(served.id)
    assert served_record.outcome == "completed"
    [bill] = usage_by(app=alice.app_id, group=("app",))
    assert bill["requests"] == 1  # the served request; refusals are not billed


def test_the_auditor_finds_refusals_by_outcome_status_and_error_class(
    gateway, make_actor, demo_model
):
    alice = make_actor("alice")
    AppPolicy.objects.filter(application_id=alice.app_id).update(requests_per_minute=1)
    auditor = make_actor("ada-audit", scopes=["audit:read"], token_scope="audit:read")
    body = {"model": demo_model, "messages": PROMPT}
    assert _post(gateway, alice, "/v1/chat/completions", body).status_code == 200
    ids = set()
    for _ in range(2):
        response = _post(gateway, alice, "/v1/chat/completions", body)
        assert response.status_code == 429
        ids.add(response.headers["x-sluice-request-id"])
    for request_id in ids:
        wait_for_audit(request_id)

    def listed(**params: str) -> set[str]:
        response = httpx.get(
            gateway.url + "/api/v1/audit/records/",
            params={"app": str(alice.app_id), **params},
            headers=auditor.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return {record["request_id"] for record in response.json()["results"]}

    assert listed(outcome="rejected") == ids
    assert listed(status="429") == listed(error_class="rate_limit_exceeded") == ids
    assert not listed(outcome="rejected", status="2xx")

    page = auditor_client(unique("ada")).get(
        reverse("admin:audit_auditrecord_change", args=[wait_for_audit(min(ids)).pk])
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert "Rejected" in text and "rate_limit_exceeded" in text and "may I?" in text
