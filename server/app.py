"""The FastAPI application: REST for streams, health, metrics, and the WebSocket hub; the rules,
events and counts routes (``routes_rules``, ``routes_events``) and the event outputs (event
store, MQTT, webhooks: ``outputs``) are wired in here. The streams live behind a
:class:`server.backend.StreamBackend`: this process's pipeline (``vigil serve``) or, given a
``backend_factory``, a cluster's desired state (``vigil gateway``) with the same REST, WebSocket
protocol, auth and metrics.

The event loop only moves data. Decode, inference and tracking run in the pipeline's threads;
their results reach the loop through one bounded handoff (``Runtime.handoff``): at most
``HANDOFF_LIMIT`` messages may be scheduled and not yet delivered, beyond that new ones are
dropped and counted, so a stalled loop can never make the pipeline queue without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel

from pipeline.config import StreamConfig, VigilConfig, parse_stream
from pipeline.live import LivePipeline, build_engine_low_priority
from pipeline.live_step import Published, ThrottledLog
from pipeline.wiring import build_decode
from server.auth import ApiKeys, RateLimiter, digest
from server.backend import LocalStreams, StreamBackend
from server.dashboard import install as install_dashboard
from server.errors import Access, responses
from server.errors import install as install_errors
from server.event_store import EventStore
from server.http_guard import BodyLimit
from server.hub import Hub
from server.memory import trim_periodically
from server.metrics import Metrics
from server.metrics_events import EventsCollector
from server.outputs import EventOutputs
from server.preview import MJPEG_BOUNDARY, PreviewEncoder, PreviewMetrics, mjpeg_parts
from server.routes_capacity import capacity_router
from server.routes_events import events_router
from server.routes_rules import rules_router
from server.routes_session import SessionInfo, session_router
from server.schema import Health, Ready, StreamStatus, rest_model
from server.tokens import WS_PROTOCOL, SessionTokens, load_secret, ws_token
from server.urls import check_stream_url
from server.ws import session

HANDOFF_LIMIT = 1024
CLOSE_GOING_AWAY = 1001


StreamIn = rest_model(StreamConfig, "StreamIn")


class Runtime:
    """Everything the app owns while it runs. ``backend_factory`` (run off the loop at start-up)
    replaces the local pipeline with another :class:`StreamBackend`; it feeds the hub through
    :meth:`handoff`, creates the hub with :meth:`make_hub`, and may set :attr:`outputs` (the
    event store a gateway writes)."""

    def __init__(
        self, cfg: VigilConfig, backend_factory: Callable[[Runtime], StreamBackend] | None = None
    ) -> None:
        self.cfg = cfg
        self.keys = ApiKeys(cfg.auth)
        self.limiter = RateLimiter(cfg.auth.mutations_per_minute)
        self.metrics = Metrics(None if backend_factory else lambda: self.pipeline)
        self.backend_factory = backend_factory
        self.backend: StreamBackend | None = None
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
        self.tokens = SessionTokens(
            load_secret(cfg.dashboard), cfg.dashboard.token_ttl_s, self.keys.digests
        )
        self.preview: PreviewEncoder | None = None  # a local pipeline's, when previews are on
        self._previews: dict[str, bytes] = {}  # encoded, not yet on the loop: latest per stream
        self._previews_lock = threading.Lock()

    def handoff(self, msg: Published) -> None:
        """Called from the inference thread (or a gateway's reader): events to the store and
        sinks (bounded buffers; a gateway's go there through the consumer group instead, once
        across gateways), then schedule delivery on the loop; never blocks."""
        if msg.events and self.outputs is not None and self.backend_factory is None:
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
        if self.hub is not None and self.backend is not None and self.backend.has(msg.stream):
            self.hub.publish(msg)

    def make_hub(self, class_names: list[str] | tuple[str, ...]) -> Hub:
        self.hub = Hub(
            self.cfg.server.ws_queue,
            class_names,
            on_sent=self.metrics.latency.observe,
            on_lost=self.metrics.ws_lost.inc,
            max_list=self.cfg.live.max_streams,
            counts=self.counts,
            on_watch=None if self.preview is None else self.preview.set_watched,
        )
        return self.hub

    def _preview_out(self, stream: str, data: bytes) -> None:
        """From the encoder thread: keep the latest per stream and schedule one drain on the
        loop (at most one pending), so a stalled loop holds one preview per stream at most."""
        with self._previews_lock:
            first = not self._previews
            self._previews[stream] = data
        if first and self.loop is not None:
            self.loop.call_soon_threadsafe(self._deliver_previews)

    def _deliver_previews(self) -> None:
        with self._previews_lock:
            ready, self._previews = self._previews, {}
        for stream, data in ready.items():
            if self.hub is not None and self.backend is not None and self.backend.has(stream):
                self.hub.publish_preview(stream, data)

    def readiness(self) -> tuple[bool, str]:
        """(ready, the reason when not): the backend's failure first, then shutting down."""
        ok, reason = self.backend.readiness() if self.backend is not None else (False, "")
        if ok and not self.stopped:
            return True, ""
        return False, reason or ("shutting down" if self.stopped else "starting")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.backend_factory is not None:
            self.backend = await self.loop.run_in_executor(None, self.backend_factory, self)
            return
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
        if cfg.dashboard.preview_fps > 0:
            metrics = PreviewMetrics(self.metrics.registry)
            self.preview = PreviewEncoder(cfg.dashboard, self._preview_out, metrics)
            self.preview.start()
        self.make_hub(engine.info.class_names)
        self.pipeline = LivePipeline(
            cfg, self.handoff, engine, observe_stage=self.metrics.observe_stage
        )
        if self.preview is not None:
            self.pipeline.frame_tap = self.preview.offer
        outputs = EventOutputs(cfg, lambda: self.counts(None), self.pipeline.guard.log)
        await self.loop.run_in_executor(None, outputs.start)
        self.outputs = outputs
        for entry in cfg.streams:
            self.pipeline.add_stream(*self.spec(entry))
        self.pipeline.start()
        self.backend = LocalStreams(self.pipeline)

    def event_store(self) -> EventStore | None:
        return None if self.outputs is None else self.outputs.store

    def counts(self, streams: frozenset[str] | None) -> dict[str, Any]:
        """Counts of the streams (``streams``: only those), by stream id, from the backend."""
        return {} if self.backend is None else self.backend.counts(streams)

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
        if self.backend is not None:
            drain = self.cfg.server.drain_timeout_s
            await asyncio.get_running_loop().run_in_executor(None, self.backend.stop, drain)
        if self.preview is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.preview.stop)
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


def create_app(
    cfg: VigilConfig, backend_factory: Callable[[Runtime], StreamBackend] | None = None
) -> FastAPI:
    """The app of ``vigil serve`` (a local pipeline), or with ``backend_factory`` of any other
    :class:`StreamBackend` (``vigil gateway``)."""
    rt = Runtime(cfg, backend_factory)

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
        owner = rt.tokens.owner(key)  # a session token (the dashboard's) stands for its key
        if owner is not None:
            return owner
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

    def backend() -> StreamBackend:
        if rt.backend is None:
            raise HTTPException(503, "not ready")
        return rt.backend

    def pipeline() -> LivePipeline:
        if rt.pipeline is None:
            if rt.backend_factory is not None:
                raise HTTPException(
                    503,
                    "a gateway runs no pipeline: capacity and motion are "
                    "each worker's own (its /api/capacity)",
                )
            raise HTTPException(503, "not ready")
        return rt.pipeline

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz() -> JSONResponse:
        ok, reason = rt.readiness()
        body: dict[str, Any] = {"ready": ok, "model": rt.model}
        if rt.outputs is not None:  # the event outputs' state: the server stays ready without them
            body["outputs"] = rt.outputs.status()
        if reason:
            body["reason"] = reason
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
        return backend().list()

    @app.get(
        "/api/streams/{stream_id}",
        dependencies=read_deps,
        response_model=StreamStatus,
        responses=responses(*read_errors, 404, 422, 503),
    )
    async def get_stream(stream_id: str) -> dict[str, Any]:
        s = backend().status(stream_id)
        if s is None:
            raise HTTPException(404, f"no stream {_quoted(stream_id)}")
        return s

    @app.post(
        "/api/streams",
        status_code=201,
        dependencies=mutation_deps,
        response_model=StreamStatus,
        responses=responses(400, *auth_errors, 409, 413, 422, 429, 503),
    )
    async def add_stream(body: StreamIn) -> dict[str, Any]:  # type: ignore[valid-type]
        b = backend()
        spec, url = rt.spec(cast(BaseModel, body).model_dump())
        # the backend checks and inserts atomically: one of two racing POSTs gets 409.
        return await asyncio.get_running_loop().run_in_executor(None, b.add, spec, url)

    @app.delete(
        "/api/streams/{stream_id}",
        status_code=204,
        dependencies=mutation_deps,
        response_class=Response,
        responses=responses(*auth_errors, 404, 422, 429, 503),
    )
    async def remove_stream(stream_id: str) -> Response:
        b = backend()
        # One atomic removal: of two racing DELETEs exactly one gets 204, the other 404.
        removed = await asyncio.get_running_loop().run_in_executor(None, b.remove, stream_id)
        if not removed:
            raise HTTPException(404, f"no stream {_quoted(stream_id)}")
        if rt.hub is not None:
            rt.hub.forget_stream(stream_id)
        if rt.outputs is not None:
            rt.outputs.forget_stream(stream_id)
        return Response(status_code=204)

    def session_info() -> SessionInfo:
        previews = backend_factory is None and cfg.dashboard.preview_fps > 0
        classes = [] if rt.hub is None else rt.hub.class_names
        return SessionInfo(auth=rt.keys.enabled, protect_reads=cfg.auth.protect_reads,
                           previews=previews, classes=classes)  # fmt: skip

    presented = lambda r: _presented_key(r.headers)  # noqa: E731
    app.include_router(
        session_router(rt.tokens, session_info, authorize, rt.limiter.allow, presented, security)
    )

    # Not in the OpenAPI description: an endless multipart response (README "Dashboard").
    @app.get("/api/streams/{stream_id}/preview.mjpeg", dependencies=read_deps,
             include_in_schema=False)  # fmt: skip
    async def preview_mjpeg(stream_id: str) -> StreamingResponse:
        if not backend().has(stream_id):
            raise HTTPException(404, f"no stream {_quoted(stream_id)}")
        if rt.preview is None or rt.hub is None:
            raise HTTPException(503, "previews are not available here (dashboard.preview_fps)")
        if len(rt.hub.clients) >= cfg.server.ws_max_clients:
            raise HTTPException(503, f"too many clients ({cfg.server.ws_max_clients})")
        media = f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"
        return StreamingResponse(mjpeg_parts(rt.hub, stream_id), media_type=media)

    access = Access(read_deps, mutation_deps, read_errors, auth_errors)
    app.include_router(rules_router(backend, access))
    app.include_router(events_router(backend, rt.event_store, rt.counts, access))
    app.include_router(capacity_router(pipeline, access))

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        # A browser offers "vigil.v1" and "vigil.token.<session token>" as subprotocols: the
        # token never appears in a URL or a log. (?token=<key> and the headers still work.)
        token, offered = ws_token(socket.headers.get("sec-websocket-protocol"))
        if rt.keys.enabled:
            key = token or _presented_key(socket.headers, socket.query_params)
            if key is None or not (rt.tokens.owner(key) is not None or rt.keys.check(key)):
                await socket.close(code=1008)  # before accept: the handshake gets HTTP 403
                return
        hub = rt.hub
        if hub is None or rt.stopped:
            await socket.close(code=1013)
            return
        await session(socket, hub, cfg.server, rt.metrics.ws_refused, rt.log, lambda: rt.stopped,
                      subprotocol=WS_PROTOCOL if offered else None)  # fmt: skip

    if cfg.dashboard.enabled:
        install_dashboard(app)
    return app


def _quoted(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
