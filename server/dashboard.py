"""The dashboard: a static page served by the app itself (``server/static``: plain HTML, CSS and
JavaScript modules, no build step).

    GET /              index.html
    GET /ui/...        the page's modules and styles

Every page response carries a strict Content-Security-Policy (scripts and connections to this
origin only, images from blobs the page decodes itself) and is not cached, so a server upgrade
never runs against an old page. The page talks to the same REST routes and WebSocket protocol as
any client (README "Dashboard").
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class _PageHeaders:
    """Adds :data:`HEADERS` to every response of the wrapped static app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/ui``."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        headers = {k.decode(): v.decode() for k, v in HEADERS}
        return FileResponse(STATIC / "index.html", headers=headers)

    app.mount("/ui", _PageHeaders(StaticFiles(directory=STATIC)), name="ui")
