"""Secrets out of upstream text, before Sluice passes it on, sans I/O.

An upstream's error body or message may echo what it was sent (a careless
proxy prints the request headers) or quote a key. Whatever an upstream says
goes to the client, the audit, the breaker's "last error" on the provider
page, the logs and Redis: so it is scrubbed once, where it enters Sluice (the
provider layer builds every UpstreamError through a Scrubber), and every
later consumer gets clean text.

Removed: the target's key and every value the upstream request carried in an
auth header, verbatim; and anything shaped like a credential: ``Bearer
<token>``, ``sk-...``/``sk-ant-...`` keys, and long key-like values after a
``key``/``token``/``secret``/``password``/``authorization`` label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"
AUTH_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "api-key")
# Shorter values are not keys (and replacing them would garble ordinary text).
MIN_SECRET_CHARS = 8
# Deeper JSON than this is not kept at all (an error body has no reason to nest).
MAX_DEPTH = 16
# Longer upstream strings are cut: nobody reads that much of an error, and
# scrubbing costs time in proportion.
MAX_CHARS = 20_000

_CHARS = r"[A-Za-z0-9._~+/=-]"
_SHAPES = re.compile(
    # A bearer credential, in a header echo or a sentence.
    rf"(?i)(?P<bearer>\b(?:bearer|basic)\s+){_CHARS}{{8,}}"
    # OpenAI and Anthropic style keys, wherever they appear.
    rf"|\bsk-(?:ant-)?[A-Za-z0-9_-]{{8,}}"
    # key=..., "api_key": "...", x-api-key: ..., client_secret=...
    rf"|(?i:(?P<label>\b[\w-]{{0,40}}(?:key|token|secret|password|authorization)"
    rf"[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)){_CHARS}{{16,}}"
)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("label") or ""
    return prefix + REDACTED


class Scrubber:
    """Removes known secrets and credential-shaped strings from upstream text."""

    __slots__ = ("_known",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a key inside a longer header value goes with it.
        self._known = sorted(known, key=len, reverse=True)

    @classmethod
    def for_request(cls, api_key: str, headers: Mapping[str, str]) -> Scrubber:
        """For one upstream request: its key, and what its auth headers carried."""
        secrets = [api_key]
        for name, value in headers.items():
            if name.lower() in AUTH_HEADERS:
                secrets.append(value)
                scheme, _, credential = value.partition(" ")
                if credential and scheme.lower() in ("bearer", "basic"):
                    secrets.append(credential.strip())
        return cls(secrets)

    def text(self, value: str) -> str:
        # Known secrets first, over the whole text, so a cut cannot leave
        # the start of one behind.
        for secret in self._known:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if len(value) > MAX_CHARS:
            value = value[:MAX_CHARS] + "...(cut)"
        return _SHAPES.sub(_replace, value)

    def json(self, value: Any, depth: int = 0) -> Any:
        """A decoded JSON value with every string (and key) scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if depth >= MAX_DEPTH and isinstance(value, dict | list):
            return REDACTED
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v, depth + 1) for v in value]
        return value
