"""A request's record and how it ended, as its client is told: the audit entry
it starts with, the failure it gets, and the headers that say which target
served it and how it came to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from django.conf import settings

from accounts import revocation
from accounts.identity import AppIdentity
from audit.instance import instance_id
from audit.records import AuditEntry
from audit.writer import audit_submit, audit_wake
from streaming.core.events import Failure
from streaming.providers import UpstreamError

# A record's error class when the gateway itself ended the request, beside an
# UpstreamError's and an access revocation's (accounts.revocation).
INTERNAL_ERROR = "internal_error"
LOG_FULL = "log_full"
INSTANCE_LOST = "instance_lost"
_GATEWAY_ERRORS = (INTERNAL_ERROR, LOG_FULL, INSTANCE_LOST)
_REVOCATIONS = (
    revocation.TOKEN_REVOKED,
    revocation.TOKEN_EXPIRED,
    revocation.APP_DISABLED,
    revocation.APP_DELETED,
)


# A rejected record's error class: the code of the refusal its client got.
REFUSALS = (
    "model_not_allowed",
    "model_not_found",
    "model_not_supported",
    "max_tokens_exceeded",
    "rate_limit_exceeded",
    "insufficient_quota",
    "shutting_down",
)


def error_classes() -> list[str]:
    """Every error class a record can carry (what the audit changelist offers)."""
    found: set[str] = set()
    kinds: list[type[UpstreamError]] = [UpstreamError]
    while kinds:
        kind = kinds.pop()
        kinds.extend(kind.__subclasses__())
        if "error_class" in vars(kind):  # a grouping class (TargetFailure) has none
            found.add(kind.error_class)
    return sorted(found.union(_GATEWAY_ERRORS, _REVOCATIONS, REFUSALS))


def new_audit(
    request_id: str,
    protocol: str,
    public_model: str,
    identity: AppIdentity,
    client_ip: str | None,
    *,
    messages: list[Any],
    params: dict[str, Any],
) -> AuditEntry:
    """The audit entry a request starts with: who asked, from where, for what."""
    return AuditEntry(
        request_id=request_id,
        protocol=protocol,
        public_model=public_model,
        started_at=time.time(),
        app_id=identity.app_id,
        app_name=identity.name,
        token_id=identity.token_id,
        staff_user_id=identity.staff_user_id,
        staff_username=identity.staff_username,
        client_ip=client_ip,
        request_messages=messages,
        request_params=params,
        redact=identity.redact,
        instance=instance_id(),
    )


def write_ahead(audit: AuditEntry) -> None:
    """Submit the record of a request just accepted, as ``in_progress``.

    A copy: the caller goes on filling its own entry, and its final
    submission completes the record. Should this instance die first, another
    one completes it as ``interrupted`` (``streaming.core.recovery``).
    """
    audit_submit(replace(audit, outcome="in_progress", attempts=[], tool_calls=[], usage={}))
    _write_soon()


_soon: asyncio.TimerHandle | None = None  # the writer's wake-up a write-ahead asked for


def _write_soon() -> None:
    """Wake the writer within SLUICE_AUDIT_WRITE_AHEAD_SECONDS: a gateway killed
    after that has handed the write-ahead to the audit process, which stores it
    (the writer's own period, 0.25 s, is the window a SIGKILL could lose it in).

    One wake-up per period at most, whatever the request rate: each takes the
    GIL from the event loop (``audit.writer``).
    """
    global _soon
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        audit_wake()  # not on an event loop (a management command): at once
        return
    if _soon is not None and _soon.when() > loop.time() and not _soon.cancelled():
        return  # one is due on this loop
    _soon = loop.call_later(settings.SLUICE_AUDIT_WRITE_AHEAD_SECONDS, audit_wake)


def record_refusal(audit: AuditEntry, status: int, code: str, message: str) -> None:
    """Store ``audit`` as ``rejected``: its request was refused (a policy, a
    limit, a model that is not there) before anything was generated.

    Never at the cost of a served request's record: queued only while the
    audit queue has room to spare (``audit.writer``), else counted.
    """
    audit.outcome = "rejected"
    audit.status_code = status
    audit.error_class = code
    audit.error_message = message[:500]
    audit.ended_at = time.time()
    audit.duration_ms = (audit.ended_at - audit.started_at) * 1000
    audit_submit(audit, spare=True)


def record_failure(audit: AuditEntry, error: UpstreamError) -> Failure:
    """Note ``error`` in ``audit``; the failure a client sees before any output.

    A status passed on to the client (its request's fault, a rate limit)
    carries the upstream's own words; any other is the gateway's 502.
    """
    audit.outcome = "upstream_error"
    audit.error_class = error.error_class
    audit.error_message = error.message[:500]
    status = error.client_status
    audit.status_code = status
    said = error.body.get("error") if isinstance(error.body, dict) else None
    if status != 502 and isinstance(said, dict):
        return Failure(
            status,
            str(said.get("message") or error.message),
            code=_plain(said.get("code")),
            type=_plain(said.get("type")) or "",
            param=_plain(said.get("param")),
        )
    message = f"upstream failed: {error.message}"
    return Failure(status, message, code=error.error_class, type="upstream_error")


def _plain(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def served_headers(audit: AuditEntry) -> dict[str, str]:
    """``X-Sluice-*`` headers: the target that answered, the attempts, fallback, continuation."""
    attempts = audit.attempts
    if not attempts:
        return {}
    served, first = attempts[-1], attempts[0]
    fell_back = (served.provider, served.upstream_model) != (first.provider, first.upstream_model)
    return {
        "X-Sluice-Provider": served.provider,
        "X-Sluice-Model": served.upstream_model,
        "X-Sluice-Attempts": str(len(attempts)),
        "X-Sluice-Fallback": "true" if fell_back else "false",
        "X-Sluice-Continued": "true" if audit.continued else "false",
    }
