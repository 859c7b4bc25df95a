"""Structured logs: request and stream ids on every line about a request.

``bind(request_id=...)`` puts fields in a context variable, so every line
logged by that task, and by the tasks it starts (a stream's generation
inherits its request's context), carries them. A line's own fields go in
``extra={"fields": {...}}``. ``ContextFilter`` copies both onto the record;
``JsonFormatter`` writes one JSON object a line (``SLUICE_LOG_FORMAT=json``),
``TextFormatter`` appends ``key=value`` pairs to the usual line.

Fields are chosen by the code that logs, never dumped from a request: no
secret, token or (unless ``SLUICE_LOG_CONTENT``) message content.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextvars import ContextVar
from typing import Any

import orjson
from django.conf import settings

_context: ContextVar[dict[str, Any] | None] = ContextVar("sluice_log_context", default=None)


def bind(**fields: Any) -> None:
    """Add ``fields`` to every line this task (and the tasks it starts) logs."""
    _context.set({**(_context.get() or {}), **fields})


# (logger name, message) -> [when it was last logged, how many were held back since]
_throttled: dict[tuple[str, str], list[float]] = {}


def warn_throttled(logger: logging.Logger, msg: str, *args: Any, every: float = 60.0) -> None:
    """``logger.warning``, at most once every ``every`` seconds for this message.

    For a dependency that is down (Redis): its warnings come with every request
    and every second, and would bury everything else in the log. The next line
    let through says how many were held back.
    """
    key = (logger.name, msg)
    now = time.monotonic()
    entry = _throttled.get(key)
    if entry is not None and now - entry[0] < every:
        entry[1] += 1
        return
    _throttled[key] = [now, 0]
    if entry is not None and entry[1]:
        msg += " (%d more held back in the last %d s)"
        args = (*args, int(entry[1]), round(now - entry[0]))
    logger.warning(msg, *args)


def bound() -> dict[str, Any]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Puts the bound context and the line's own ``fields`` into ``record.sluice``."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, "fields", None)
        own = own if isinstance(own, dict) else {}
        record.sluice = {**(_context.get() or {}), **own}
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "sluice", None)
    if fields is None:  # a handler without the filter
        fields = getattr(record, "fields", None) or {}
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The usual line, with the fields appended as ``key=value``."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        head, sep, tail = text.partition("\n")  # keep a traceback below the line
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if value is None:
        return "-"
    text = str(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


def stream_end_fields(session: Any) -> dict[str, Any]:
    """The fields of the one line logged when a stream ends (content only if
    SLUICE_LOG_CONTENT)."""
    audit = session.audit
    attempts = audit.attempts
    answered = next((a for a in reversed(attempts) if a.first_token_at is not None), None)
    fields: dict[str, Any] = {
        "event": "stream.end",
        "stream_id": session.id,
        "app": audit.app_name,
        "app_id": audit.app_id,
        "model": audit.public_model,
        "provider": audit.provider or None,
        "upstream_model": audit.upstream_model or None,
        "transport": audit.protocol,
        "outcome": audit.outcome,
        "error_class": audit.error_class or None,
        "status": audit.status_code,
        "ttft_ms": _round(audit.ttft_ms),
        "upstream_ttft_ms": _round(
            (answered.first_token_at - answered.started_at) * 1000 if answered else None
        ),
        "duration_ms": _round(audit.duration_ms),
        "tokens": sum(a.tokens for a in attempts),
        "attempts": len(attempts),
        "resumes": audit.resumes,
        "finish_reason": audit.finish_reason or None,
    }
    if settings.SLUICE_LOG_CONTENT:
        fields["prompt"] = audit.request_messages
        fields["response"] = audit.response_text
    return fields


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` when it is a short plain token, else a new id."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= 64 and all(c.isalnum() or c in "._-" for c in given):
                return given
    return secrets.token_hex(8)
