"""This gateway instance's name, fixed once per process at start.

``SLUICE_INSTANCE_ID`` if set, else ``host:pid:random``: the random part tells
a restarted process apart from an older one that had the same pid. Audit
records name the instance that ran them; heartbeats and spool files use it.
"""

from __future__ import annotations

import os
import secrets
import socket

HOST = socket.gethostname()


def _default() -> str:
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(3)}"


def _configured() -> str:
    try:
        from django.conf import settings

        return str(getattr(settings, "SLUICE_INSTANCE_ID", "") or "")
    except Exception:  # settings not configured (a bare script)
        return ""


class _Instance:
    name = ""
    pid = 0


def instance_id() -> str:
    """This process's instance name (a new one in a forked or spawned child)."""
    if _Instance.pid != os.getpid():
        _Instance.name, _Instance.pid = _configured() or _default(), os.getpid()
    return _Instance.name


def set_instance_id(name: str) -> None:
    """Take the name of the process this one works for (the audit child of a gateway)."""
    _Instance.name, _Instance.pid = name, os.getpid()
