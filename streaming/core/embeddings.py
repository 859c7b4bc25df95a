"""EmbeddingCall: one ``POST /v1/embeddings`` request, routed, audited and counted.

There is nothing to stream or resume: the call runs in its request, and its
audit entry is submitted once it ends, whatever the outcome. The audit keeps
the inputs, not the vectors (their count and dimensions are noted instead).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from accounts.identity import AppIdentity
from audit.records import AuditEntry
from audit.writer import audit_submit
from streaming.core.admission import Admission
from streaming.core.events import Failure
from streaming.core.outcome import (
    INTERNAL_ERROR,
    new_audit,
    record_failure,
    served_headers,
    write_ahead,
)
from streaming.observability import metrics
from streaming.observability.logging import bind
from streaming.providers import EmbeddingRequest, Embeddings, UpstreamError
from streaming.routing.embeddings import route_embeddings
from streaming.routing.routes import ResolvedRoute

logger = logging.getLogger("sluice.embeddings")


class EmbeddingCall:
    """One embeddings request; ``run()`` answers it, or leaves ``failure`` set."""

    def __init__(
        self,
        *,
        identity: AppIdentity,
        request: EmbeddingRequest,
        route: ResolvedRoute,
        client_ip: str | None,
        admission: Admission | None = None,
    ) -> None:
        self.id = "embd-" + secrets.token_hex(12)
        self.admission = admission  # settled when the call ends
        self.request = request
        self.route = route
        self.failure: Failure | None = None
        self.audit = new_audit(
            self.id,
            "embeddings",
            request.model,
            identity,
            client_ip,
            messages=request.inputs,
            params=dict(request.params),
        )

    @property
    def route_name(self) -> str:
        return self.route.model

    @property
    def app_name(self) -> str:
        return self.audit.app_name

    def served_headers(self) -> dict[str, str]:
        """``X-Sluice-Request-Id``, the headers that say which target answered,
        and what is left of the app's limits."""
        limits = self.admission.headers() if self.admission is not None else {}
        return {"X-Sluice-Request-Id": self.id, **served_headers(self.audit), **limits}

    async def run(self) -> Embeddings | None:
        """The embeddings, or None with ``failure`` set; a cancel (the client left) is
        recorded and raised."""
        audit = self.audit
        bind(embedding_id=self.id)
        write_ahead(audit)
        result = None
        try:
            result = await route_embeddings(self.route, self.request, audit)
            audit.outcome, audit.status_code = "completed", 200
            audit.usage = dict(result.usage)
            audit.response_text = _summary(result)
        except UpstreamError as error:
            self.failure = record_failure(audit, error)
        except asyncio.CancelledError:
            audit.outcome = "client_disconnected"
            raise
        except Exception:
            logger.exception("embeddings %s failed", self.id)
            audit.outcome, audit.error_class = "upstream_error", INTERNAL_ERROR
            audit.status_code = 500
            self.failure = Failure(
                500, "internal error", code="internal_error", type="server_error"
            )
        finally:
            self._end(len(result.vectors) if result else 0)
        return result

    def _end(self, inputs: int) -> None:
        audit = self.audit
        audit.ended_at = time.time()
        audit.duration_ms = (audit.ended_at - audit.started_at) * 1000
        if audit.attempts:
            audit.provider = audit.attempts[-1].provider
            audit.upstream_model = audit.attempts[-1].upstream_model
            answered = audit.attempts[-1].first_token_at
            if answered is not None and audit.outcome == "completed":
                audit.ttft_ms = (answered - audit.started_at) * 1000
        audit_submit(audit)
        if self.admission is not None:
            self.admission.settle(audit)
        metrics.embedding_ended(self, inputs)
        logger.info("embeddings end", extra={"fields": _end_fields(audit, inputs)})


def _summary(result: Embeddings) -> str:
    """What the audit says of the answer in place of the vectors."""
    count, dimensions = len(result.vectors), result.dimensions
    form = "base64" if result.vectors and isinstance(result.vectors[0], str) else "float"
    return f"{count} embedding{'s' if count != 1 else ''} of {dimensions} dimensions ({form})"


def _end_fields(audit: AuditEntry, inputs: int) -> dict[str, object]:
    return {
        "event": "embeddings.end",
        "request_id": audit.request_id,
        "app": audit.app_name,
        "model": audit.public_model,
        "provider": audit.provider or None,
        "outcome": audit.outcome,
        "error_class": audit.error_class or None,
        "status": audit.status_code,
        "inputs": inputs,
        "attempts": len(audit.attempts),
        "duration_ms": round(audit.duration_ms or 0.0, 2),
    }
