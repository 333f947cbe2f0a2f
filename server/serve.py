"""Run the live server (``vigil serve``, wired by :mod:`cli.main`) under uvicorn.

Shutdown on SIGTERM/SIGINT, in order: stop intake (every FFmpeg child ends), drain the batch in
flight with a deadline, close WebSocket clients with 1001, then let uvicorn stop. A second
signal forces the exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.config import VigilConfig
from pipeline.types import VigilError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int, send_buffer_kb: int) -> socket.socket:
    """The bound server socket. With ``send_buffer_kb`` > 0 every accepted connection inherits
    that kernel send buffer: a client that stops reading then holds at most that much kernel
    memory (Linux otherwise autotunes it up to ``tcp_wmem``'s maximum, about 4 MB each)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise VigilError(f"server.host {host!r} does not resolve ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer_kb > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_kb * 1024)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise VigilError(f"could not serve on {host}:{port} ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _graceful_server(app: Any, config: Any) -> Any:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        stopping = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.stopping:  # a second signal: let uvicorn force its way out
                super().handle_exit(sig, frame)
                return
            self.stopping = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._graceful(sig, frame)))

        async def _graceful(self, sig: int, frame: FrameType | None) -> None:
            try:
                await app.state.runtime.stop()
            finally:
                self.should_exit = True

    return GracefulServer(config)


def check_serving(cfg: VigilConfig) -> bool:
    """Refuse settings a server must not start with; True when API keys are configured."""
    from server.auth import ApiKeys

    keys = ApiKeys(cfg.auth)
    if (
        not keys.enabled
        and not _is_loopback(cfg.server.host)
        and not cfg.auth.allow_anonymous_remote
    ):
        raise VigilError(
            f"refusing to serve {cfg.server.host} without API keys "
            "(set auth.keys or auth.keys_file, or auth.allow_anonymous_remote: true)"
        )
    if not Path(cfg.server.media_root).is_dir():
        raise VigilError(f"server.media_root is not a folder: {cfg.server.media_root}")
    return keys.enabled


def serve(cfg: VigilConfig) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status. VigilError for bad settings."""
    from server.app import create_app

    keyed = check_serving(cfg)
    return run_app(create_app(cfg), cfg, "Vigil serving", keyed)


def run_app(app: Any, cfg: VigilConfig, title: str, keyed: bool, api: bool = True) -> int:
    """Run ``app`` (whose ``state.runtime.stop()`` shuts it down in order) under uvicorn on
    ``cfg.server``'s address until SIGTERM/SIGINT; prints one line with the addresses (``api``:
    it serves the REST API and the WebSocket)."""
    import uvicorn

    from server.http_guard import ThrottledLogFilter, guarded_protocol

    config = uvicorn.Config(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        http=guarded_protocol(cfg.server.header_timeout_s),
        ws="websockets-sansio",
        ws_max_size=cfg.server.ws_max_message_bytes,  # larger: closed with 1009, never read
        lifespan="on",
        access_log=False,  # query strings may hold a WebSocket token
        log_level="warning",
        ws_ping_interval=cfg.server.ws_ping_interval_s or None,
        ws_ping_timeout=cfg.server.ws_ping_timeout_s,
        timeout_graceful_shutdown=int(cfg.server.drain_timeout_s) + 5,
    )
    logging.getLogger("uvicorn.error").addFilter(ThrottledLogFilter())
    server = _graceful_server(app, config)
    host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    base = f"{host}:{cfg.server.port}"
    auth = "API key required" if keyed else "no API keys configured: auth off"
    page = f"dashboard http://{base}/, " if cfg.dashboard.enabled else ""
    where = (
        f"{page}API docs http://{base}/docs, WebSocket ws://{base}/ws, "
        f"metrics http://{base}/metrics ({auth})"
        if api
        else f"/healthz, /readyz, metrics http://{base}/metrics"
    )
    print(f"{title} http://{base} - {where}", flush=True)
    # uvicorn re-raises the signal it caught after shutting down; with these no-op handlers in
    # place that ends the process normally (exit 0) instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    sock = listening_socket(cfg.server.host, cfg.server.port, cfg.server.send_buffer_kb)
    server.run(sockets=[sock])
    if not server.started:
        raise VigilError(f"could not serve on {base} (is the port in use?)")
    return 0
