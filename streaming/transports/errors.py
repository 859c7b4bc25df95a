"""OpenAI-shaped API errors: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

from typing import Any

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
