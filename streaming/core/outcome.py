"""How a request ended, as its client is told: the failure it gets, and the
headers that say which target served it and how it came to."""

from __future__ import annotations

from typing import Any

from audit.records import AuditEntry
from streaming.core.events import Failure
from streaming.providers import UpstreamError


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
