"""What a request is charged for: each attempt's usage and cost, summed.

An attempt is charged what its upstream reported (OpenAI's usage chunk,
Anthropic's ``message_start`` and ``message_delta``), field by field. Where it
reported nothing, because the stream was cut short (the client cancelled,
nobody read it, the upstream died, the answer went on on another target), the
attempt is charged an estimate of what it generated:

- completion tokens: the larger of the number of output deltas (text,
  reasoning, refusal and tool-call fragments) and their characters over 4,
  rounded up. OpenAI-style upstreams send about one token a delta (the count
  is exact there); Anthropic and batching servers send several tokens a
  delta, where the characters are the closer count.
- prompt tokens: the characters of the attempt's own request (message text,
  tool calls, tool definitions) over 4, rounded up, plus 3 a message and 3
  for the reply (the chat format's overhead). A continuation is charged its
  own request: the conversation, the partial answer and the instruction.

What counts is what the upstream sent, before the continuation trims a
repeated overlap: that was generated too. An attempt that failed before its
upstream sent anything (refused, an error status, no first byte in time) is
charged nothing. The request's totals are set from its attempts (never added
to), so settling again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from audit.records import AttemptEntry, AuditEntry
from streaming.providers import ChatRequest, EmbeddingRequest, Price

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def _tokens_of_chars(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_chars(part.get("text")) for part in content if isinstance(part, dict))
    return 0


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """The prompt tokens of ``request``, estimated (see the module's docstring)."""
    chars = 0
    for message in request.messages:
        chars += _text_chars(message.get("content"))
        for call in message.get("tool_calls") or ():
            chars += len(orjson.dumps(call.get("function") or {}))
    tools = request.params.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    overhead = TOKENS_PER_MESSAGE * len(request.messages) + TOKENS_PER_REPLY
    return _tokens_of_chars(chars) + overhead


def estimate_embedding_tokens(request: EmbeddingRequest) -> int:
    """The tokens of an embeddings request whose upstream reported none: a token
    array counts its tokens, a text its characters over 4."""
    return sum(
        len(item) if isinstance(item, list) else _tokens_of_chars(len(str(item)))
        for item in request.inputs
    )


def estimate_completion_tokens(deltas: int, chars: int) -> int:
    """The completion tokens of ``deltas`` output deltas holding ``chars`` characters."""
    return max(deltas, _tokens_of_chars(chars))


def _output_chars(delta: dict[str, Any]) -> int:
    chars = 0
    for name in ("content", "reasoning_content", "reasoning", "refusal"):
        value = delta.get(name)
        if value and isinstance(value, str):
            chars += len(value)
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        chars += len(function.get("name") or "") + len(function.get("arguments") or "")
    return chars


def _reported(usage: dict[str, Any], name: str, detail: str = "") -> int | None:
    value = usage.get(name)
    if detail:
        value = value.get(detail) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class AttemptMeter:
    """Counts one attempt's output as its upstream sends it; ``charge`` fills its record."""

    answered: bool = False
    deltas: int = 0
    chars: int = 0
    reported: dict[str, Any] | None = None

    def observe(self, body: dict[str, Any]) -> None:
        """One chunk body as the adapter yielded it."""
        self.answered = True
        usage = body.get("usage")
        if usage:
            self.reported = usage
        for choice in body.get("choices") or ():
            delta = choice.get("delta")
            if delta:
                chars = _output_chars(delta)
                if chars:
                    self.deltas += 1
                    self.chars += chars

    def charge(self, record: AttemptEntry, request: ChatRequest, price: Price | None) -> None:
        """Set ``record``'s usage and cost: reported, else estimated; nothing if unanswered."""
        if not self.answered:
            return
        usage = self.reported or {}
        prompt = _reported(usage, "prompt_tokens")
        completion = _reported(usage, "completion_tokens")
        record.prompt_tokens = estimate_prompt_tokens(request) if prompt is None else prompt
        record.completion_tokens = (
            estimate_completion_tokens(self.deltas, self.chars)
            if completion is None
            else completion
        )
        record.cached_tokens = _reported(usage, "prompt_tokens_details", "cached_tokens") or 0
        record.reasoning_tokens = (
            _reported(usage, "completion_tokens_details", "reasoning_tokens") or 0
        )
        record.cost_usd = attempt_cost(record, price)


def attempt_cost(record: AttemptEntry, price: Price | None) -> float:
    """USD for ``record``'s usage at ``price`` (0 without a price)."""
    if price is None:
        return 0.0
    return price.cost(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cached_tokens=record.cached_tokens,
    )


def settle(audit: AuditEntry) -> None:
    """Set the request's usage and cost to the sum of its attempts'."""
    attempts = audit.attempts
    audit.prompt_tokens = sum(a.prompt_tokens for a in attempts)
    audit.completion_tokens = sum(a.completion_tokens for a in attempts)
    audit.cached_tokens = sum(a.cached_tokens for a in attempts)
    audit.reasoning_tokens = sum(a.reasoning_tokens for a in attempts)
    audit.cost_usd = sum(a.cost_usd for a in attempts)
