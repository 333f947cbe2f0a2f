"""One live inference step as a plain function, with a guard at each stream's boundary.

    run_step(batch, engine, publish, guard) -> per-stage milliseconds

``batch`` holds one frame per stream (``StreamRuntime``, ``Frame``). Each stream's
:class:`pipeline.schedule.DetectSchedule` says whether its frame goes through the detector
(``detect_every``, motion gating on the frame's thumbnail, which camera health then reuses);
the engine runs once for the frames that do, and a stream whose frame does not gets its
tracker's prediction (``Tracks.predicted``). Then each stream's tracker, analytics (events),
encoders and ``publish`` run inside that stream's guard (a failure in the analytics loses that
frame's events, not its tracks): an exception there becomes a count (``StreamRuntime.errors``),
that stream's ``last_error`` and a log line (at most one per stream per
``ThrottledLog.interval_s``), and the other streams of the batch carry on. An engine failure
is counted (``StepGuard.engine_failures``) and charged to every stream of the batch. Nothing
here owns a thread, a socket or a clock beyond ``perf_counter``, so tests drive it with a fake
engine.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np

from analytics.events import Event, encode_event
from analytics.health import thumbnail
from analytics.stream import StreamAnalytics
from pipeline.encode import encode_message
from pipeline.schedule import DetectSchedule
from pipeline.types import Detections, Frame, Tracks
from trackers.base import Predicting


@dataclass(frozen=True)
class Published:
    """One frame's result: the encoded v1 message and the tracks it was encoded from, and the
    frame's analytics events with their encoded v1 event messages (``event_data[i]`` is
    ``events[i]``), each encoded once for every output; ``counts_epoch``: the number of the
    counts reset these events were counted after (``analytics.counts``; 0 without events)."""

    stream: str
    seq: int
    arrival: float
    data: bytes
    tracks: Tracks
    events: tuple[Event, ...] = ()
    event_data: tuple[bytes, ...] = ()
    counts_epoch: int = 0


class EngineLike(Protocol):
    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]: ...


class TrackerLike(Protocol):
    def update(
        self,
        detections: Detections,
        embeddings: np.ndarray | None,
        frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks: ...


@dataclass(eq=False)
class StreamRuntime:
    """Per-stream state the inference thread owns: the tracker, the analytics and the message
    counter."""

    stream: Any  # a LiveStream: anything with stream_id, last_error and frames_inferred
    tracker: TrackerLike
    analytics: StreamAnalytics | None = None
    seq: int = 0
    errors: int = 0  # tracker/encoder/publish failures in this stream
    removed: bool = False  # set when the stream is deleted: a batch in flight skips it
    rates: dict[str, float] = field(default_factory=dict)
    last_counts: tuple[int, int] = (0, 0)
    schedule: DetectSchedule = field(default_factory=DetectSchedule)  # which frames detect
    detections: int = 0  # boxes the detector found for this stream so far


class ThrottledLog:
    """At most one line per key per ``interval_s``; the rest are counted and summarized in the
    next line, so a stream failing on every frame cannot fill a disk."""

    def __init__(
        self, interval_s: float = 10.0, write: Callable[[str], None] | None = None
    ) -> None:
        self.interval_s = interval_s
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, line: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            more = self._suppressed.pop(key, 0)
            if len(self._last) > 4096:  # bounded: forget the oldest keys
                for k in sorted(self._last, key=self._last.__getitem__)[:1024]:
                    self._last.pop(k, None)
        self._write(line + (f" ({more} more since the last report)" if more else ""))


@dataclass
class StepGuard:
    """Failure accounting shared by every step of one pipeline."""

    log: ThrottledLog = field(default_factory=ThrottledLog)
    engine_failures: int = 0  # batches the engine failed on
    stream_errors: int = 0  # per-stream failures, all streams together


def _fail(st: StreamRuntime, guard: StepGuard, what: str, exc: BaseException) -> None:
    sid = st.stream.stream_id
    message = f"{what} failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    st.errors += 1
    guard.stream_errors += 1
    st.stream.last_error = message
    guard.log(f"stream:{sid}:{what}", f"vigil: stream {sid}: {message}")


def _thumb(st: StreamRuntime, frame: Frame) -> np.ndarray | None:
    """The frame's small grey image when motion gating or camera health will read it (once)."""
    health = st.analytics is not None and st.analytics.health is not None
    return thumbnail(frame.image) if st.schedule.gated or health else None


def run_step(
    batch: Sequence[tuple[StreamRuntime, Frame]],
    engine: EngineLike,
    publish: Callable[[Published], None],
    guard: StepGuard,
    counts: dict[str, int] | None = None,
) -> dict[str, float]:
    """Detect the frames each stream's schedule picks (one engine call for the batch), then
    track (``predict_only`` for a frame not detected), encode and publish per stream, each
    stream guarded. Returns milliseconds per stage summed over the batch (empty if the engine
    failed); ``counts`` (if given) receives ``frames``, ``detected`` (frames through the
    detector) and ``detections`` (their boxes). Streams marked ``removed`` while the batch was
    in flight are skipped: nothing of theirs is published after their deletion."""
    thumbs = [_thumb(st, f) for st, f in batch]
    plan = [
        st.schedule.decide(f.pts, st.schedule.moving(th, f.pts))
        for (st, f), th in zip(batch, thumbs, strict=True)
    ]
    todo = [f for (_, f), p in zip(batch, plan, strict=True) if p]
    timings: dict[str, float] = {}
    try:
        found, found_emb = engine.process(todo, timings) if todo else ([], [])
    except Exception as e:  # one bad batch must not end the loop for every stream
        guard.engine_failures += 1
        message = f"inference failed: {type(e).__name__}: {e}".splitlines()[0][:300]
        for st, _ in batch:
            st.stream.last_error = message
        guard.log("engine", f"vigil: {message} ({len(batch)} streams' frames lost)")
        return {}
    results = iter(zip(found, found_emb, strict=True))
    track_ms = analytics_ms = encode_ms = 0.0
    for (st, frame), thumb, detect in zip(batch, thumbs, plan, strict=True):
        d, emb = next(results) if detect else (None, None)
        if d is not None:
            st.schedule.found(len(d))
            st.detections += len(d)
        if st.removed:
            continue
        stage = "tracker"
        try:
            t0 = time.perf_counter()
            if d is None:  # the detector skipped this frame: the motion model reports
                tracks = cast(Predicting, st.tracker).predict_only(frame.index, frame.pts)
            else:
                tracks = st.tracker.update(d, emb, frame.index, frame.pts)
            t1 = time.perf_counter()
            events = _analyse(st, guard, frame, tracks, thumb)
            t2 = time.perf_counter()
            stage = "encoder"
            data = encode_message(tracks, frame.stream_id, st.seq, frame.arrival)
            event_data = tuple(encode_event(e) for e in events)  # events, not tracks: a few
            t3 = time.perf_counter()
            stage = "publish"
            msg = Published(frame.stream_id, st.seq, frame.arrival, data, tracks)
            if events:
                epoch = st.analytics.counts.added_epoch if st.analytics is not None else 0
                msg = replace(msg, events=events, event_data=event_data, counts_epoch=epoch)
            publish(msg)
        except Exception as e:
            _fail(st, guard, stage, e)
            continue
        track_ms += (t1 - t0) * 1e3
        analytics_ms += (t2 - t1) * 1e3
        encode_ms += (t3 - t2) * 1e3
        st.seq += 1
        st.stream.frames_inferred += 1
    timings["track"] = track_ms
    timings["analytics"] = analytics_ms
    timings["encode"] = encode_ms
    if counts is not None:
        counts.update(frames=len(batch), detected=len(todo), detections=sum(map(len, found)))
    return timings


def _analyse(
    st: StreamRuntime, guard: StepGuard, frame: Frame, tracks: Tracks, thumb: np.ndarray | None
) -> tuple[Event, ...]:
    """The stream's analytics for this frame, guarded on its own: a failure there is counted and
    reported like any stream failure, and the frame's tracks are still published."""
    if st.analytics is None:
        return ()
    try:
        size = (frame.width, frame.height)
        return tuple(st.analytics.update(tracks, size, frame.arrival, frame.image, thumb))
    except Exception as e:
        _fail(st, guard, "analytics", e)
        return ()
