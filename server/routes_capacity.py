"""REST for capacity: what this server can still take.

    GET /api/capacity?width=640&height=480&fps=10&detect_every=1&source_fps=
        the budget (inference-thread ms per second), what the streams use, how many more
        streams of that resolution and rate fit, each stream's effective fps, the measured costs
    GET /api/streams/{sid}/motion
        the stream's last motion mask (motion gating), for a preview to draw: ``grid`` [h, w]
        thumbnail cells over the whole frame, ``rows`` of "0"/"1" per cell, ``area`` (the
        largest moving region's share of the frame) and the detector's counts

Answered from memory (``pipeline.qos.Capacity.report``); a cluster gateway has no pipeline of
its own and answers 503 (each worker's ``vigil serve`` API has its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from pipeline.live import LivePipeline
from server.errors import Access


def capacity_router(pipeline: Callable[[], LivePipeline], access: Access) -> APIRouter:
    """The routes above (``access``: the app's auth dependencies and their statuses)."""
    router = APIRouter(prefix="/api", tags=["capacity"])

    @router.get("/capacity", dependencies=access.reads, responses=access.read_responses())
    async def capacity(
        width: int = Query(640, ge=16, le=16384),
        height: int = Query(480, ge=16, le=16384),
        fps: float = Query(10.0, gt=0.0, le=240.0),
        detect_every: int = Query(1, ge=1, le=30),
        source_fps: float = Query(0.0, ge=0.0, le=240.0),
    ) -> dict[str, Any]:
        return pipeline().capacity_report(
            width=width, height=height, fps=fps, detect_every=detect_every, source_fps=source_fps
        )

    @router.get(
        "/streams/{stream_id}/motion",
        dependencies=access.reads,
        responses=access.read_responses(404),
    )
    async def motion(stream_id: str) -> dict[str, Any]:
        st = pipeline().runtime(stream_id)
        if st is None:
            raise HTTPException(404, f"no stream {stream_id[:64]!r}")
        detector = st.schedule.motion
        mask = detector.mask if detector is not None else None
        return {
            "enabled": detector is not None,
            "grid": list(mask.shape) if mask is not None else None,
            "rows": ["".join("1" if v else "0" for v in row) for row in mask.tolist()]
            if mask is not None
            else None,
            "area": round(detector.area, 5) if detector is not None else None,
            "detector_frames": st.schedule.counts(),
        }

    return router
