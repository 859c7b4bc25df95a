"""Redaction: app patterns replaced before the audit stores anything; only a count is kept."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.models import AppPolicy, validate_redact_patterns
from accounts.services import app_create
from audit.models import AuditRecord
from audit.records import AttemptEntry
from audit.redaction import (
    HOLD_BACK,
    HeldText,
    compile_rules,
    luhn_valid,
    redact_entry,
    redact_text,
)
from audit.services import audit_record_write
from audit.verify import chain_verify
from tests.accounts.forms import app_change_form
from tests.audit.conftest import make_attempt, make_entry
from tests.conftest import scripted_route, wait_for_audit

VISA = "4111 1111 1111 1111"  # a test number: passes Luhn
NOT_A_CARD = "4111 1111 1111 1112"  # fails Luhn: an order number, say


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444")
    assert not luhn_valid("4111111111111112")


def test_emails_and_cards_everywhere_counted_never_kept() -> None:
    entry = make_entry(
        "red-1",
        request_messages=[
            {"role": "system", "content": "Reply to ops@example.com"},
            {
                "role": "user",
                "content": [{"type": "text", "text": f"Card {VISA}, order {NOT_A_CARD}"}],
            },
        ],
        request_params={"user": "jo.doe+x@mail.example.org", "temperature": 0.2},
        response_text="Sent to ops@example.com.",
        tool_calls=[{"function": {"name": "pay", "arguments": '{"card": "5555-5555-5555-4444"}'}}],
        error_message="",
        attempts=[make_attempt("openai", error_message="bad key for ops@example.com")],
        redact=("email", "card"),
    )

    redacted = redact_entry(entry)

    text = str(
        [
            redacted.request_messages,
            redacted.request_params,
            redacted.response_text,
            redacted.tool_calls,
            [a.error_message for a in redacted.attempts],
        ]
    )
    assert "example" not in text and "4111 1111 1111 1111" not in text and "5555" not in text
    assert NOT_A_CARD in text  # no Luhn, no card
    assert "[REDACTED:email]" in redacted.response_text and "[REDACTED:card]" in text
    assert redacted.redactions == 6
    assert redacted.request_params["temperature"] == 0.2
    # Idempotent: the patterns are spent.
    assert redacted.redact == () and redact_entry(redacted) is redacted
    assert entry.response_text == "Sent to ops@example.com."  # the caller's copy untouched


def test_custom_patterns() -> None:
    entry = make_entry(
        "red-2",
        request_messages=[{"role": "user", "content": "Ticket ACME-123456 and ACME-12"}],
        response_text="ok",
        redact=(r"re:ACME-\d{6}",),
    )
    redacted = redact_entry(entry)
    assert redacted.request_messages[0]["content"] == "Ticket [REDACTED:custom] and ACME-12"
    assert redacted.redactions == 1


def test_no_patterns_no_change() -> None:
    entry = make_entry("red-3", request_messages=[{"role": "user", "content": "a@b.example"}])
    assert redact_entry(entry) is entry


@pytest.mark.django_db
def test_stored_record_has_the_count_and_is_sealed_as_stored() -> None:
    entry = make_entry(
        "red-4",
        request_messages=[{"role": "user", "content": "mail me: x@y.example"}],
        attempts=[AttemptEntry("openai", "m", started_at=1.0, error_message="z@y.example")],
        redact=("email",),
    )
    record = audit_record_write(entry=entry)
    record.refresh_from_db()
    assert record.redactions == 2
    assert "y.example" not in str(record.request_messages)
    assert "y.example" not in record.attempts.get().error_message
    assert chain_verify(using="default").ok


@pytest.mark.parametrize(
    ("patterns", "error"),
    [
        (["ACME-("], "not a valid regular expression"),
        (["x*"], "matches empty text"),
        ([r"(\w+)+$"], "exponential"),
        (["a" * 301], "1 to 300 characters"),
        ("ACME", "list of regular expressions"),
    ],
)
def test_bad_patterns_are_refused(patterns: Any, error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_redact_patterns(patterns)
    assert error in str(caught.value)


def test_good_patterns_pass() -> None:
    validate_redact_patterns([r"ACME-\d{6}", r"(?i)secret:\s*\S+"])


@pytest.mark.django_db
def test_admin_edits_patterns_one_per_line_and_shows_a_bad_one() -> None:
    ops = Client()
    ops.force_login(User.objects.create_superuser("ops", "ops@example.com", "x"))
    app, _ = app_create(name="acme-red", scopes=["chat"])
    policy = AppPolicy.objects.get(application=app)
    url = reverse("admin:oauth2_provider_application_change", args=[app.pk])
    form = app_change_form(
        app,
        policy,
        scopes=["chat"],
        max_tokens_mode="clamp",
        redact_emails="on",
        audit_retention_days="30",
        redact_patterns="ACME-\\d{6}\r\n\r\nsecret-\\w+\r\n",
    )
    assert ops.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert policy.redact_patterns == [r"ACME-\d{6}", r"secret-\w+"]
    assert policy.redaction_specs() == ("email", r"re:ACME-\d{6}", r"re:secret-\w+")
    assert policy.audit_retention_days == 30
    page = ops.post(url, form | {"policy-0-redact_patterns": "ok\r\nACME-("})
    assert page.status_code == 200
    assert "is not a valid regular expression" in page.content.decode()


@pytest.mark.django_db
def test_config_as_code_takes_and_checks_the_audit_settings() -> None:
    from streaming.config_io import ConfigError, config_export, config_import

    apps = {
        "apps": [
            {
                "name": "cfg-red",
                "audit": {
                    "audit_retention_days": 7,
                    "redact_cards": True,
                    "redact_patterns": [r"ACME-\d+"],
                },
            }
        ]
    }
    config_import(apps)
    policy = AppPolicy.objects.get(application__name="cfg-red")
    assert (policy.audit_retention_days, policy.redact_cards) == (7, True)
    exported = next(a for a in config_export()["apps"] if a["name"] == "cfg-red")
    assert exported["audit"] == apps["apps"][0]["audit"]
    with pytest.raises(ConfigError, match="redact_patterns"):
        config_import({"apps": [{"name": "cfg-red", "audit": {"redact_patterns": ["("]}}]})
    with pytest.raises(ConfigError, match="unknown setting"):
        config_import({"apps": [{"name": "cfg-red", "audit": {"redact_phone": True}}]})


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_api_sets_redaction_and_refuses_a_bad_pattern(gateway: Any, make_actor: Any) -> None:
    ops = make_actor("ops", scopes=["admin"], token_scope="admin")
    with httpx.Client(base_url=f"{gateway.url}/api/v1", headers=ops.headers, timeout=20) as api:
        created = api.post(
            "/apps/",
            json={
                "name": "api-red",
                "redact_emails": True,
                "redact_patterns": [r"ACME-\d+"],
                "audit_retention_days": 14,
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["redact_emails"], body["redact_patterns"], body["audit_retention_days"]) == (
            True,
            [r"ACME-\d+"],
            14,
        )
        bad = api.patch("/apps/api-red/", json={"redact_patterns": ["ACME-("]})
        assert bad.status_code == 400
        assert "not a valid regular expression" in str(bad.json()["redact_patterns"])
        zero = api.patch("/apps/api-red/", json={"audit_retention_days": 0})
        assert zero.status_code == 400 and "audit_retention_days" in zero.json()


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_a_streamed_prompt_is_stored_redacted(
    gateway: Any, make_actor: Any, sdk: Any, make_route: Any, upstream: Any
) -> None:
    alice = make_actor("alice")
    policy = AppPolicy.objects.get(application_id=alice.app_id)
    policy.redact_emails, policy.redact_cards = True, True
    policy.save()
    model, _ = scripted_route(
        make_route, upstream, "openai", text=f"Noted: alice@example.com pays with {VISA}."
    )
    stream = sdk(alice).chat.completions.create(
        model=model,
        stream=True,
        messages=[{"role": "user", "content": "I am alice@example.com, call me."}],
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "alice@example.com" in streamed  # the client gets the answer as generated

    record = wait_for_audit(chunks[0].id)
    stored = str(record.request_messages) + record.response_text
    assert "alice@example.com" not in stored and "4111" not in stored
    assert record.response_text == "Noted: [REDACTED:email] pays with [REDACTED:card]."
    assert record.redactions == 3
    assert AuditRecord.objects.filter(request_id=chunks[0].id, redactions=3).exists()


def test_long_text_without_a_match_is_linear() -> None:
    """A 1 MB blob of address characters (base64, say) is one scan, not one per position."""
    blob = "a" * 1_000_000
    entry = make_entry("red-5", response_text=blob + " 4" + "1" * 500_000, redact=("email", "card"))
    started = time.perf_counter()
    redacted = redact_entry(entry)
    assert time.perf_counter() - started < 2.0
    assert redacted.redactions == 0


FILLER = " ".join(f"word{i}" for i in range(300))  # about 2,300 characters, nothing to redact


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1500])
def test_text_watched_in_pieces_is_released_as_the_whole_is_redacted(size: int) -> None:
    """However the text is cut into pieces, what is released adds up to the whole
    text redacted, and no release shows the start of a match."""
    text = f"{FILLER} mail alice.smith@example.com or pay 4111 1111 1111 1111 {FILLER} bob@x.io"
    rules = compile_rules(("email", "card"))
    held = HeldText(rules)
    released = [held.add(text[i : i + size]) for i in range(0, len(text), size)]
    released.append(held.flush())

    assert "".join(released) == redact_text(text, rules)
    assert "[REDACTED:email]" in "".join(released) and "[REDACTED:card]" in "".join(released)
    for piece in released:
        assert "alice" not in piece and "4111" not in piece and "bob@" not in piece


def test_held_text_releases_nothing_until_it_holds_more_than_its_window() -> None:
    held = HeldText(compile_rules(("email",)))
    assert held.add("x" * HOLD_BACK) == ""
    assert held.add(" tail") == "x" * 5
    assert held.flush() == "x" * (HOLD_BACK - 5) + " tail"
    assert held.flush() == ""
