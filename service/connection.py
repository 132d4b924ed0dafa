"""The HTTP/1.1 connection handling ``haste serve`` runs: uvicorn's httptools protocol plus a header
timeout. uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a client
takes to send a request's headers, so a client that connects and sends nothing, or trickles one header
line at a time (slowloris), holds its connection and file descriptor for ever; enough of them exhaust the
process's open-file limit and every new client is refused. Here a request's headers must be complete
within ``header_timeout_s`` of the connection opening or of the request's first byte, or the connection
is closed (nothing is answered: no request exists yet). The body is bounded by the request deadline
(service.body), the idle time between requests by HASTE_KEEP_ALIVE_S, as before."""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("service")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers are not complete within
    ``header_timeout_s`` seconds (a class attribute: see ``with_header_timeout``)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            log.debug("closing %s: request headers not complete within %g s", client, self.header_timeout_s)
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's ``http`` option, with this header timeout (seconds)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(seconds)})
