"""The FastAPI application: REST for streams, health, metrics, and the WebSocket hub; the rules,
events and counts routes (``routes_rules``, ``routes_events``) and the event outputs (event
store, MQTT, webhooks: ``outputs``) are wired in here.

The event loop only moves data. Decode, inference and tracking run in the pipeline's threads;
their results reach the loop through one bounded handoff (``_Runtime.handoff``): at most
``HANDOFF_LIMIT`` messages may be scheduled and not yet delivered, beyond that new ones are
dropped and counted, so a stalled loop can never make the pipeline queue without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security, WebSocket
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel

from pipeline.config import StreamConfig, VigilConfig, parse_stream
from pipeline.live import LivePipeline, build_engine_low_priority
from pipeline.live_source import LiveStream
from pipeline.live_step import Published, ThrottledLog
from pipeline.wiring import build_decode
from server.auth import ApiKeys, RateLimiter, digest
from server.errors import install as install_errors
from server.errors import responses
from server.event_store import EventStore
from server.http_guard import BodyLimit
from server.hub import Hub
from server.memory import trim_periodically
from server.metrics import Metrics
from server.metrics_events import EventsCollector
from server.outputs import EventOutputs
from server.routes_events import events_router
from server.routes_rules import rules_router
from server.schema import Health, Ready, StreamStatus, rest_model
from server.urls import check_stream_url
from server.ws import session

HANDOFF_LIMIT = 1024
CLOSE_GOING_AWAY = 1001


StreamIn = rest_model(StreamConfig, "StreamIn")


class _Runtime:
    """Everything the app owns while it runs."""

    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self.keys = ApiKeys(cfg.auth)
        self.limiter = RateLimiter(cfg.auth.mutations_per_minute)
        self.metrics = Metrics(lambda: self.pipeline)
        self.pipeline: LivePipeline | None = None
        self.hub: Hub | None = None
        self.outputs: EventOutputs | None = None
        self.metrics.registry.register(EventsCollector(lambda: self.pipeline, lambda: self.outputs))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.stopped = False
        self.model: dict[str, str] = {}
        self.log = ThrottledLog()

    def handoff(self, msg: Published) -> None:
        """Called from the inference thread: events to the store and sinks (bounded buffers),
        then schedule delivery on the loop; never blocks."""
        if msg.events and self.outputs is not None:
            self.outputs.publish(msg)
        with self._pending_lock:
            if self._pending >= HANDOFF_LIMIT or self.loop is None:
                self.metrics.handoff_dropped.inc()
                return
            self._pending += 1
        self.loop.call_soon_threadsafe(self._deliver, msg)

    def _deliver(self, msg: Published) -> None:
        with self._pending_lock:
            self._pending -= 1
        # A message of a stream deleted while it was in flight is dropped here, on the loop,
        # after the deletion's own cleanup: it must not bring the stream's snapshot back.
        if self.hub is not None and self.pipeline is not None and self.pipeline.get(msg.stream):
            self.hub.publish(msg)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        engine = await self.loop.run_in_executor(None, build_engine_low_priority, cfg)
        m = engine.info
        decode = build_decode(cfg.source)
        self.model = {"name": m.name, "version": m.version, "precision": m.precision,
                      "backend": m.backend, "file": m.file, "sha256": m.sha256,
                      "device": m.device, "preprocess": m.preprocess,
                      "decode": decode.path}  # fmt: skip
        self.metrics.model.info(self.model)
        print(f"model {m.name} {m.version} ({m.precision}, {m.backend} on {m.device}, {m.file}, "
              f"sha256 {m.sha256[:12]}); preprocess {m.preprocess}; decode {decode.path} "
              f"({decode.reason})", flush=True)  # fmt: skip
        self.hub = Hub(
            cfg.server.ws_queue,
            engine.info.class_names,
            on_sent=self.metrics.latency.observe,
            on_lost=self.metrics.ws_lost.inc,
            max_list=cfg.live.max_streams,
            counts=self.counts,
        )
        self.pipeline = LivePipeline(
            cfg, self.handoff, engine, observe_stage=self.metrics.observe_stage
        )
        outputs = EventOutputs(cfg, lambda: self.counts(None), self.pipeline.guard.log)
        await self.loop.run_in_executor(None, outputs.start)
        self.outputs = outputs
        for entry in cfg.streams:
            self.pipeline.add_stream(*self.spec(entry))
        self.pipeline.start()

    def event_store(self) -> EventStore | None:
        return None if self.outputs is None else self.outputs.store

    def counts(self, streams: frozenset[str] | None) -> dict[str, Any]:
        """Counts of the running streams (``streams``: only those), by stream id."""
        p = self.pipeline
        found = {s.stream_id: p.analytics(s.stream_id) for s in p.streams()} if p else {}
        return {
            sid: a.counts.snapshot()
            for sid, a in found.items()
            if a is not None and (streams is None or sid in streams)
        }

    def spec(self, entry: dict[str, Any] | StreamConfig) -> tuple[StreamConfig, str]:
        """A validated stream and the URL FFmpeg will open (the URL policy applied)."""
        stream = entry if isinstance(entry, StreamConfig) else parse_stream(entry)
        srv = self.cfg.server
        url = check_stream_url(stream.url, Path(srv.media_root), srv.allow_http, srv.allowed_hosts)
        return stream, url

    async def stop(self) -> None:
        """Stop intake and drain (off the loop), then close every client with 1001."""
        if self.stopped:
            return
        self.stopped = True
        if self.pipeline is not None:
            drain = self.cfg.server.drain_timeout_s
            await asyncio.get_running_loop().run_in_executor(None, self.pipeline.stop, drain)
        if self.outputs is not None:  # flush the event store and sinks within the drain time
            drain = self.cfg.server.drain_timeout_s
            await asyncio.get_running_loop().run_in_executor(None, self.outputs.close, drain)
        await asyncio.sleep(0)  # deliver what the drain handed over
        if self.hub is not None:
            for client in list(self.hub.clients):
                client.wake.set()
            await asyncio.sleep(0.05)
            for client in list(self.hub.clients):
                if client.close is not None:
                    with contextlib.suppress(Exception):
                        await client.close(CLOSE_GOING_AWAY)
                self.hub.disconnect(client)


def stream_status(stream: LiveStream, rates: dict[str, float], errors: int = 0) -> dict[str, Any]:
    return {
        "id": stream.spec.id,
        "url": stream.url_public,
        "state": str(stream.state),
        "last_error": stream.last_error or None,
        "last_error_at": round(stream.last_error_at, 3) if stream.last_error else None,
        "width": stream.width,
        "height": stream.height,
        "target_fps": stream.spec.fps,
        "decode_fps": round(rates.get("decode_fps", 0.0), 2),
        "infer_fps": round(rates.get("infer_fps", 0.0), 2),
        "frames_decoded": stream.frames_decoded,
        "frames_inferred": stream.frames_inferred,
        "drops": stream.slot.dropped,
        "skipped": stream.gate.skipped,
        "reconnects": stream.reconnects,
        "decode_errors": stream.decode_errors,
        "errors": errors,
        "queue_depth": stream.slot.depth,
    }


def _presented_key(headers: Any, query: Any = None) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return str(key)
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    if query is not None and query.get("token"):
        return str(query.get("token"))
    return None


def create_app(cfg: VigilConfig) -> FastAPI:
    rt = _Runtime(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        trim = cfg.server.malloc_trim_interval_s
        trimmer = asyncio.create_task(trim_periodically(trim)) if trim > 0 else None
        yield
        if trimmer is not None:
            trimmer.cancel()
        await rt.stop()

    app = FastAPI(title="Vigil", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=cfg.server.max_body_kb * 1024)
    app.state.runtime = rt
    install_errors(app, rt.log)
    auth_errors = (401, 403) if rt.keys.enabled else ()
    # Documents the key (X-API-Key, or Authorization: Bearer) where one is required; the
    # check itself is `authorize`, which also takes ?token= on the WebSocket.
    security = (
        [Security(APIKeyHeader(name="X-API-Key", auto_error=False)),
         Security(HTTPBearer(auto_error=False))]
        if rt.keys.enabled
        else []
    )  # fmt: skip
    read_errors = auth_errors if cfg.auth.protect_reads else ()

    def authorize(request: Request) -> bytes | str:
        if not rt.keys.enabled:
            return request.client.host if request.client else "anonymous"
        key = _presented_key(request.headers)
        if key is None:
            raise HTTPException(401, "an API key is required (X-API-Key header)")
        if not rt.keys.check(key):
            raise HTTPException(403, "the API key is not valid")
        return digest(key)

    def read_access(request: Request) -> None:
        if cfg.auth.protect_reads:
            authorize(request)

    def mutation(request: Request) -> None:
        who = authorize(request)
        if not rt.limiter.allow(who):
            raise HTTPException(429, "too many changes; slow down")

    read_deps = [*(security if cfg.auth.protect_reads else []), Depends(read_access)]
    mutation_deps = [*security, Depends(mutation)]

    def pipeline() -> LivePipeline:
        if rt.pipeline is None:
            raise HTTPException(503, "not ready")
        return rt.pipeline

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz() -> JSONResponse:
        p = rt.pipeline
        ok = p is not None and p.ready and not rt.stopped
        body: dict[str, Any] = {"ready": ok, "model": rt.model}
        if rt.outputs is not None:  # the event outputs' state: the server stays ready without them
            body["outputs"] = rt.outputs.status()
        if p is not None and p.failure:
            body["reason"] = p.failure
        elif rt.stopped:
            body["reason"] = "shutting down"
        elif not ok:
            body["reason"] = "starting"
        return JSONResponse(body, status_code=200 if ok else 503)

    metric_errors = auth_errors if cfg.auth.protect_metrics else ()

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                  "description": "Prometheus text exposition format 0.0.4"},
            **responses(*metric_errors),
        },
    )  # fmt: skip
    async def metrics(request: Request) -> Response:
        if cfg.auth.protect_metrics:
            authorize(request)
        if rt.hub is not None:
            rt.metrics.ws_clients.set(len(rt.hub.clients))
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get(
        "/api/streams",
        dependencies=read_deps,
        response_model=list[StreamStatus],
        responses=responses(*read_errors, 503),
    )
    async def list_streams() -> list[dict[str, Any]]:
        p = pipeline()
        return [stream_status(s, p.rates(s.spec.id), p.errors(s.spec.id)) for s in p.streams()]

    @app.get(
        "/api/streams/{stream_id}",
        dependencies=read_deps,
        response_model=StreamStatus,
        responses=responses(*read_errors, 404, 422, 503),
    )
    async def get_stream(stream_id: str) -> dict[str, Any]:
        p = pipeline()
        s = p.get(stream_id)
        if s is None:
            raise HTTPException(404, f"no stream {_quoted(stream_id)}")
        return stream_status(s, p.rates(stream_id), p.errors(stream_id))

    @app.post(
        "/api/streams",
        status_code=201,
        dependencies=mutation_deps,
        response_model=StreamStatus,
        responses=responses(400, *auth_errors, 409, 413, 422, 429, 503),
    )
    async def add_stream(body: StreamIn) -> dict[str, Any]:  # type: ignore[valid-type]
        p = pipeline()
        spec, url = rt.spec(cast(BaseModel, body).model_dump())
        # add_stream checks and inserts under one lock: one of two racing POSTs gets 409.
        stream = await asyncio.get_running_loop().run_in_executor(None, p.add_stream, spec, url)
        return stream_status(stream, {})

    @app.delete(
        "/api/streams/{stream_id}",
        status_code=204,
        dependencies=mutation_deps,
        response_class=Response,
        responses=responses(*auth_errors, 404, 422, 429, 503),
    )
    async def remove_stream(stream_id: str) -> Response:
        p = pipeline()
        # One atomic pop: of two racing DELETEs exactly one gets 204, the other 404.
        removed = await asyncio.get_running_loop().run_in_executor(None, p.remove_stream, stream_id)
        if not removed:
            raise HTTPException(404, f"no stream {_quoted(stream_id)}")
        if rt.hub is not None:
            rt.hub.forget_stream(stream_id)
        if rt.outputs is not None:
            rt.outputs.forget_stream(stream_id)
        return Response(status_code=204)

    app.include_router(rules_router(pipeline, read_access, mutation))
    app.include_router(events_router(pipeline, rt.event_store, read_access, mutation))

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        if rt.keys.enabled:
            key = _presented_key(socket.headers, socket.query_params)
            if key is None or not rt.keys.check(key):
                await socket.close(code=1008)  # before accept: the handshake gets HTTP 403
                return
        hub = rt.hub
        if hub is None or rt.stopped:
            await socket.close(code=1013)
            return
        await session(socket, hub, cfg.server, rt.metrics.ws_refused, rt.log, lambda: rt.stopped)

    return app


def _quoted(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
