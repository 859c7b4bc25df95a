"""Serve the gateway with uvicorn (uvloop, httptools), TLS from settings.

uvicorn is the production server: its ``send()`` waits on the transport, so
a slow reader cannot pile data up in memory the way it can under daphne.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Serve the Sluice gateway (uvicorn)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--log-level", default="info")

    def handle(self, *args: Any, **options: Any) -> None:
        cert, key = settings.SLUICE_TLS_CERT_FILE, settings.SLUICE_TLS_KEY_FILE
        if bool(cert) != bool(key):
            raise CommandError("set both SLUICE_TLS_CERT_FILE and SLUICE_TLS_KEY_FILE, or neither")
        uvicorn.run(
            "gateway.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            loop="uvloop",
            http="streaming.transports.connections:GuardedHttpProtocol",
            ws="streaming.transports.connections:GuardedWebSocketProtocol",
            lifespan="on",
            log_level=options["log_level"],
            access_log=False,
            ssl_certfile=cert or None,
            ssl_keyfile=key or None,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=settings.SLUICE_KEEPALIVE_SECONDS,
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise:
            # any local client could then pick its own address.
            proxy_headers=bool(settings.SLUICE_TRUSTED_PROXIES),
            forwarded_allow_ips=",".join(settings.SLUICE_TRUSTED_PROXIES) or "",
        )
