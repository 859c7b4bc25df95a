"""Connection hygiene for the served gateway: uvicorn protocols with deadlines
and a cap on open connections per client address.

uvicorn's httptools protocol arms no timer before its first response, so a
client could hold a connection open forever by sending nothing, or its
headers or body a byte at a time. ``GuardedHttpProtocol`` closes a
connection whose request headers are not complete within
``SLUICE_HEADER_TIMEOUT_SECONDS`` of it opening (or, on a kept-alive
connection, of the next request starting), and answers 408 to a body that
has not arrived within ``SLUICE_BODY_TIMEOUT_SECONDS``.

On the hot path this costs no timer per request: the header deadline is
armed once per connection and cancelled when the headers are complete; a
deadline for the next request's headers or for a body is armed only when a
read leaves them incomplete.

The cap counts every open socket of a TCP peer, HTTP and WebSocket alike.
When a connection upgrades, uvicorn moves the transport to the WebSocket
protocol and the HTTP protocol's ``connection_lost`` is never called, so the
slot moves with the transport: ``GuardedWebSocketProtocol`` gives it back.
Peers in ``SLUICE_TRUSTED_PROXIES`` are not capped (every client behind a
proxy shares its address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter as Tally
from functools import lru_cache
from typing import Any

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streaming.observability import metrics
from streaming.transports.ws_frames import BatchingWebSocketProtocol

logger = logging.getLogger("sluice.connections")

_TIMEOUT_BODY = b"the request body took too long to arrive\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)

_open: Tally[str] = Tally()


@lru_cache(maxsize=1024)
def _capped(host: str) -> bool:
    """Whether connections from ``host`` count against the per-client cap."""
    if settings.SLUICE_MAX_CONNECTIONS_PER_CLIENT <= 0:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a Unix socket or similar: no address to cap
    return not any(address in ipaddress.ip_network(net) for net in settings.SLUICE_TRUSTED_PROXIES)


def take_slot(host: str) -> bool:
    """Count a new connection from ``host``; False if it is over the cap."""
    if not _capped(host):
        return True
    if _open[host] >= settings.SLUICE_MAX_CONNECTIONS_PER_CLIENT:
        metrics.CONNECTIONS_REFUSED.labels(reason="per_client_cap").inc()
        return False
    _open[host] += 1
    return True


def give_slot(host: str) -> None:
    if not _capped(host):
        return
    _open[host] -= 1
    if _open[host] <= 0:
        del _open[host]


def open_connections(host: str) -> int:
    return _open[host]


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and the cap."""

    _host: str | None = None  # set while this protocol holds the connection's slot
    _deadline: asyncio.TimerHandle | None = None
    _in_headers = True
    _upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        if not take_slot(host):
            transport.abort()
            return
        self._host = host
        self._deadline = self.loop.call_later(
            settings.SLUICE_HEADER_TIMEOUT_SECONDS, self._headers_late
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._host is not None:
            give_slot(self._host)
            self._host = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None or self._upgraded or self.transport.is_closing():
            return
        if self._in_headers:  # the next request on a kept-alive connection has begun
            self._arm(settings.SLUICE_HEADER_TIMEOUT_SECONDS, self._headers_late)
        elif self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete:
            self._arm(settings.SLUICE_BODY_TIMEOUT_SECONDS, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The transport and its slot now belong to the WebSocket protocol.
        self._disarm()
        self._upgraded = True
        self._host = None
        super().handle_websocket_upgrade()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._in_headers and not self.transport.is_closing():
            metrics.CONNECTIONS_TIMED_OUT.labels(phase="headers").inc()
            self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        metrics.CONNECTIONS_TIMED_OUT.labels(phase="body").inc()
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


class GuardedWebSocketProtocol(BatchingWebSocketProtocol):
    """uvicorn's websockets-sansio protocol (writing a batch of messages at
    once, see ``ws_frames``), giving back the slot its upgrade took."""

    def connection_lost(self, exc: Exception | None) -> None:
        give_slot(self.client[0] if self.client else "")
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """At shutdown, close with 1001 (going away: reconnect, to another
        instance), not uvicorn's 1012; the streams go on elsewhere
        (streaming.core.shutdown)."""
        if self.close_sent or not (self.handshake_complete and self.initial_response is None):
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
        self.conn.send_close(1001, "the gateway is shutting down; reconnect")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
