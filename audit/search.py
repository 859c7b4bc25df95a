"""The text that full-text search sees of a record: its prompts and its answer.

``search_text_of`` is computed when a record is written (audit.services), from
the values as stored, so search finds what the record holds and nothing that
was redacted before storage. It is derived data: the hash chain leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# PostgreSQL refuses a tsvector over 1 MiB (and with it the row, since the
# index is computed on insert), which this stays far below. It also bounds
# what indexing costs a write (docs/audit-search.md): parsing and the GIN
# insert took about 0.3 ms per 1.2 KB record here, so ~8 ms at this cap.
SEARCH_TEXT_LIMIT = 32_000


def search_text_of(request_messages: Any, response_text: str, tool_calls: Any) -> str:
    """The response, the tool calls' names and arguments, then the request's
    messages newest first (a long conversation's latest turn is kept when the
    text is cut at ``SEARCH_TEXT_LIMIT``).

    Messages are OpenAI chat messages (content a string or a list of parts,
    tool results as ``role: tool``); an embeddings request's inputs are
    strings. Anything else that is not text is left out.
    """
    parts = [response_text, *_tool_call_texts(tool_calls)]
    if isinstance(request_messages, list):
        for message in reversed(request_messages):
            parts.extend(_message_texts(message))
    text = "\n".join(part for part in parts if part)
    return text[:SEARCH_TEXT_LIMIT]


def _message_texts(message: Any) -> Iterator[str]:
    if isinstance(message, str):  # an embeddings input
        yield message
        return
    if not isinstance(message, dict):
        return
    yield from content_texts(message.get("content"))
    yield from _tool_call_texts(message.get("tool_calls"))


def content_texts(content: Any) -> Iterator[str]:
    """The texts of a message's content: the string, or its parts' texts."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _tool_call_texts(calls: Any) -> Iterator[str]:
    if not isinstance(calls, list):
        return
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    yield function[key]
