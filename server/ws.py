"""One WebSocket connection on the event loop: admission, the receive loop and what a client may
send. The hub (server/hub.py) owns fan-out and the protocol's meaning; this module owns the
connection's limits, so a hostile or broken client costs at most its own connection:

- at most ``server.ws_max_clients`` clients: the next one is accepted and closed at once with
  1013 ("try again later") and a reason, so a browser can tell why;
- a message larger than ``server.ws_max_message_bytes`` never reaches Python: the WebSocket
  layer (uvicorn's ``ws_max_size``) closes the connection with 1009 after reading its header;
- binary frames and malformed text get ``{"op":"error"}`` and change nothing; past
  ``server.ws_bad_messages_per_minute`` of them the client is closed with 1008;
- past ``server.ws_messages_per_s`` (bursts of 10 s worth) any client is closed with 1008;
- every refusal is counted in ``vigil_ws_refused_total{reason}`` and logged at most once per
  client address per 10 s (:class:`pipeline.live_step.ThrottledLog`), never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipeline.config import ServerConfig
from pipeline.live_step import ThrottledLog
from server.hub import Hub

CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
BURST_SECONDS = 10.0


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``capacity``; starts full."""

    rate: float
    capacity: float
    tokens: float = field(init=False)
    last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class InboundGuard:
    """What one client may send (pure; the clock is passed in). ``admit`` is called for every
    message and ``bad`` for every malformed one; each returns a close reason or ""."""

    def __init__(self, cfg: ServerConfig, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        rate = cfg.ws_messages_per_s
        self.messages = TokenBucket(rate, max(1.0, rate * BURST_SECONDS), last=t)
        per_min = float(cfg.ws_bad_messages_per_minute)
        self.bad_messages = TokenBucket(per_min / 60.0, per_min, last=t)
        self.max_bytes = cfg.ws_max_message_bytes

    def admit(self, size: int, now: float | None = None) -> str:
        if size > self.max_bytes:
            return f"message larger than {self.max_bytes} bytes"
        if not self.messages.take(now):
            return "too many messages"
        return ""

    def bad(self, now: float | None = None) -> str:
        return "" if self.bad_messages.take(now) else "too many malformed messages"


async def session(
    socket: WebSocket,
    hub: Hub,
    cfg: ServerConfig,
    refused: Callable[[str], None],
    log: ThrottledLog,
    stopping: Callable[[], bool],
    subprotocol: str | None = None,
) -> None:
    """Serve one accepted-or-not WebSocket until it closes. ``refused(reason)`` counts a
    refusal; ``stopping()`` is True while the server shuts down (it closes clients itself);
    ``subprotocol`` is the one the handshake selects (a browser that offered it requires it)."""
    peer = socket.client.host if socket.client else "unknown"
    await socket.accept(subprotocol=subprotocol)
    if len(hub.clients) >= cfg.ws_max_clients:
        refused("client_limit")
        log(f"ws-limit:{peer}", f"vigil: WebSocket client {peer} refused: {cfg.ws_max_clients} "
            "clients connected (server.ws_max_clients)")  # fmt: skip
        await socket.close(CLOSE_TRY_LATER, f"too many clients ({cfg.ws_max_clients})")
        return
    guard = InboundGuard(cfg)
    client = hub.connect(socket.send_text, socket.close, socket.send_bytes)
    sender = asyncio.create_task(hub.sender(client))
    try:
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            raw = message.get("bytes")
            size = len(text) if text is not None else len(raw or b"")
            why = guard.admit(size)
            kind = "rate_limited"
            if not why:
                if text is None:
                    client.enqueue(_error("binary frames are not accepted: send JSON text"), 0.0)
                    ok, kind = False, "binary"
                else:
                    ok, kind = hub.handle(client, text), "malformed"
                if ok:
                    continue
                refused(kind)
                log(f"ws-{kind}:{peer}", f"vigil: WebSocket client {peer} sent a {kind} message")
                why = guard.bad()
                if not why:
                    continue
                kind = "bad_limit"
            refused(kind)
            log(f"ws-close:{peer}", f"vigil: WebSocket client {peer} closed: {why}")
            await socket.close(CLOSE_POLICY, why)
            break
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.disconnect(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        if socket.client_state is WebSocketState.CONNECTED and not stopping():
            with contextlib.suppress(Exception):
                await socket.close()


def _error(message: str) -> str:
    return json.dumps({"op": "error", "error": message})


REFUSAL_REASONS = ("binary", "malformed", "rate_limited", "bad_limit", "client_limit")
