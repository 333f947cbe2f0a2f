"""Replay: the lossless offline pipeline, three overlapping stages joined by bounded queues.

    decode thread (FFmpeg child + pipe reader)  --q_frames-->  infer thread (Engine, batched)
        --q_results-->  caller's thread (tracker, encode, sinks, progress)

Every queue blocks when full (the WAIT policy): no frame is ever dropped, and memory is bounded
by ``batch.queue_frames``. FFmpeg decodes in its own process and ONNX Runtime releases the GIL,
so decode, inference and tracking run on both cores at once. A failure in any stage stops the
others and is re-raised in the caller.
"""

from __future__ import annotations

import queue
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from analytics.health import thumbnail
from analytics.stream import StreamAnalytics
from pipeline.config import MotionConfig, StreamConfig, VigilConfig
from pipeline.engine import Engine
from pipeline.schedule import DetectSchedule
from pipeline.sinks import ReplaySinks
from pipeline.sources import FFmpegSource
from pipeline.stats import StageStats
from pipeline.types import Detections, Frame, VigilError
from pipeline.wiring import build_analytics, build_engine, build_tracker
from trackers.base import Predicting, can_predict

STAGES = ("decode", "preprocess", "infer", "nms", "embed", "track", "analytics", "encode")
_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Replay:
    """One replay of one source into ``out_dir``; ``run()`` returns the summary dict.

    With ``rules`` (a stream's lines, zones and health: ``load_rules``) every frame also goes
    through the stream's analytics, and the replay writes ``events.jsonl`` and ``counts.json``.
    ``detect_every`` and ``motion`` schedule the detector as a live stream's would
    (:class:`pipeline.schedule.DetectSchedule`): the inference thread decides frame by frame,
    batches the frames it detects and hands on the others, in order, for the tracker to predict.
    """

    def __init__(
        self,
        source: FFmpegSource,
        cfg: VigilConfig,
        out_dir: Path,
        engine: Engine | None = None,
        rules: StreamConfig | None = None,
        detect_every: int = 1,
        motion: MotionConfig | None = None,
    ) -> None:
        self.source = source
        self.cfg = cfg
        self.engine = engine or build_engine(cfg)
        self.tracker = build_tracker(cfg.tracker)
        self.schedule = DetectSchedule(detect_every, motion)
        if not self.schedule.always and not can_predict(self.tracker):
            raise VigilError(
                f"tracker {cfg.tracker.name} cannot predict frames the detector skips "
                "(--detect-every, --motion): choose deepsort or bytetrack"
            )
        self.analytics: StreamAnalytics | None = None
        self.events = 0
        if rules is not None:
            names = self.engine.info.class_names
            self.analytics = build_analytics(cfg, rules, names, live=False)
        self.sinks = ReplaySinks(out_dir, source.stream_id, events=rules is not None)
        self.stats = StageStats(STAGES)
        self._stop = threading.Event()
        self._q_frames: queue.Queue[Any] = queue.Queue(cfg.batch.queue_frames)
        self._q_results: queue.Queue[Any] = queue.Queue(cfg.batch.queue_frames)

    def _decode(self) -> None:
        try:
            t = time.perf_counter()
            for frame in self.source.frames():
                now = time.perf_counter()
                self.stats.add("decode", (now - t) * 1e3)
                if not _put(self._q_frames, frame, self._stop):
                    return
                t = time.perf_counter()
            _put(self._q_frames, _END, self._stop)
        except BaseException as e:
            _put(self._q_frames, _Failure(e), self._stop)

    def _infer(self) -> None:
        """Frames in order -> (frame, detections or None, embeddings, thumbnail) in order; the
        frames the schedule picks go through the engine in batches of up to ``max_batch``."""
        try:
            held: list[tuple[Frame, bool, np.ndarray | None]] = []
            while not self._stop.is_set():
                item = self._q_frames.get()
                if isinstance(item, _Failure):
                    _put(self._q_results, item, self._stop)
                    return
                if item is _END:
                    break
                frame: Frame = item
                sched = self.schedule
                thumb = None if sched.always and self.analytics is None else thumbnail(frame.image)
                if sched.always:
                    held.append((frame, sched.decide(frame.pts, True), thumb))
                else:
                    moving = sched.moving(thumb, frame.pts)
                    # the detection in flight decides this frame: finish it first
                    waits = sched.needs_last(moving) and any(d for _, d, _ in held)
                    if waits and not self._flush(held):
                        return
                    held.append((frame, sched.decide(frame.pts, moving), thumb))
                limit = self.cfg.batch.max_batch
                full = sum(d for _, d, _ in held) >= limit or len(held) >= 4 * limit
                if full and not self._flush(held):
                    return
            if self._flush(held):
                _put(self._q_results, _END, self._stop)
        except BaseException as e:
            _put(self._q_results, _Failure(e), self._stop)

    def _flush(self, held: list[tuple[Frame, bool, np.ndarray | None]]) -> bool:
        """Detect the held frames marked for it (one engine call), hand every held frame on in
        order and empty ``held``; False when stopped."""
        todo = [f for f, d, _ in held if d]
        dets: list[Detections] = []
        embeds: list[np.ndarray | None] = []
        if todo:
            timings: dict[str, float] = {}
            dets, embeds = self.engine.process(todo, timings)
            for name, ms in timings.items():
                self.stats.add(name, ms / len(todo), len(todo))
        found = iter(zip(dets, embeds, strict=True))
        for frame, detect, thumb in held:
            d, emb = next(found) if detect else (None, None)
            if d is not None:
                self.schedule.found(len(d))
            if not _put(self._q_results, (frame, d, emb, thumb), self._stop):
                return False
        held.clear()
        return True

    def run(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        cpu0 = _children_cpu_s()
        start = time.perf_counter()
        workers = [
            threading.Thread(target=self._decode, name="vigil-decode", daemon=True),
            threading.Thread(target=self._infer, name="vigil-infer", daemon=True),
        ]
        for w in workers:
            w.start()
        processed = 0
        try:
            while True:
                item = self._q_results.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                frame, dets, embeds, thumb = item
                t0 = time.perf_counter()
                if dets is None:  # the detector skipped this frame: the motion model reports
                    tracks = cast(Predicting, self.tracker).predict_only(frame.index, frame.pts)
                else:
                    tracks = self.tracker.update(dets, embeds, frame.index, frame.pts)
                t1 = time.perf_counter()
                if self.analytics is not None:
                    size = (frame.width, frame.height)
                    events = self.analytics.update(tracks, size, frame.arrival, frame.image, thumb)
                    self.events += len(events)
                    self.sinks.write_events(events)
                t2 = time.perf_counter()
                self.sinks.write(frame, tracks)
                t3 = time.perf_counter()
                self.stats.add("track", (t1 - t0) * 1e3)
                self.stats.add("analytics", (t2 - t1) * 1e3)
                self.stats.add("encode", (t3 - t2) * 1e3)
                processed += 1
                if progress is not None:
                    progress(1)
            if self.analytics is not None:
                last = self.analytics.finish()
                self.events += len(last)
                self.sinks.write_events(last)
        except BaseException:
            self.sinks.fail()
            raise
        finally:
            self._stop.set()
            self.source.close()
            for w in workers:
                w.join(timeout=5)
            self.sinks.close()
        wall = time.perf_counter() - start
        decoded = self.source.frames_decoded
        if processed != decoded:
            raise VigilError(f"replay lost frames: decoded {decoded}, processed {processed}")
        summary = {
            "source": self.source.info.uri,
            "source_kind": self.source.info.kind,
            "width": self.source.info.width,
            "height": self.source.info.height,
            "frames_decoded": decoded,
            "frames_processed": processed,
            "decode_errors": self.source.decode_errors,
            "last_decode_error": self.source.last_error,
            "wall_s": round(wall, 3),
            "fps": round(processed / wall, 2) if wall > 0 else 0.0,
            "stages_ms": self.stats.summary(),
            "decoder_cpu_ms_per_frame": round(
                (_children_cpu_s() - cpu0) * 1e3 / max(decoded, 1), 3
            ),
            "tracks": self.sinks.unique_tracks,
            "model": {k: v for k, v in asdict(self.engine.info).items() if k != "class_names"},
            "decode": self.source.decode.describe(),
            "tracker": asdict(self.cfg.tracker),
            "detect_every": self.schedule.every,
            "motion": self.schedule.motion is not None,
            "detector_frames": self.schedule.counts(),
            "batch": asdict(self.cfg.batch),
        }
        if self.analytics is not None:
            summary["events"] = self.events
            self.sinks.write_json("counts.json", self.analytics.counts.snapshot())
        self.sinks.write_json("summary.json", summary)
        return summary
