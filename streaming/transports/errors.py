"""OpenAI-shaped API errors: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

from typing import Any

from gateway.database import MESSAGE, RETRY_AFTER
from streaming.core.events import Failure


class ApiError(Exception):
    """An error the client gets as an OpenAI-style JSON body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        type: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.type = type  # empty: the status's usual type

    def failure(self) -> Failure:
        return Failure(self.status, self.message, code=self.code, type=self.type, param=self.param)

    def body(self) -> dict[str, Any]:
        return self.failure().openai_error()


def database_unavailable() -> ApiError:
    """What needs the database and cannot reach it: 503, never a 500."""
    return ApiError(
        503,
        MESSAGE,
        code="database_unavailable",
        type="server_error",
        headers={"Retry-After": RETRY_AFTER},
    )


def audit_unavailable() -> ApiError:
    """The audit spool is full and SLUICE_AUDIT_SPOOL_FULL=refuse: a request
    accepted now would leave no record, so none is."""
    return ApiError(
        503,
        "The audit spool is full (the database has been unreachable too long): "
        "requests are refused until it drains.",
        code="audit_unavailable",
        type="server_error",
        headers={"Retry-After": "30"},
    )
