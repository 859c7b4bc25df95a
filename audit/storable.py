"""Values as PostgreSQL can store them: no character of the input is dropped.

PostgreSQL's ``text`` cannot hold U+0000 and ``jsonb`` rejects ``\\u0000``,
yet JSON (and so a chat request, an upstream's answer or its error) may
carry it. The audit stores it escaped, as the six characters ``\\u0000``,
in every text and JSON field; everything else is stored as given.
"""

from __future__ import annotations

from typing import Any

import orjson

NUL = "\x00"
ESCAPED_NUL = "\\u0000"
# Past this depth a JSON value is stored as its text (the schema admits 32
# levels; this only bounds what came from elsewhere, e.g. an upstream).
MAX_DEPTH = 64


def storable_text(value: str) -> str:
    return value.replace(NUL, ESCAPED_NUL) if NUL in value else value


def storable_json(value: Any) -> Any:
    """``value`` with every NUL in its strings and keys escaped."""
    try:
        # The common case, checked in C: nothing to escape.
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except (TypeError, orjson.JSONEncodeError):
        pass  # too deep for orjson, or not JSON: rebuilt below
    return _escape(value, 0)


def _escape(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return storable_text(repr(value)[:10_000])
    if isinstance(value, dict):
        return {storable_text(str(k)): _escape(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape(v, depth + 1) for v in value]
    return value
