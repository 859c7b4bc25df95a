"""Mid-stream continuation: carrying on a text answer on another target.

No assistant prefill (newer Anthropic models reject a trailing assistant
message): the continuation request is the original conversation, the partial
answer as an assistant turn, then a user turn asking to go on. Models often
repeat a few words anyway, so ``OverlapTrimmer`` drops the longest suffix of
the partial answer that the new output starts with. All plain code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streaming.providers import ChatRequest

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue exactly where you stopped, "
    "without repeating anything and without any preamble."
)
OVERLAP_WINDOW = 2000  # characters of the partial answer an overlap may span


def continuation_request(request: ChatRequest, partial: str, tokens_used: int) -> ChatRequest:
    """The request that asks another target to carry on after ``partial``."""
    if not partial:
        return request
    messages = [
        *request.messages,
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]
    params = dict(request.params)
    for name in ("max_tokens", "max_completion_tokens"):
        limit = params.get(name)
        if isinstance(limit, int):
            params[name] = max(1, limit - tokens_used)
    return ChatRequest(
        model=request.model,
        messages=messages,
        params=params,
        stream=request.stream,
        include_usage=request.include_usage,
    )


class OverlapTrimmer:
    """Feed the new output's text; get back what to show, minus the repeated part.

    Text is held back only while it could still be a repeat of the partial
    answer's end, usually a token or two.
    """

    def __init__(self, partial: str) -> None:
        self._tail = partial[-OVERLAP_WINDOW:]
        self._held = ""
        self._decided = not self._tail

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._held += text
        # Some longer suffix of the partial could still start with what we hold.
        if not self._held or self._held in self._tail[:-1]:
            return ""
        return self._decide()

    def flush(self) -> str:
        """The new output ended (or something other than text came): decide now."""
        return "" if self._decided else self._decide()

    def _decide(self) -> str:
        held, tail = self._held, self._tail
        overlap = next(
            (k for k in range(min(len(held), len(tail)), 0, -1) if tail.endswith(held[:k])), 0
        )
        self._decided = True
        self._held = ""
        return held[overlap:]


class TextPieces:
    """Text that arrives a piece (a token) at a time.

    Every ``PIECES_PER_BLOCK`` pieces are joined into one string: thousands of
    small string objects would share the allocator's arenas with long-lived
    objects and keep a long stream's memory from the OS (see streaming.core.log).
    """

    PIECES_PER_BLOCK = 256
    __slots__ = ("_blocks", "_pieces")

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._pieces: list[str] = []

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) >= self.PIECES_PER_BLOCK:
            self._blocks.append("".join(self._pieces))
            self._pieces = []

    def text(self) -> str:
        return "".join(self._blocks) + "".join(self._pieces)


@dataclass(slots=True)
class StreamProgress:
    """What the client has been sent so far, across attempts."""

    parts: TextPieces = field(default_factory=TextPieces)  # read only when a continuation needs it
    chunks: int = 0
    tool_call_started: bool = False
    finished: bool = False

    @property
    def text(self) -> str:
        return self.parts.text()

    def observe(self, body: dict[str, Any]) -> None:
        self.chunks += 1
        choices = body.get("choices")
        if not choices:
            return
        delta = choices[0].get("delta")
        if delta:
            content = delta.get("content")
            if content:
                self.parts.append(content)
            if delta.get("tool_calls"):
                self.tool_call_started = True
        for choice in choices:
            if choice.get("finish_reason"):
                self.finished = True

    @property
    def started(self) -> bool:
        return self.chunks > 0

    def can_continue(self) -> bool:
        return self.started and not self.tool_call_started and not self.finished


class ContinuationFilter:
    """Rewrites a continuing attempt's chunks so the client's stream reads as one.

    Its usage is the whole answer's: ``earlier_tokens``, what the attempts before
    generated for the client, is added to the completion tokens it reports.
    """

    def __init__(self, partial: str, earlier_tokens: int = 0) -> None:
        self.trimmer = OverlapTrimmer(partial)
        self.earlier_tokens = earlier_tokens

    def feed(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one upstream chunk (zero, one or two)."""
        usage = body.get("usage")
        if usage and self.earlier_tokens:
            body = {**body, "usage": self._whole(usage)}
        choices = body.get("choices") or []
        if not choices:
            return [c for c in (self._text_chunk(self.trimmer.flush()), body) if c]
        choice = choices[0]
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if k != "role"}
        out: list[dict[str, Any]] = []
        if "content" in delta:
            delta["content"] = self.trimmer.feed(delta["content"] or "")
            if not delta["content"]:
                del delta["content"]
        if delta.get("tool_calls") or choice.get("finish_reason"):
            out.append(self._text_chunk(self.trimmer.flush()))
        if delta or choice.get("finish_reason") or body.get("usage"):
            out.append({**body, "choices": [{**choice, "delta": delta}, *choices[1:]]})
        return [chunk for chunk in out if chunk]

    def flush(self) -> list[dict[str, Any]]:
        return [chunk for chunk in [self._text_chunk(self.trimmer.flush())] if chunk]

    def _whole(self, usage: dict[str, Any]) -> dict[str, Any]:
        whole = dict(usage)
        for name in ("completion_tokens", "total_tokens"):
            if isinstance(whole.get(name), int):
                whole[name] += self.earlier_tokens
        return whole

    @staticmethod
    def _text_chunk(text: str) -> dict[str, Any]:
        if not text:
            return {}
        return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
