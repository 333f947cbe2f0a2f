"""One error model for every HTTP error the server sends: ``{"detail": "<one line>"}``.

FastAPI's defaults mix two shapes (``detail`` a string for HTTPException, a list of objects for
validation errors) and document only the second. Here every 4xx/5xx body is :class:`ErrorBody`,
validation errors included (the first problem, with its field, in one line, and how many more
there were), and :func:`responses` documents exactly the statuses a route can send, so the
OpenAPI description is true (a schemathesis test holds the server to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from pipeline.live import StreamConflict
from pipeline.live_step import ThrottledLog
from pipeline.types import VigilError
from server.backend import BackendUnavailable


class ErrorBody(BaseModel):
    """Every error response: one line saying what was wrong."""

    detail: str


DESCRIPTIONS = {
    400: "The body is not readable JSON",
    401: "An API key is required (X-API-Key or Authorization: Bearer)",
    403: "The API key is not valid",
    404: "No such stream",
    409: "The stream id is taken, or live.max_streams streams run already",
    413: "The request body is larger than server.max_body_kb",
    422: "The request is not valid (the field and the reason in one line)",
    429: "Too many changes from this key (auth.mutations_per_minute)",
    503: "The pipeline is not running yet, or any more",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can send."""
    return {c: {"model": ErrorBody, "description": DESCRIPTIONS[c]} for c in codes}


@dataclass(frozen=True)
class Access:
    """A route's auth dependencies (with the security schemes that document them) and the
    error statuses they can send, for routers built outside the app."""

    reads: list[Any]
    changes: list[Any]
    read_errors: tuple[int, ...]  # (401, 403) when reads need a key, else ()
    change_errors: tuple[int, ...]  # (401, 403) when keys are configured, else ()

    def read_responses(self, *codes: int) -> dict[int | str, dict[str, Any]]:
        """A read route's statuses: auth, ``codes``, 422 (bad parameters), 503 (not ready)."""
        return responses(*sorted({*self.read_errors, *codes, 422, 503}))

    def change_responses(self, *codes: int) -> dict[int | str, dict[str, Any]]:
        """A mutation's statuses: auth, ``codes``, 422, 429 (rate limit), 503."""
        return responses(*sorted({*self.change_errors, *codes, 422, 429, 503}))


def one_line(exc: RequestValidationError) -> str:
    """A validation error as ``field: reason`` (+ how many more problems there were)."""
    errors = list(exc.errors())
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        where = first.get("loc", ("body", "?"))[-1]
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        return f"the body is not valid JSON ({reason} at character {where})"
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    where = ".".join(loc)
    msg = str(first.get("msg", "invalid")).splitlines()[0]
    text = f"{where}: {msg}" if where else msg
    more = len(errors) - 1
    return (text + (f" (and {more} more)" if more else ""))[:500]


def _methods(app: FastAPI, path: str) -> list[str]:
    found: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            found |= route.methods or set()
    return sorted(found)


def install(app: FastAPI, log: ThrottledLog) -> None:
    """Route every error through :class:`ErrorBody`."""

    def body(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail.splitlines()[0] if detail else ""}, status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = body(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        if exc.status_code == 405:  # every method of the path, not just its first route's
            response.headers["Allow"] = ", ".join(_methods(app, request.url.path))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return body(422, one_line(exc))

    @app.exception_handler(StreamConflict)
    async def conflict(_: Request, exc: StreamConflict) -> JSONResponse:
        return body(409, str(exc))

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return body(503, str(exc))

    @app.exception_handler(VigilError)
    async def vigil_error(_: Request, exc: VigilError) -> JSONResponse:
        return body(422, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log(f"http-500:{request.url.path}", f"vigil: {request.method} {request.url.path} "
            f"failed: {type(exc).__name__}: {exc}".splitlines()[0])  # fmt: skip
        return body(500, "internal error (logged)")
