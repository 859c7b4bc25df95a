"""Typed readers for settings that come from the environment.

Each helper raises ImproperlyConfigured on a value it cannot parse, so a typo
in a deployment fails at start-up instead of at the first request.
"""

from __future__ import annotations

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {raw!r}")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def envfloat(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envnetworks(name: str, default: str = "") -> list[str]:
    """Comma-separated CIDRs (or single addresses), each checked, in canonical form."""
    networks = []
    for item in envlist(name, default):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP network") from None
    return networks


def envsecret(name: str, *, dev_default: str | None) -> str:
    """A secret that must be set outside the embedded dev mode.

    ``dev_default`` is only used when the caller is in dev mode (it passes None
    otherwise), so production fails closed instead of running on a known key.
    """
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if dev_default is not None:
        return dev_default
    raise ImproperlyConfigured(
        f"{name} is not set. Set it in the environment, or set SLUICE_DEV=1 to run the "
        "embedded development mode (which keeps generated secrets under var/). After "
        "`make run`, run commands as: SLUICE_DEV=1 .venv/bin/python manage.py <command>"
    )
