"""Protocol-neutral stream events: what a stream log holds, whatever its readers speak.

A log entry is ``(seq, kind, payload)``. The payload is JSON, already encoded
where an encoder splices it as is (a text delta is a JSON string with its
quotes), so relaying a token re-encodes nothing. Each inbound protocol renders
the events for its readers (streaming.transports.encoders): OpenAI chat
chunks are one rendering among several.

Kinds and payloads:

- ``START``: ``{"model": ...}``, the model answering; once before the first
  output, and again (``"continued": true``) when another model carries the
  answer on after a failure.
- ``TEXT``: a JSON string, a piece of the answer.
- ``REASONING``: a JSON string, a piece of the model's reasoning.
- ``TOOL_CALL``: ``{"index", "id"?, "name"?, "arguments"?}``, a piece of a tool call.
- ``FINISH``: a JSON string, why the answer ended (stop, length, tool_calls,
  content_filter).
- ``USAGE``: the token counts (``prompt_tokens``, ``completion_tokens``,
  ``total_tokens`` and their details).
- ``ERROR``: a ``Failure``: the stream failed.
- ``END``: empty; nothing follows.
- ``REFUSAL``: a JSON string, a piece of a refusal (OpenAI's structured outputs).
- ``LOGPROBS``: the log probabilities of the text just before it, in OpenAI's
  shape (``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``),
  for clients that asked for them.

Kinds are numbered once and for all: a log in Redis outlives the process that
wrote it, and another instance reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

START = 0
TEXT = 1
REASONING = 2
TOOL_CALL = 3
FINISH = 4
USAGE = 5
ERROR = 6
END = 7
REFUSAL = 8
LOGPROBS = 9

Entry = tuple[int, int, bytes]  # (seq, kind, payload)

# OpenAI's error types, by status: every inbound protocol maps from these.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request or a stream failed, as every protocol's error needs it."""

    status: int
    message: str
    code: str | None = None
    type: str = ""
    param: str | None = None

    def __post_init__(self) -> None:
        if not self.type:
            object.__setattr__(self, "type", error_type(self.status))

    def payload(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_payload(cls, payload: bytes) -> Failure:
        return cls(**orjson.loads(payload))

    def openai_error(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "code", "param"}}``, as OpenAI writes it."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


@dataclass(frozen=True, slots=True)
class Inbound:
    """The API a stream was asked for in (``chat``, ``responses``, ``messages``) and
    what its encoders need from the request (``echo``, JSON): a reader on any
    instance renders the stream in the protocol it was started in."""

    api: str = "chat"
    echo: bytes = b"{}"


CHAT = Inbound()


def start_event(model: str, *, continued: bool = False) -> bytes:
    return orjson.dumps({"model": model, "continued": True} if continued else {"model": model})


def events_of(body: dict[str, Any], *, usage: bool) -> Iterator[tuple[int, bytes]]:
    """The neutral events in one chunk body from a provider adapter (see
    ``ProviderAdapter``); its usage only with ``usage``. The role opener
    carries nothing of its own: ``START`` stands for it."""
    for choice in body.get("choices") or ():
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                yield TEXT, orjson.dumps(content)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                yield REASONING, orjson.dumps(reasoning)
            for call in delta.get("tool_calls") or ():
                yield TOOL_CALL, orjson.dumps(_tool_call(call))
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):
                yield REFUSAL, orjson.dumps(refusal)
        logprobs = choice.get("logprobs")
        if logprobs and isinstance(logprobs, dict):
            yield LOGPROBS, orjson.dumps(logprobs)
        reason = choice.get("finish_reason")
        if reason:
            yield FINISH, orjson.dumps(reason)
    if usage and body.get("usage"):
        yield USAGE, orjson.dumps(body["usage"])


def _tool_call(fragment: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"index": fragment.get("index", 0)}
    if fragment.get("id"):
        call["id"] = fragment["id"]
    function = fragment.get("function") or {}
    if function.get("name"):
        call["name"] = function["name"]
    if function.get("arguments"):
        call["arguments"] = function["arguments"]
    return call
