"""Admission control and per-stream quality of service for the live pipeline.

:class:`Capacity` owns the :class:`pipeline.capacity.CostModel` of one pipeline and, once a
second (the pipeline's watchdog calls :meth:`Capacity.tick`):

- measures each stream: its decoder's CPU (``/proc`` of its FFmpeg child) per second and per
  megapixel, the share of its frames that went through the detector (``detect_every``, motion
  gating) and the boxes per detected frame;
- decides whether the pipeline is overloaded: the inference thread busy at least
  ``OVERLOAD_BUSY`` of the last second, or more than ``OVERLOAD_DROPS`` of the admitted frames
  replaced in their LATEST slots. Overloaded, it hands out fps by priority
  (:func:`pipeline.capacity.allocate`) within the measured budget and sets each stream's rate
  gate to it; when the requested rates all fit again, every stream gets its own fps back.

:meth:`Capacity.admit` prices a new stream before it starts (409 when it does not fit, or a
lower fps when its ``min_fps`` allows); :meth:`Capacity.report` is ``GET /api/capacity``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.capacity import (
    DEFAULT_SIZE,
    PRIOR_DETECTIONS,
    QOS_LOAD,
    CostModel,
    Demand,
    allocate,
    best_fps,
    fits,
    used,
)
from pipeline.config import StreamConfig, VigilConfig
from pipeline.live_step import StreamRuntime
from pipeline.types import Frame

MIN_SIGNAL_MS = 50.0  # predicted inference ms/s below which the busy ratio is not trusted
SCALE_RANGE = (0.5, 10.0)  # how far measurement may correct the model
SCALE_WEIGHT = 0.3  # of each second's ratio in the running correction
OVERLOAD_BUSY = 0.9  # the inference thread busy this share of a second: overloaded
OVERLOAD_DROPS = 0.02  # or this share of admitted frames dropped in the LATEST slots
UNKNOWN_SOURCE_FPS = 25.0  # decode rate assumed for an ``fps: 0`` stream not yet measured


@dataclass
class _Meter:
    """What was last read of one stream, and its running means."""

    pid: int = 0
    cpu_s: float = 0.0
    decoded: int = 0
    detected: int = 0
    skipped: int = 0
    detections: int = 0
    decode_ms_s: float = 0.0
    detected_share: float = -1.0  # < 0: not measured yet
    per_frame: float = -1.0  # detections per detected frame


def _size(running: Sequence[StreamRuntime], width: int, height: int) -> tuple[int, int]:
    """``width`` x ``height`` when given, else the running streams' mean size, else 640x480."""
    if width and height:
        return width, height
    sizes = np.array([(r.stream.width, r.stream.height) for r in running if r.stream.width])
    return (int(sizes[:, 0].mean()), int(sizes[:, 1].mean())) if len(sizes) else DEFAULT_SIZE


def _mix(old: float, new: float, weight: float) -> float:
    return new if old < 0 else old + weight * (new - old)


class Capacity:
    """Costs, admission and QoS of one live pipeline (thread-safe)."""

    def __init__(self, cfg: VigilConfig, embeds: bool) -> None:
        self.params = cfg.capacity
        self.max_batch = cfg.live.max_batch
        self.model = CostModel(cfg.capacity, cfg.live.max_batch, embeds)
        self.allocated: dict[str, float] = {}  # stream -> fps set by QoS (absent: its own)
        self.degraded = False
        self.busy = 0.0  # share of the last second the inference thread ran steps
        # measured inference-thread time / what the model predicts for the frames inferred:
        # corrects the model (contention, overheads it does not see) in admission and QoS
        self.scale = 1.0
        self._meters: dict[str, _Meter] = {}
        self._lock = threading.Lock()
        self._dropped = 0
        self._admitted = 0

    # -- measuring ----------------------------------------------------------------------
    def calibrate(self, engine: Any, runs: int = 3) -> None:
        """Time the engine on a synthetic 640x480 frame at batch 1 and ``live.max_batch``: the
        median of ``runs`` calls after one warm-up call."""
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
        for size in sorted({1, self.max_batch}):
            frames = [Frame("calibrate", i, 0.0, image) for i in range(size)]
            ms = []
            for _ in range(runs + 1):
                timings: dict[str, float] = {}
                engine.process(frames, timings)
                ms.append(sum(timings.get(k, 0.0) for k in ("preprocess", "infer", "nms")))
            self.model.observe_batch(size, float(np.median(ms[1:])))

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._meters.pop(stream_id, None)
            self.allocated.pop(stream_id, None)

    def _measure(self, st: StreamRuntime, dt: float) -> None:
        s, w = st.stream, self.params.smoothing * 4  # once a second: react within ~5 s
        m = self._meters.setdefault(s.stream_id, _Meter())
        pid, cpu = s.decode_cpu()
        decoded = s.frames_decoded
        if pid and pid == m.pid and decoded > m.decoded and cpu >= m.cpu_s:
            cpu_ms = (cpu - m.cpu_s) * 1e3
            self.model.observe_decode(s.width, s.height, s.codec, cpu_ms, decoded - m.decoded)
            m.decode_ms_s = _mix(m.decode_ms_s, cpu_ms / dt, min(1.0, 2 * w))
        m.pid, m.cpu_s, m.decoded = pid, cpu, decoded
        c = st.schedule.counts()
        skipped_total = c["predicted"] + c["idle"]
        done, skipped = c["detected"] - m.detected, skipped_total - m.skipped
        if done + skipped > 0:
            m.detected_share = _mix(m.detected_share, done / (done + skipped), w)
        if done > 0:
            m.per_frame = _mix(m.per_frame, (st.detections - m.detections) / done, w)
        m.detected, m.skipped, m.detections = c["detected"], skipped_total, st.detections

    # -- pricing ------------------------------------------------------------------------
    def _batch(self, streams: int) -> int:
        return max(1, min(streams, self.max_batch))

    def demand(self, st: StreamRuntime, streams: int) -> Demand:
        """What a running stream asks for (its own fps) and costs, at the batch size
        ``streams`` streams give."""
        spec, m = st.stream.spec, self._meters.get(st.stream.stream_id, _Meter())
        fps = spec.fps or (st.rates.get("decode_fps") or UNKNOWN_SOURCE_FPS)
        share = m.detected_share if m.detected_share >= 0 else 1.0 / spec.detect_every
        per = m.per_frame if m.per_frame >= 0 else PRIOR_DETECTIONS
        decode = m.decode_ms_s
        if decode <= 0:  # not measured yet: price its decoder from its size (or the default)
            w, h = (st.stream.width, st.stream.height) if st.stream.width else DEFAULT_SIZE
            decode = self.model.decode_ms(w, h, st.stream.codec) * fps
        frame_ms = self.model.frame_ms(share, per, self._batch(streams))
        return Demand(spec.id, fps, self._floor(spec, fps), spec.priority, frame_ms, decode)

    def candidate(
        self,
        spec: StreamConfig,
        streams: int,
        width: int = 0,
        height: int = 0,
        source_fps: float = 0.0,
        running: Sequence[StreamRuntime] = (),
        share: float | None = None,
    ) -> Demand:
        """A stream not started yet: its decoder priced at ``width`` x ``height`` (default: the
        mean of the running streams', else 640x480) and ``source_fps`` decoded frames per
        second (default: its fps); its detections per frame at the running streams' mean; the
        share of its frames detected ``share`` (default ``1 / detect_every``)."""
        width, height = _size(running, width, height)
        fps = spec.fps or source_fps or UNKNOWN_SOURCE_FPS
        decoded = source_fps or fps
        per = [m.per_frame for m in self._meters.values() if m.per_frame >= 0]
        if share is None:  # motion gating saves an amount only measurement knows
            share = 1.0 / spec.detect_every
        frame_ms = self.model.frame_ms(
            share, float(np.mean(per)) if per else PRIOR_DETECTIONS, self._batch(streams)
        )
        decode = self.model.decode_ms(width, height) * decoded
        return Demand(spec.id, fps, self._floor(spec, fps), spec.priority, frame_ms, decode)

    def _floor(self, spec: StreamConfig, fps: float) -> float:
        return min(fps, max(spec.min_fps, self.params.floor_fps))

    # -- admission ----------------------------------------------------------------------
    def admit(self, spec: StreamConfig, running: Sequence[StreamRuntime]) -> tuple[float, str]:
        """(fps to run ``spec`` at, "") when it fits: its own fps, or the highest fps down to
        its ``min_fps`` when that is above 0; else (0, why not)."""
        if not self.params.enabled:
            return spec.fps, ""
        with self._lock:
            return self._admit(spec, running)

    def _admit(self, spec: StreamConfig, running: Sequence[StreamRuntime]) -> tuple[float, str]:
        n = len(running) + 1
        demands = [self.demand(st, n) for st in running]
        new = self.candidate(spec, n, running=running)
        load = self.params.target_load / self.scale  # the measured correction: see tick
        if fits(self.model, demands, new, load) >= 1:
            return spec.fps, ""
        if spec.min_fps > 0:
            fps = best_fps(self.model, demands, new, load)
            if fps >= spec.min_fps:
                return fps, ""
        budget = self.model.budget(sum(d.decode_ms_s for d in demands) + new.decode_ms_s, load)
        free = max(0.0, budget - used(demands))
        return 0.0, (
            f"stream {spec.id!r} would overload this server: at {new.fps:g} fps it needs about "
            f"{new.fps * new.frame_ms:.0f} ms/s of inference time and {free:.0f} of "
            f"{budget:.0f} ms/s are free (capacity.target_load {self.params.target_load:g}); "
            "lower its fps, set "
            "min_fps to accept a lower rate, or add a machine"
        )

    # -- QoS ----------------------------------------------------------------------------
    def tick(self, states: Sequence[StreamRuntime], dt: float, busy_s: float) -> None:
        """Once a second from the watchdog: measure, then degrade by priority under overload
        or give the streams their own fps back when they all fit."""
        dropped = sum(st.stream.slot.dropped for st in states)
        admitted = sum(st.stream.slot.accepted for st in states)
        with self._lock:
            for st in states:
                self._measure(st, dt)
            d_drop, d_adm = dropped - self._dropped, admitted - self._admitted
            self._dropped, self._admitted = dropped, admitted
            self.busy = min(1.0, busy_s / dt) if dt > 0 else 0.0
            demands = [self.demand(st, len(states)) for st in states]
            predicted = sum(
                st.rates.get("infer_fps", 0.0) * d.frame_ms
                for st, d in zip(states, demands, strict=True)
            )
            if predicted >= MIN_SIGNAL_MS and dt > 0:
                ratio = min(SCALE_RANGE[1], max(SCALE_RANGE[0], busy_s * 1e3 / dt / predicted))
                self.scale += SCALE_WEIGHT * (ratio - self.scale)
            if not self.params.enabled or not states:
                self.degraded = False
                self._apply(states, {})
                return
            budget = self.model.budget(sum(d.decode_ms_s for d in demands), QOS_LOAD / self.scale)
            overloaded = self.busy >= OVERLOAD_BUSY or d_drop > OVERLOAD_DROPS * max(d_adm, 1)
            if overloaded:
                self.degraded = True
            elif self.degraded and used(demands) <= budget:
                self.degraded = False
            self._apply(states, allocate(demands, budget) if self.degraded else {})

    def _apply(self, states: Sequence[StreamRuntime], fps: dict[str, float]) -> None:
        self.allocated = {}
        for st in states:
            spec = st.stream.spec
            want = fps.get(spec.id)
            if want is not None and (spec.fps == 0 or want < spec.fps - 1e-6):
                self.allocated[spec.id] = want
                st.stream.gate.set_fps(want)
            else:
                st.stream.gate.set_fps(spec.fps)

    def effective_fps(self, st: StreamRuntime) -> float:
        """The rate the stream's gate admits now (its own fps unless QoS lowered it)."""
        return self.allocated.get(st.stream.stream_id, st.stream.spec.fps)

    def report(
        self,
        states: Sequence[StreamRuntime],
        width: int = 0,
        height: int = 0,
        fps: float = 10.0,
        detect_every: int = 1,
        source_fps: float = 0.0,
    ) -> dict[str, Any]:
        """``GET /api/capacity``: the budget, what the streams use, how many more streams of
        ``width`` x ``height`` (default: the running streams' mean size, else 640x480) at
        ``fps`` fit, and the measured costs."""
        with self._lock:
            n = len(states) + 1
            demands = [self.demand(st, n) for st in states]
            spec = StreamConfig(id="candidate", url="-", fps=fps, detect_every=detect_every)
            width, height = _size(states, width, height)
            new = self.candidate(spec, n, width, height, source_fps, states)
            load = self.params.target_load / self.scale
            decode = sum(d.decode_ms_s for d in demands)
            budget = self.model.budget(decode, load)
            more = fits(self.model, demands, new, load)
            # the whole machine's worth of such streams, priced as the running ones measure
            alike = [
                self._meters[st.stream.stream_id].detected_share
                for st in states
                if st.stream.spec.detect_every == detect_every
                and self._meters.get(st.stream.stream_id, _Meter()).detected_share >= 0
            ]
            like = self.candidate(
                spec, 1, width, height, source_fps, states,
                share=float(np.mean(alike)) if alike else None,
            )  # fmt: skip
            total = fits(self.model, [], like, load)
            return {
                "enabled": self.params.enabled,
                "streams": len(states),
                "target_load": load,
                "budget_ms_per_s": round(budget, 1),
                "used_ms_per_s": round(used(demands), 1),
                "decode_cpu_ms_per_s": round(decode, 1),
                "inference_busy": round(self.busy, 3),
                "model_correction": round(self.scale, 3),
                "degraded": self.degraded,
                "request": {
                    "width": width, "height": height, "fps": fps, "detect_every": detect_every,
                    "source_fps": source_fps or fps, "ms_per_frame": round(new.frame_ms, 3),
                },
                "more_streams": more,
                "total_streams": total,
                "per_stream": {
                    d.stream: {
                        "fps": d.fps,
                        "effective_fps": round(self.allocated.get(d.stream, d.fps), 2),
                        "priority": d.priority,
                        "ms_per_frame": round(d.frame_ms, 3),
                        "decode_cpu_ms_per_s": round(d.decode_ms_s, 1),
                    }
                    for d in demands
                },
                "costs": self.model.snapshot(),
            }  # fmt: skip
