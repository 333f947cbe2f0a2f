"""The FastAPI application: REST for streams, health, metrics, and the WebSocket hub.

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
from typing import Any, Protocol, cast

from fastapi import Depends, FastAPI, HTTPException, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect, WebSocketState

from pipeline.config import StreamConfig, VigilConfig, parse_stream
from pipeline.live import LivePipeline, build_engine_low_priority
from pipeline.live_source import LiveStream
from pipeline.live_step import Published
from pipeline.types import VigilError
from server.auth import ApiKeys, RateLimiter, digest
from server.hub import Hub
from server.metrics import Metrics
from server.schema import rest_model
from server.urls import check_stream_url

HANDOFF_LIMIT = 1024
CLOSE_GOING_AWAY = 1001


StreamIn = rest_model(StreamConfig, "StreamIn")


class StreamExists(Exception):
    """Adding a stream whose id is taken."""


class BackendUnavailable(Exception):
    """The backend cannot change anything now (e.g. Redis is away): HTTP 503, nothing changed."""


class StreamBackend(Protocol):
    """Where the streams live: this process's live pipeline (``vigil serve``, :class:`LocalStreams`)
    or a cluster's desired state in Redis (``vigil gateway``). ``add``, ``remove`` and ``stop``
    may block (they run off the loop); the others answer from memory."""

    def readiness(self) -> tuple[bool, str]: ...
    def has(self, stream_id: str) -> bool: ...
    def list(self) -> list[dict[str, Any]]: ...
    def status(self, stream_id: str) -> dict[str, Any] | None: ...
    def add(self, spec: StreamConfig, url: str) -> dict[str, Any]: ...  # or StreamExists
    def remove(self, stream_id: str) -> bool: ...  # False: no such stream
    def stop(self, drain_timeout_s: float) -> None: ...


class Runtime:
    """Everything the app owns while it runs. ``backend_factory`` (run off the loop at start-up)
    replaces the local pipeline with another :class:`StreamBackend`; it feeds the hub through
    :meth:`handoff` and may create the hub with :meth:`make_hub`."""

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
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.stopped = False
        self.model: dict[str, str] = {}

    def handoff(self, msg: Published) -> None:
        """Called from the inference thread: schedule delivery on the loop, never block."""
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
        )
        return self.hub

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
        self.model = {"name": m.name, "version": m.version, "precision": m.precision,
                      "backend": m.backend, "file": m.file, "sha256": m.sha256}  # fmt: skip
        self.metrics.model.info(self.model)
        print(f"model {m.name} {m.version} ({m.precision}, {m.backend}, {m.file}, "
              f"sha256 {m.sha256[:12]})", flush=True)  # fmt: skip
        self.make_hub(engine.info.class_names)
        self.pipeline = LivePipeline(
            cfg, self.handoff, engine, observe_stage=self.metrics.observe_stage
        )
        for entry in cfg.streams:
            self.pipeline.add_stream(*self.spec(entry))
        self.pipeline.start()
        self.backend = LocalStreams(self.pipeline)

    def spec(self, entry: dict[str, Any] | StreamConfig) -> tuple[StreamConfig, str]:
        """A validated stream and the URL FFmpeg will open (the URL policy applied)."""
        stream = entry if isinstance(entry, StreamConfig) else parse_stream(entry)
        root = Path(self.cfg.server.media_root)
        return stream, check_stream_url(stream.url, root, self.cfg.server.allow_http)

    async def stop(self) -> None:
        """Stop intake and drain (off the loop), then close every client with 1001."""
        if self.stopped:
            return
        self.stopped = True
        if self.backend is not None:
            drain = self.cfg.server.drain_timeout_s
            await asyncio.get_running_loop().run_in_executor(None, self.backend.stop, drain)
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
        "url": stream.url_redacted,
        "state": str(stream.state),
        "last_error": stream.last_error or None,
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
        "errors": errors,
        "queue_depth": stream.slot.depth,
    }


class LocalStreams:
    """The :class:`StreamBackend` of ``vigil serve``: this process's :class:`LivePipeline`."""

    def __init__(self, pipeline: LivePipeline) -> None:
        self.pipeline = pipeline

    def readiness(self) -> tuple[bool, str]:
        return self.pipeline.ready, self.pipeline.failure

    def has(self, stream_id: str) -> bool:
        return self.pipeline.get(stream_id) is not None

    def status(self, stream_id: str) -> dict[str, Any] | None:
        p = self.pipeline
        s = p.get(stream_id)
        return None if s is None else stream_status(s, p.rates(stream_id), p.errors(stream_id))

    def list(self) -> list[dict[str, Any]]:
        p = self.pipeline
        return [stream_status(s, p.rates(s.spec.id), p.errors(s.spec.id)) for s in p.streams()]

    def add(self, spec: StreamConfig, url: str) -> dict[str, Any]:
        if self.has(spec.id):
            raise StreamExists(spec.id)
        return stream_status(self.pipeline.add_stream(spec, url), {})

    def remove(self, stream_id: str) -> bool:
        try:
            self.pipeline.remove_stream(stream_id)
        except KeyError:
            return False
        return True

    def stop(self, drain_timeout_s: float) -> None:
        self.pipeline.stop(drain_timeout_s)


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
    :class:`StreamBackend` (``vigil gateway``): same REST, WebSocket protocol, auth and metrics."""
    rt = Runtime(cfg, backend_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app = FastAPI(title="Vigil", version="0.1.0", lifespan=lifespan)
    app.state.runtime = rt

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

    def backend() -> StreamBackend:
        if rt.backend is None:
            raise HTTPException(503, "not ready")
        return rt.backend

    @app.exception_handler(VigilError)
    async def vigil_error(_: Request, exc: VigilError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, reason = rt.readiness()
        body: dict[str, Any] = {"ready": ok, "model": rt.model}
        if reason:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if cfg.auth.protect_metrics:
            authorize(request)
        if rt.hub is not None:
            rt.metrics.ws_clients.set(len(rt.hub.clients))
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/streams", dependencies=[Depends(read_access)])
    async def list_streams() -> list[dict[str, Any]]:
        return backend().list()

    @app.get("/api/streams/{stream_id}", dependencies=[Depends(read_access)])
    async def get_stream(stream_id: str) -> dict[str, Any]:
        s = backend().status(stream_id)
        if s is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return s

    @app.post("/api/streams", status_code=201, dependencies=[Depends(mutation)])
    async def add_stream(body: StreamIn) -> dict[str, Any]:  # type: ignore[valid-type]
        b = backend()
        spec, url = rt.spec(cast(BaseModel, body).model_dump())
        try:
            if b.has(spec.id):
                raise StreamExists(spec.id)
            return await asyncio.get_running_loop().run_in_executor(None, b.add, spec, url)
        except StreamExists:
            raise HTTPException(409, f"stream {spec.id!r} already exists") from None

    @app.delete("/api/streams/{stream_id}", status_code=204, dependencies=[Depends(mutation)])
    async def remove_stream(stream_id: str) -> Response:
        b = backend()
        loop = asyncio.get_running_loop()
        if not b.has(stream_id) or not await loop.run_in_executor(None, b.remove, stream_id):
            raise HTTPException(404, f"no stream {stream_id!r}")
        if rt.hub is not None:
            rt.hub.forget_stream(stream_id)
        return Response(status_code=204)

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
        await socket.accept()
        client = hub.connect(socket.send_text, socket.close)
        sender = asyncio.create_task(hub.sender(client))
        try:
            while True:
                hub.handle(client, await socket.receive_text())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.disconnect(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if socket.client_state is WebSocketState.CONNECTED and not rt.stopped:
                with contextlib.suppress(Exception):
                    await socket.close()

    return app
