"""uvicorn's h11 protocol with a header-read timeout (slowloris): a connection must finish each request's
headers within ``header_timeout`` seconds of connecting or of its first byte, or it gets 408 and is closed.

uvicorn has no such timeout: its keep-alive timer stops at a request's first byte, so a client that sends
half a header holds its connection (and one of ``max_connections``) forever. Measured before this: 20 stalled
half-header connections stayed open with no answer. The body is the app's to bound (``app.BodyLimit``):
it must be all in within ``request_timeout_s`` of the headers, or the client gets 408 and the connection
closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("transferlm.serving")

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 29\r\nconnection: close\r\n\r\nrequest headers took too long")


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout: float = 10.0  # set per server by :func:`protocol_with_header_timeout`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is bounded too

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()  # the first bytes of a new request (on a fresh or kept-alive connection)
        super().data_received(data)
        if not self._between_requests():
            self._disarm()  # h11 parsed a whole request head: the app's own timeout takes over

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timer closes it unless a new request starts

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._between_requests():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.warning("request headers not received in time: connection closed",
                    extra={"event": "header_timeout", "client": client, "timeout_s": self.header_timeout})
        self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to hand uvicorn (``uvicorn.Config(http=...)``) for a ``seconds`` header timeout."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": float(seconds)})
