"""The worker's small HTTP face: liveness, readiness, Prometheus metrics and its cameras.

No stream mutations here: cameras are added and removed through a gateway (the desired state
in Redis); a worker only says what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse

from cluster.connection import REDIS_DOWN
from cluster.worker import Worker
from pipeline.config import VigilConfig
from pipeline.types import VigilError


class _WorkerRuntime:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stopped = False

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.worker.start)

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        drain = self.worker.cfg.server.drain_timeout_s
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop, drain)


def create_worker_app(worker: Worker) -> FastAPI:
    rt = _WorkerRuntime(worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app = FastAPI(title="Vigil worker", version="0.1.0", lifespan=lifespan)
    app.state.runtime = rt

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, reason = worker.readiness()
        ok = ok and not rt.stopped
        body: dict[str, Any] = {"ready": ok, "node": worker.node, "model": worker.model,
                                "redis": worker.redis_up, "streams": len(worker.owned)}  # fmt: skip
        if not ok:
            body["reason"] = reason or "shutting down"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(worker.server_metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/streams")
    async def streams() -> list[dict[str, Any]]:
        return list(worker.status()["streams"].values())

    @app.get("/api/streams/{stream_id}")
    async def stream(stream_id: str) -> dict[str, Any]:
        s = worker.status()["streams"].get(stream_id)
        if s is None:
            raise HTTPException(404, f"this worker does not run {stream_id!r}")
        return dict(s)

    return app


def serve_worker(cfg: VigilConfig) -> int:
    """``vigil worker``: run until SIGTERM/SIGINT (health, readiness and metrics over HTTP)."""
    from server.serve import run_app

    worker = Worker(cfg)
    try:
        worker.client.ping()
    except REDIS_DOWN as e:
        print(f"vigil: redis not reachable yet ({e}); the worker retries", file=sys.stderr)
    except redis.AuthenticationError as e:
        raise VigilError(f"redis refused the credentials: {e}") from None
    app = create_worker_app(worker)
    return run_app(app, cfg, f"Vigil worker {worker.node}", keyed=False, api=False)
