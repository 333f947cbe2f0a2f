"""Capacity: what the live pipeline costs, measured by itself, and what still fits.

:class:`CostModel` keeps running means (EWMA, weight ``capacity.smoothing``) of

- the detector (letterbox + network + NMS) in milliseconds per *batch*, for every batch size it
  runs (seeded at start by timing batch 1 and ``live.max_batch`` on a synthetic frame); the cost
  of a batch size never run is the least-squares line ``a + b * size`` through those measured;
- the embedder in milliseconds per detection it embeds;
- the per-frame work after the engine (tracker, analytics, encode) in milliseconds per frame;
- the decoder (each stream's FFmpeg child, read from ``/proc``) in CPU milliseconds per
  megapixel decoded, per codec (a prior until a stream of that codec has been measured).

The inference thread is the bottleneck: one thread runs every batch, and the detector spreads
each call over the cores. So the budget is inference-thread time, ``1000 ms/s x load``, shrunk
by the share of the CPUs the decoders take (they compete with the detector's threads)::

    budget = 1000 * load * max(0.1, 1 - decode_cpu_ms_per_s / (cpus * 1000))

A stream inferred at ``fps`` costs ``fps * frame_ms`` of it, where ``frame_ms = detected share
x (detector ms per image at the batch size N streams give + detections per frame x embed ms) +
post ms``; the detected share is ``1 / detect_every`` (or what motion gating measured).
Admission uses ``load = capacity.target_load``; QoS uses the whole thread (``QOS_LOAD``) and
hands fps out by priority (:func:`allocate`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import CapacityConfig

PRIOR_DECODE_MS_PER_MPIX = 4.0  # CPU ms per megapixel (H.264 in FFmpeg on one core), a prior
PRIOR_DETECT_MS = 12.0  # per image, before calibration or any batch ran
PRIOR_POST_MS = 1.0  # tracker + analytics + encode per frame
PRIOR_EMBED_MS = 0.8  # per embedded detection
PRIOR_DETECTIONS = 2.0  # per frame, for a stream not yet seen
QOS_LOAD = 0.95  # the share of the inference thread QoS lets the streams fill
DEFAULT_SIZE = (640, 480)  # the resolution assumed for a stream that has not connected yet


def usable_cpus(configured: float) -> float:
    """``configured`` when above 0, else the cores this process may run on."""
    if configured > 0:
        return configured
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


@dataclass(frozen=True)
class Demand:
    """One stream as the capacity model sees it.

    fps: requested inference rate (0 = every decoded frame: ``source_fps``); floor: the lowest
    rate QoS may give it; priority: higher keeps its fps longer; frame_ms: inference-thread
    milliseconds per inferred frame; decode_ms_s: its decoder's CPU milliseconds per second.
    """

    stream: str
    fps: float
    floor: float
    priority: int
    frame_ms: float
    decode_ms_s: float


class CostModel:
    """Running cost means, thread-safe (the inference thread writes, the API reads)."""

    def __init__(self, params: CapacityConfig, max_batch: int, embeds: bool) -> None:
        self.params = params
        self.cpus = usable_cpus(params.cpus)
        self.max_batch = max_batch
        self._batch_ms = np.full(max_batch + 1, np.nan)  # index: batch size
        self._embed_ms = PRIOR_EMBED_MS if embeds else 0.0
        self._embeds = embeds
        self._post_ms = PRIOR_POST_MS
        self._decode: dict[str, float] = {}  # codec -> CPU ms per megapixel
        self._lock = threading.Lock()
        self.steps = 0

    def _mix(self, old: float, new: float) -> float:
        return new if math.isnan(old) else old + self.params.smoothing * (new - old)

    # -- measurements -------------------------------------------------------------------
    def observe_batch(self, size: int, detect_ms: float) -> None:
        """One detector call over ``size`` images took ``detect_ms`` (letterbox + net + NMS)."""
        if 1 <= size <= self.max_batch and detect_ms > 0:
            with self._lock:
                self._batch_ms[size] = self._mix(float(self._batch_ms[size]), detect_ms)

    def observe_step(
        self, frames: int, detected: int, detections: int, timings: dict[str, float]
    ) -> None:
        """One live step: ``frames`` inferred, ``detected`` of them through the detector with
        ``detections`` boxes; ``timings`` the step's milliseconds per stage (summed)."""
        detect_ms = sum(timings.get(k, 0.0) for k in ("preprocess", "infer", "nms"))
        if detected:
            self.observe_batch(detected, detect_ms)
        with self._lock:
            self.steps += 1
            if detections and self._embeds and "embed" in timings:
                self._embed_ms = self._mix(self._embed_ms, timings["embed"] / detections)
            if frames:
                post = sum(timings.get(k, 0.0) for k in ("track", "analytics", "encode"))
                self._post_ms = self._mix(self._post_ms, post / frames)

    def observe_decode(
        self, width: int, height: int, codec: str, cpu_ms: float, frames: int
    ) -> None:
        """A decoder spent ``cpu_ms`` CPU milliseconds on ``frames`` frames of this size."""
        if frames <= 0 or width <= 0 or height <= 0 or cpu_ms < 0:
            return
        per_mpix = cpu_ms / frames / (width * height / 1e6)
        with self._lock:
            self._decode[codec] = self._mix(self._decode.get(codec, math.nan), per_mpix)

    # -- estimates ----------------------------------------------------------------------
    def detect_ms(self, batch: int) -> float:
        """Detector milliseconds per image at ``batch`` images per call."""
        batch = max(1, min(batch, self.max_batch))
        with self._lock:
            ms = self._batch_ms.copy()
        if not math.isnan(ms[batch]):
            return float(ms[batch]) / batch
        sizes = np.flatnonzero(~np.isnan(ms))
        if sizes.size == 0:
            return PRIOR_DETECT_MS
        if sizes.size == 1:  # one point: assume the cost per image of that size
            return float(ms[sizes[0]]) / sizes[0]
        slope, icept = np.polyfit(sizes.astype(float), ms[sizes], 1)
        return max(float(icept + slope * batch) / batch, 0.05)

    def frame_ms(self, detected_share: float, detections: float, batch: int) -> float:
        """Inference-thread ms per inferred frame of a stream (see the module docstring)."""
        with self._lock:
            embed, post = self._embed_ms, self._post_ms
        return detected_share * (self.detect_ms(batch) + detections * embed) + post

    def decode_ms(self, width: int, height: int, codec: str = "") -> float:
        """Decoder CPU ms per frame of this size (the codec's measured mean, else the mean over
        the codecs measured, else the prior)."""
        with self._lock:
            per = self._decode.get(codec)
            if per is None:
                per = float(np.mean(list(self._decode.values()))) if self._decode else None
        per = PRIOR_DECODE_MS_PER_MPIX if per is None else per
        return per * width * height / 1e6

    def budget(self, decode_ms_s: float, load: float) -> float:
        """Inference-thread ms per second the streams may use, given their decoders' CPU."""
        free = max(0.1, 1.0 - decode_ms_s / (self.cpus * 1000.0))
        return 1000.0 * load * free

    def snapshot(self) -> dict[str, object]:
        """The measured costs, for ``GET /api/capacity``."""
        with self._lock:
            ms = self._batch_ms.copy()
            decode = dict(self._decode)
            embed, post = self._embed_ms, self._post_ms
        return {
            "cpus": self.cpus,
            "detect_ms_per_batch": {
                str(i): round(float(ms[i]), 3) for i in np.flatnonzero(~np.isnan(ms))
            },
            "detect_ms_per_image": {
                str(b): round(self.detect_ms(b), 3) for b in sorted({1, self.max_batch})
            },
            "embed_ms_per_detection": round(embed, 3),
            "post_ms_per_frame": round(post, 3),
            "decode_cpu_ms_per_mpix": {k or "unknown": round(v, 3) for k, v in decode.items()}
            or {"prior": PRIOR_DECODE_MS_PER_MPIX},
        }


def used(demands: Sequence[Demand], fps: dict[str, float] | None = None) -> float:
    """Inference-thread ms per second of ``demands`` at their fps (or the ``fps`` given)."""
    return sum((fps or {}).get(d.stream, d.fps) * d.frame_ms for d in demands)


def fits(model: CostModel, demands: Sequence[Demand], new: Demand, load: float) -> int:
    """How many more streams like ``new`` fit beside ``demands`` at ``load`` (at most 1024).
    The batch size grows with the streams, so each added stream is priced at the batch the
    total gives."""
    base_used = used(demands)
    decode = sum(d.decode_ms_s for d in demands)
    n = 0
    while n < 1024:
        total = len(demands) + n + 1
        frame_ms = new.frame_ms * _batch_scale(model, total, len(demands) + 1)
        cost = base_used + (n + 1) * new.fps * frame_ms
        if cost > model.budget(decode + (n + 1) * new.decode_ms_s, load):
            return n
        n += 1
    return n


def _batch_scale(model: CostModel, streams: int, priced_at: int) -> float:
    """How much cheaper (< 1) a frame gets at the batch ``streams`` give than at ``priced_at``."""
    a = model.detect_ms(min(streams, model.max_batch))
    b = model.detect_ms(min(priced_at, model.max_batch))
    return a / b if b > 0 else 1.0


def best_fps(model: CostModel, demands: Sequence[Demand], new: Demand, load: float) -> float:
    """The highest fps (at most ``new.fps``, in steps of 0.5) at which ``new`` fits; 0 if none
    at or above ``new.floor`` does."""
    fps = new.fps
    decode = sum(d.decode_ms_s for d in demands) + new.decode_ms_s
    room = model.budget(decode, load) - used(demands)
    if new.frame_ms > 0:
        fps = min(fps, math.floor(2 * room / new.frame_ms) / 2)
    return fps if fps >= max(new.floor, 0.5) else 0.0


def allocate(demands: Sequence[Demand], budget: float) -> dict[str, float]:
    """Each stream's fps under ``budget`` (inference-thread ms/s): everyone gets its floor,
    then the highest priority first gets up to its requested fps; streams of one priority that
    cannot all be served share what is left in proportion to what they asked beyond their
    floor. A budget too small even for the floors leaves every stream at its floor."""
    out = {d.stream: min(d.floor, d.fps) for d in demands}
    left = budget - used(demands, out)
    for prio in sorted({d.priority for d in demands}, reverse=True):
        group = [d for d in demands if d.priority == prio]
        want = sum((d.fps - out[d.stream]) * d.frame_ms for d in group)
        if want <= 0:
            continue
        share = 1.0 if left >= want else max(0.0, left / want)
        for d in group:
            out[d.stream] += share * (d.fps - out[d.stream])
        left -= share * want
    return out
