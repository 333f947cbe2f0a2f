"""``vigil serve``: the live server. Also the ``vigil`` entry point (it adds ``serve`` to the
offline commands of :mod:`cli.main`, keeping the dependency rule: pipeline never imports
server).

Shutdown on SIGTERM/SIGINT, in order: stop intake (every FFmpeg child ends), drain the batch in
flight with a deadline, close WebSocket clients with 1001, then let uvicorn stop. A second
signal forces the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from cli.main import build_parser, run
from pipeline.types import VigilError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.config import load_config
    from server.app import create_app
    from server.auth import ApiKeys

    cfg = load_config(args.config, {"server.host": args.host, "server.port": args.port})
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
    app = create_app(cfg)
    config = uvicorn.Config(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        ws="websockets-sansio",
        lifespan="on",
        access_log=False,  # query strings may hold a WebSocket token
        log_level="warning",
        ws_ping_interval=cfg.server.ws_ping_interval_s or None,
        ws_ping_timeout=cfg.server.ws_ping_timeout_s,
        timeout_graceful_shutdown=int(cfg.server.drain_timeout_s) + 5,
    )
    server = _graceful_server(app, config)
    host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    base = f"{host}:{cfg.server.port}"
    auth = "API key required" if keys.enabled else "no API keys configured: auth off"
    print(
        f"Vigil serving http://{base} - API docs http://{base}/docs, "
        f"WebSocket ws://{base}/ws, metrics http://{base}/metrics ({auth})",
        flush=True,
    )
    # uvicorn re-raises the signal it caught after shutting down; with these no-op handlers in
    # place that ends the process normally (exit 0) instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise VigilError(f"could not serve on {base} (is the port in use?)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = build_parser()
    sv = sub.add_parser("serve", help="run the live server (REST, WebSocket, metrics)")
    sv.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    sv.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default from config: 8000)")
    sv.set_defaults(func=cmd_serve)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
