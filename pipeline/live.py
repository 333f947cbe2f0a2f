"""The live pipeline: many streams, one batched inference loop, per-stream trackers.

    LiveStream threads (FFmpeg -> RateGate -> LatestSlot)  x N
        -> inference thread: CrossStreamBatcher picks ready slots (round-robin, one frame per
           stream) -> Engine (one detector call, one embedder call for the whole batch)
           -> per-stream tracker -> v1 message encoded once -> ``publish(Published)``
    watchdog thread: stall checks, per-second rates

``publish`` is called from the inference thread and must not block (the server hands it to the
event loop through a bounded handoff). Nothing here queues frames: a slow consumer or an
overloaded CPU shows up as LATEST-slot drops, never as growing latency.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from analytics.rules import LineRule, ZoneRule
from analytics.stream import StreamAnalytics
from pipeline.batcher import Backoff, CrossStreamBatcher
from pipeline.config import StreamConfig, VigilConfig
from pipeline.engine import Engine
from pipeline.live_source import LiveStream, StreamState
from pipeline.live_step import Published, StepGuard, StreamRuntime, run_step
from pipeline.qos import Capacity
from pipeline.schedule import DetectSchedule
from pipeline.types import Frame, VigilError
from pipeline.wiring import build_analytics, build_decode, build_engine, build_tracker
from trackers.base import can_predict


class StreamConflict(VigilError):
    """The stream id is taken, or the pipeline already runs ``live.max_streams`` streams."""


class OverCapacity(StreamConflict):
    """Admission control: the stream would push the machine past its measured capacity."""


class LivePipeline:
    """The streams, the batcher and the inference thread of ``vigil serve``.

    ``failure`` is empty while the inference thread runs; if it ever dies it says why, and
    ``ready`` turns False (the server's /readyz then answers 503 with that reason).
    """

    def __init__(
        self,
        cfg: VigilConfig,
        publish: Callable[[Published], None],
        engine: Engine | None = None,
        observe_stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine or build_engine_low_priority(cfg)
        self.decode = build_decode(cfg.source)  # one FFmpeg and decode path for every stream
        self._publish = publish
        self._observe = observe_stage
        self._batcher = CrossStreamBatcher(cfg.live.max_batch, cfg.live.max_wait_ms)
        self._wakeup = threading.Condition()
        self._streams: dict[str, StreamRuntime] = {}
        self.guard = StepGuard()
        self.failure = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._infer_loop, name="vigil-infer", daemon=True),
            threading.Thread(target=self._watchdog, name="vigil-watchdog", daemon=True),
        ]
        self._started = False
        self.capacity = Capacity(cfg, self.engine.embedder is not None)
        self._busy_s = 0.0  # inference-thread seconds spent in steps (the watchdog reads it)
        # Called on the inference thread with every frame a step published (after its
        # message): the server's preview gate (server/preview.py). Must return at once.
        self.frame_tap: Callable[[Frame], Any] | None = None

    @property
    def ready(self) -> bool:
        """Started, not stopping, and the inference thread alive."""
        return self._started and not self._stopping.is_set() and not self.failure

    # -- streams ------------------------------------------------------------------------
    def add_stream(
        self,
        spec: StreamConfig,
        url: str | None = None,
        first_seq: int = 0,
        admission: bool = False,
        counts_epoch: int = 0,
    ) -> LiveStream:
        """Start ``spec``; ``url`` is what FFmpeg opens (default ``spec.url``). Its messages are
        numbered from ``first_seq`` (a camera taken over from another worker continues its
        numbering). The check and the insertion are one step under the lock: of two concurrent
        adds of one id, exactly one wins and the other gets :class:`StreamConflict`. With
        ``admission`` (a REST request) a stream that does not fit the measured capacity gets
        :class:`OverCapacity` with the reason, or starts at a lower fps when its ``min_fps``
        allows (the returned stream's ``spec.fps`` says which). Its counts start as reset number
        ``counts_epoch`` (a cluster camera's, from Redis: ``analytics.counts``)."""
        names = self.engine.info.class_names
        analytics = build_analytics(self.cfg, spec, names, live=True)
        if counts_epoch:
            analytics.reset_counts(time.time(), counts_epoch)
        with self._lock:
            if spec.id in self._streams:
                raise StreamConflict(f"stream {spec.id!r} already exists")
            s = self.cfg.live
            if len(self._streams) >= s.max_streams:
                raise StreamConflict(f"at most {s.max_streams} streams (live.max_streams)")
            tracker = build_tracker(self.cfg.tracker, spec.tracker)
            skips = spec.detect_every > 1 or spec.motion.enabled
            if skips and not can_predict(tracker):
                raise VigilError(
                    f"stream {spec.id}: tracker {spec.tracker or self.cfg.tracker.name} cannot "
                    "predict frames the detector skips (detect_every, motion): choose deepsort "
                    "or bytetrack"
                )
            if admission:
                fps, why = self.capacity.admit(spec, list(self._streams.values()))
                if why:
                    raise OverCapacity(why)
                spec = replace(spec, fps=fps)
            if tracker.uses_appearance and self.engine.embedder is None:
                raise VigilError(
                    f"stream {spec.id}: tracker {spec.tracker or self.cfg.tracker.name} needs "
                    "appearance, but this server was started without an embedder (choose an "
                    "appearance tracker in tracker.name or in a configured stream)"
                )
            stream = LiveStream(
                spec,
                url,
                self._wakeup,
                stall_timeout_s=s.stall_timeout_s,
                timeout_s=self.cfg.source.timeout_s,
                backoff=Backoff(s.backoff_initial_s, s.backoff_max_s),
                allow_http=self.cfg.server.allow_http,
                decode=self.decode,
                mask_query=self.cfg.server.redact_query,
            )
            schedule = DetectSchedule(spec.detect_every, spec.motion)
            self._streams[spec.id] = StreamRuntime(
                stream, tracker, analytics, seq=first_seq, schedule=schedule
            )
        stream.start()
        return stream

    def remove_stream(self, stream_id: str) -> bool:
        """Stop and forget a stream; False if there was none (so of two concurrent removals
        exactly one gets True)."""
        with self._lock:
            st = self._streams.pop(stream_id, None)
        if st is None:
            return False
        st.removed = True  # a batch in flight must not publish for it any more
        st.stream.stop()
        self.capacity.forget(stream_id)
        return True

    def streams(self) -> list[LiveStream]:
        with self._lock:
            return [st.stream for st in self._streams.values()]

    def get(self, stream_id: str) -> LiveStream | None:
        with self._lock:
            st = self._streams.get(stream_id)
        return None if st is None else st.stream

    def analytics(self, stream_id: str) -> StreamAnalytics | None:
        with self._lock:
            st = self._streams.get(stream_id)
        return None if st is None else st.analytics

    def set_rules(
        self, stream_id: str, lines: tuple[LineRule, ...], zones: tuple[ZoneRule, ...]
    ) -> StreamConfig:
        """Replace a stream's lines and zones while it runs (applied from its next frame);
        returns its updated spec. KeyError for an unknown stream; VigilError for bad rules."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None or st.analytics is None:
                raise KeyError(stream_id)
            st.analytics.set_rules(lines, zones)
            st.stream.spec = replace(st.stream.spec, lines=lines, zones=zones)
            spec: StreamConfig = st.stream.spec
        return spec

    def errors(self, stream_id: str) -> int:
        """Tracker/encoder/publish failures of the stream so far."""
        with self._lock:
            st = self._streams.get(stream_id)
        return st.errors if st else 0

    def rates(self, stream_id: str) -> dict[str, float]:
        with self._lock:
            st = self._streams.get(stream_id)
        return dict(st.rates) if st else {}

    def runtime(self, stream_id: str) -> StreamRuntime | None:
        """The stream's inference-side state (schedule counters, tracker), or None."""
        with self._lock:
            return self._streams.get(stream_id)

    def runtimes(self) -> list[StreamRuntime]:
        with self._lock:
            return list(self._streams.values())

    def capacity_report(self, **request: Any) -> dict[str, Any]:
        """``GET /api/capacity`` (see :meth:`pipeline.qos.Capacity.report`)."""
        return self.capacity.report(self.runtimes(), **request)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.capacity.enabled and self.cfg.capacity.calibrate:
            self.capacity.calibrate(self.engine)
        for t in self._threads:
            t.start()
        self._started = True

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop intake (every FFmpeg child ends), let the batch in flight finish, join."""
        for stream in self.streams():
            stream.stop()
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        deadline = time.monotonic() + drain_timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- threads ------------------------------------------------------------------------
    def _watchdog(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            with self._lock:
                states = list(self._streams.values())
            for st in states:
                st.stream.check_stall(now)
            if now - last >= 1.0:
                busy, self._busy_s = self._busy_s, 0.0
                self.capacity.tick(states, now - last, busy)
                for st in states:
                    dec, inf = st.stream.frames_decoded, st.stream.frames_inferred
                    st.rates = {
                        "decode_fps": (dec - st.last_counts[0]) / (now - last),
                        "infer_fps": (inf - st.last_counts[1]) / (now - last),
                    }
                    st.last_counts = (dec, inf)
                last = now

    def _collect(self) -> list[tuple[StreamRuntime, Frame]]:
        """Block until the batcher says a batch is due; take one frame from each chosen slot."""
        with self._wakeup:
            while not self._stopping.is_set():
                with self._lock:
                    states = list(self._streams.values())
                ready = {}
                for st in states:
                    t = st.stream.slot.ready_since()
                    if t is not None:
                        ready[st.stream.spec.id] = (st, t)
                oldest = min((t for _, t in ready.values()), default=None)
                decision = self._batcher.decide(len(ready), oldest, time.time())
                if decision.emit:
                    chosen = self._batcher.order(list(ready))
                    taken = [(ready[i][0], ready[i][0].stream.slot.take()) for i in chosen]
                    return [(st, f) for st, f in taken if f is not None]
                self._wakeup.wait(min(decision.wait_s, 0.5))
        return []

    def _infer_loop(self) -> None:
        try:
            lower_thread_priority(self.cfg.live.inference_nice)
            while not self._stopping.is_set():
                batch = self._collect()
                if not batch:
                    continue
                t0 = time.perf_counter()
                counts: dict[str, int] = {}
                timings = run_step(batch, self.engine, self._publish, self.guard, counts)
                if counts:
                    self.capacity.model.observe_step(
                        counts["frames"], counts["detected"], counts["detections"], timings
                    )
                self._busy_s += time.perf_counter() - t0
                tap = self.frame_tap
                if tap is not None:
                    for st, frame in batch:
                        if not st.removed:
                            tap(frame)
                if self._observe is not None:
                    for name, ms in timings.items():
                        self._observe(name, ms / len(batch))
        except BaseException as e:  # the guard keeps per-stream failures out of here
            self.failure = f"inference thread died: {type(e).__name__}: {e}".splitlines()[0]
            print(f"vigil: {self.failure}", file=sys.stderr, flush=True)


def lower_thread_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: per thread; threads it creates inherit
    it). A no-op where unsupported."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


def build_engine_low_priority(cfg: VigilConfig) -> Engine:
    """Create the Engine on a fresh thread whose niceness is lowered first, so the runtime's
    worker threads (created with the sessions) inherit the lower priority."""
    box: dict[str, Any] = {}

    def build() -> None:
        lower_thread_priority(cfg.live.inference_nice)
        try:
            box["engine"] = build_engine(cfg)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=build, name="vigil-engine-init")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    engine: Engine = box["engine"]
    return engine


def live_states() -> list[str]:
    return [str(s) for s in StreamState]
