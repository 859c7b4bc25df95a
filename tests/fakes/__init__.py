"""Test doubles that speak real wire formats over real sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream, RecordedRequest, refused_base_url

__all__ = ["FakeUpstream", "RecordedRequest", "refused_base_url"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m tests.fakes.upstream` doesn't load the module twice.
    if name in __all__:
        from tests.fakes import upstream

        return getattr(upstream, name)
    raise AttributeError(name)
