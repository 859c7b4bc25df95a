"""A request refused after its app is known and its body read leaves a record.

Its outcome is ``rejected``, its status and error class what the client was
answered (403 ``model_not_allowed``, 404 ``model_not_found``, 429
``rate_limit_exceeded`` or ``insufficient_quota``, ...), and its request id
the one the refusal's ``X-Sluice-Request-Id`` header (a WebSocket error's
``record_id``) names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from accounts.identity import AppIdentity
from streaming.core.outcome import new_audit, record_refusal
from streaming.core.session import new_stream_id
from streaming.transports.errors import ApiError

RECORD_HEADER = "X-Sluice-Request-Id"


@contextmanager
def recorded_if_refused(
    identity: AppIdentity,
    protocol: str,
    model: str,
    client_ip: str | None,
    *,
    messages: list[Any],
    params: dict[str, Any],
    id_prefix: str = "chatcmpl-",
) -> Iterator[None]:
    """Record the ApiError the block raises as a rejected request, then re-raise it."""
    try:
        yield
    except ApiError as refused:
        request_id = new_stream_id(id_prefix)
        audit = new_audit(
            request_id, protocol, model, identity, client_ip, messages=messages, params=params
        )
        record_refusal(audit, refused.status, refused.code or "refused", refused.message)
        refused.headers[RECORD_HEADER] = request_id
        raise
