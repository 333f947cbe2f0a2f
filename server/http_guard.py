"""HTTP connection limits uvicorn does not have, and a log that a client cannot flood.

uvicorn's httptools protocol starts no timer until a first response has been sent and keeps
every header line a client sends: a "slow loris" client that trickles a header byte every few
seconds holds its connection (and a file descriptor) forever, and one that sends headers
without end grows the server's memory. :func:`guarded_protocol` returns the same protocol with

- a deadline for each request's headers (``server.header_timeout_s``, counted from the
  connection or from the request's first byte): past it the client gets 408 and is closed;
- a cap on the request line plus headers (:data:`MAX_HEAD_BYTES`): past it 431 and closed.

:class:`BodyLimit` (ASGI middleware) answers 413 in the one error shape when a request body is
larger than ``server.max_body_kb``: at once from ``Content-Length``, or as soon as the bytes
read pass the limit (chunked bodies), so no handler ever parses a large body on the loop.

:class:`ThrottledLogFilter` keeps uvicorn's own log lines about bad clients ("Invalid HTTP
request received." ...) to one per message per 10 s, without tracebacks for client faults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
_CLIENT_FAULTS = ("Invalid HTTP request", "Invalid UTF-8", "Unsupported upgrade")


def _reply(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def guarded_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header deadline and a header size cap."""

    class GuardedHttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            self._head_bytes = 0
            self._deadline: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_bytes = 0
            self._deadline = self.loop.call_later(
                header_timeout_s, self._refuse, b"408 Request Timeout"
            )

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _refuse(self, status: bytes) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(_reply(status))
                self.transport.close()

        def _count(self, n: int) -> bool:
            self._head_bytes += n
            if self._head_bytes > MAX_HEAD_BYTES:
                self._disarm()
                self._refuse(b"431 Request Header Fields Too Large")
                return False
            return True

        def data_received(self, data: bytes) -> None:
            # Bytes that arrive while a request's head is incomplete count against the cap
            # (the parser buffers a header until the next one starts, so count them here).
            if self._deadline is not None and not self._count(len(data)):
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            if self._deadline is None:  # a new request on a kept-alive connection
                self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

    return GuardedHttpProtocol


class ThrottledLogFilter(logging.Filter):
    """At most one record per message text per ``interval_s`` (the next one says how many were
    left out); records about client faults lose their traceback."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more:
            record.msg = f"{record.msg} ({more} more since the last report)"
        if any(key.startswith(f) for f in _CLIENT_FAULTS):
            record.exc_info = None
            record.exc_text = None
        return True


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse HTTP request bodies over ``max_bytes`` with 413 ``{"detail": ...}``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        kib = self.max_bytes // 1024
        body = json.dumps(
            {"detail": f"the request body is larger than {kib} KiB (server.max_body_kb)"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)
