"""REST for the browser's session token (server/tokens.py):

GET    /api/session    {"auth": bool, "protect_reads": bool, "previews": bool}: what the
                       page needs to know before it asks for a key (never a secret)
POST   /api/session    with the API key (X-API-Key or Authorization: Bearer), or a live
                       token to renew it: {"auth": true, "token": "...", "expires_in": 600}
                       ({"auth": false, "token": null, ...} when auth is off)
DELETE /api/session    ends the presented token (204)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from server.errors import responses
from server.tokens import SessionTokens


class SessionInfo(BaseModel):
    auth: bool
    protect_reads: bool
    previews: bool
    classes: list[str]  # the model's class names, by class id (track messages carry ids)


class SessionToken(BaseModel):
    auth: bool
    token: str | None
    expires_in: float | None


def session_router(
    tokens: SessionTokens,
    info: Callable[[], SessionInfo],
    authorize: Callable[[Request], bytes | str],
    allow: Callable[[bytes | str], bool],
    presented: Callable[[Request], str | None],
    security: list[Any],
) -> APIRouter:
    """``authorize(request)`` -> the caller's identity (raises 401/403); ``allow(identity)``:
    the mutation rate limit; ``presented(request)``: the key or token the request carries."""
    router = APIRouter(prefix="/api/session", tags=["session"])
    auth_errors = (401, 403) if info().auth else ()

    @router.get("", response_model=SessionInfo)
    async def get_session() -> SessionInfo:
        return info()

    @router.post(
        "",
        response_model=SessionToken,
        dependencies=security,
        responses=responses(*auth_errors, 429),
    )
    async def new_session(request: Request) -> SessionToken:
        if not info().auth:
            return SessionToken(auth=False, token=None, expires_in=None)
        who = authorize(request)
        if not allow(who):
            raise HTTPException(429, "too many changes; slow down")
        owner = who if isinstance(who, bytes) else who.encode()
        return SessionToken(auth=True, token=tokens.issue(owner), expires_in=tokens.ttl_s)

    @router.delete(
        "",
        status_code=204,
        response_class=Response,
        dependencies=[Depends(authorize), *security],
        responses=responses(*auth_errors),
    )
    async def end_session(request: Request) -> Response:
        token = presented(request)
        if token:
            tokens.revoke(token)
        return Response(status_code=204)

    return router
