"""REST for events, counts and camera health.

    GET  /api/events?stream=&rule=&kind=a,b&class=&since=&until=&limit=&cursor=&order=
         one page of stored events, oldest first (``order=desc``: newest first):
         {"events": [<v1 event>...], "next": <cursor for the next page, or null>}
    GET  /api/counts                              every stream's counts since start (or reset;
                                                  on a gateway: since it first saw the camera)
    GET  /api/streams/{sid}/counts[?since=&until=]  the same for one stream; with ``since``
                                                  (unix s) counted from the event store instead
    POST /api/streams/{sid}/counts/reset          zero the counters (API key)
    GET  /api/streams/{sid}/health                the camera-health checks now

Queries run off the event loop; a store that is disabled answers 503. On a gateway a reset is
a command to the camera's owner through Redis (applied at its next control round; the
gateway's own counts restart at once and follow the owner's from the frame it reset at), and
health is what the owner published with its last heartbeat (``owner`` null: nobody runs the
camera now); with Redis away a reset answers 503 and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response

from server.backend import StreamBackend
from server.errors import Access
from server.event_store import MAX_PAGE, EventQuery, EventStore


def events_router(
    backend: Callable[[], StreamBackend],
    store: Callable[[], EventStore | None],
    counts_of: Callable[[frozenset[str] | None], dict[str, Any]],
    access: Access,
) -> APIRouter:
    """The routes above (``counts_of``: the backend's live counts by stream; ``access``: the
    app's auth dependencies and their statuses)."""
    router = APIRouter(prefix="/api", tags=["events"])
    reads, changes = access.reads, access.changes
    one_stream = access.read_responses(404)

    def the_store() -> EventStore:
        s = store()
        if s is None:
            raise HTTPException(503, "the event store is disabled (events.enabled)")
        return s

    @router.get("/events", dependencies=reads, responses=access.read_responses())
    async def events(
        stream: str | None = None,
        rule: str | None = None,
        kind: str | None = Query(None, description="event kinds, comma-separated"),
        class_name: str | None = Query(None, alias="class"),
        since: float | None = Query(None, description="unix seconds, inclusive"),
        until: float | None = Query(None, description="unix seconds, exclusive"),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        cursor: int | None = Query(None, ge=0, description="the previous page's next"),
        order: str = Query("asc", pattern="^(asc|desc)$"),
    ) -> Response:
        kinds = tuple(k.strip() for k in (kind or "").split(",") if k.strip())
        q = EventQuery(stream, rule, kinds, class_name, since, until, limit, cursor, order)
        q.check()  # VigilError -> 422
        body = await asyncio.get_running_loop().run_in_executor(None, the_store().query, q)
        return Response(body, media_type="application/json")

    @router.get("/counts", dependencies=reads, responses=access.read_responses())
    async def all_counts() -> dict[str, Any]:
        return counts_of(None)

    @router.get("/streams/{stream_id}/counts", dependencies=reads, responses=one_stream)
    async def counts(
        stream_id: str,
        since: float | None = Query(None, description="unix seconds: count stored events"),
        until: float | None = Query(None, description="unix seconds, exclusive"),
    ) -> dict[str, Any]:
        if since is None and until is None:
            found = counts_of(frozenset({stream_id}))
            if stream_id not in found:
                raise HTTPException(404, f"no stream {stream_id!r} with analytics")
            return dict(found[stream_id])
        s = the_store()
        start = 0.0 if since is None else since
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, s.counts, stream_id, start, until)

    @router.post(
        "/streams/{stream_id}/counts/reset",
        dependencies=changes,
        responses=access.change_responses(404),
    )
    async def reset(stream_id: str) -> dict[str, Any]:
        b = backend()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, b.reset_counts, stream_id)
        except KeyError:
            raise HTTPException(404, f"no stream {stream_id!r} with analytics") from None

    @router.get("/streams/{stream_id}/health", dependencies=reads, responses=one_stream)
    async def health(stream_id: str) -> dict[str, Any]:
        found = backend().health(stream_id)
        if found is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return found

    return router
