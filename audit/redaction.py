"""Redaction: an app's patterns replaced in an audit entry before it is stored.

An entry carries its app's patterns in ``redact`` (``email``, ``card``, or
``re:<expression>``; see accounts' ``AppPolicy.redaction_specs``).
``redact_entry`` replaces every match in the request's messages and
parameters, the response text, the tool calls and the error messages (of the
record and of each attempt) with a marker such as ``[REDACTED:email]``, adds
the number of matches to ``redactions`` and clears ``redact``: applying it
twice changes nothing. What matched is never kept or logged.

It runs where entries are stored (the audit writer's thread or process),
never on the event loop; each app's patterns are compiled once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any

from audit.records import AttemptEntry, AuditEntry

logger = logging.getLogger(__name__)

# Each starts only where a run of its characters starts (the look-behind), so
# a long run without a match costs one scan, not one per position.
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# 13 to 19 digits, optionally grouped by single spaces or dashes.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number passes."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern and its marker; ``check`` rejects a match (a card failing Luhn)."""

    pattern: re.Pattern[str]
    marker: str
    check: Callable[[str], bool] | None = None


def _card_check(text: str) -> bool:
    return luhn_valid(re.sub(r"[ -]", "", text))


@lru_cache(maxsize=1024)
def compile_rules(specs: tuple[str, ...]) -> tuple[Rule, ...]:
    """The rules for one app's specs, compiled once; a bad custom one is skipped, logged."""
    rules = []
    for spec in specs:
        if spec == "email":
            rules.append(Rule(EMAIL, "[REDACTED:email]"))
        elif spec == "card":
            rules.append(Rule(CARD, "[REDACTED:card]", _card_check))
        elif spec.startswith("re:"):
            try:
                rules.append(Rule(re.compile(spec[3:]), "[REDACTED:custom]"))
            except re.error:
                # Validated when saved; one stored before that rule is not fatal.
                logger.warning("audit redaction: an invalid custom pattern was skipped")
        else:
            logger.warning("audit redaction: unknown pattern kind skipped")
    return tuple(rules)


@dataclass(slots=True)
class _Redactor:
    rules: tuple[Rule, ...]
    count: int = field(default=0)

    def text(self, value: str) -> str:
        for rule in self.rules:
            value = rule.pattern.sub(partial(self._replace, rule=rule), value)
        return value

    def _replace(self, match: re.Match[str], rule: Rule) -> str:
        if rule.check is not None and not rule.check(match.group(0)):
            return match.group(0)
        self.count += 1
        return rule.marker

    def json(self, value: Any) -> Any:
        """Strings anywhere in a JSON value (keys too: a prompt could be a key)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value

    def attempt(self, attempt: AttemptEntry) -> AttemptEntry:
        if not attempt.error_message:
            return attempt
        return replace(attempt, error_message=self.text(attempt.error_message))


def redact_text(text: str, rules: tuple[Rule, ...]) -> str:
    """``text`` with ``rules`` applied."""
    return _Redactor(rules).text(text)


def redact_json(value: Any, rules: tuple[Rule, ...]) -> Any:
    """Every string in a JSON value with ``rules`` applied."""
    return _Redactor(rules).json(value)


# What ``HeldText`` keeps back: a match no longer than this is never shown in part.
HOLD_BACK = 1024


class HeldText:
    """Text that arrives in pieces (a stream being watched), released redacted.

    The last ``HOLD_BACK`` characters wait for what follows, and a release never
    ends inside a match: a match shorter than that (an email, a card number) is
    released whole and replaced, never split across two releases with its start
    shown. ``flush`` releases the rest when the text ends.
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self._rules = rules
        self._held = ""

    def add(self, piece: str) -> str:
        held = self._held + piece
        cut = self._safe_cut(held, len(held) - HOLD_BACK)
        if cut <= 0:
            self._held = held
            return ""
        self._held = held[cut:]
        return redact_text(held[:cut], self._rules)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return redact_text(held, self._rules) if held else ""

    def _safe_cut(self, text: str, cut: int) -> int:
        """``cut``, moved back to the start of any match it would split."""
        moved = cut > 0
        while moved:
            moved = False
            for rule in self._rules:
                for match in rule.pattern.finditer(text):
                    if match.start() >= cut:
                        break
                    if match.end() > cut:
                        cut, moved = match.start(), True
                        break
        return cut


def redact_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` with its app's patterns replaced (a copy), or itself when it has none."""
    if not entry.redact:
        return entry
    redactor = _Redactor(compile_rules(tuple(entry.redact)))
    return replace(
        entry,
        request_messages=redactor.json(entry.request_messages),
        request_params=redactor.json(entry.request_params),
        response_text=redactor.text(entry.response_text),
        tool_calls=redactor.json(entry.tool_calls),
        error_message=redactor.text(entry.error_message),
        attempts=[redactor.attempt(a) for a in entry.attempts],
        redact=(),
        redactions=entry.redactions + redactor.count,
    )
