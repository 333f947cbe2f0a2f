"""``vigil bench``: stage micro-benchmarks, replay throughput, live capacity, and the baselines,
side by side in one run on the same footage and model. Figures, not pass/fail.

Sections (each a function returning plain dicts, gathered into ``bench.json``/``bench.md``):

- ``stages``: median and p95 ms per call and frames/s for decode (FFmpeg pipe, PyAV, OpenCV),
  preprocess, inference (each backend x precision x batch 1/8), embedding (each embedder),
  tracking (the configured tracker on the sample clip, then every tracker on synthetic crowds
  of 20 and 100 people: :mod:`benchmarks.tracking`), encoding;
- ``replay``: Vigil's replay fps and per-stage split on each footage;
- ``baselines``: the naive loop and FFmpeg decode-only on the same footage, and Vigil's fps as
  a ratio of each;
- ``accuracy``: HOTA/IDF1/MOTA of Vigil and of the naive loop on the MOT dev sequences;
- ``live``: N streams paced at real time (looped 640x480 files, or RTSP from the loopback
  GStreamer server with ``rtsp=True``), N raised until P99 arrival-to-publish latency passes the
  bound or drops pass theirs; the largest N that held.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import SAMPLE_CLIP, VigilConfig

SAMPLE = SAMPLE_CLIP


def _timeit(fn: Callable[[], object], repeat: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
    }


def _row(name: str, per_call: dict[str, float], frames_per_call: int) -> dict[str, Any]:
    fps = 1000.0 * frames_per_call / per_call["median_ms"] if per_call["median_ms"] else 0.0
    return {"stage": name, **per_call, "frames_per_call": frames_per_call, "fps": round(fps, 1)}


def _sample_frames(source: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(source))
    frames: list[np.ndarray] = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def bench_decoders(source: Path, max_frames: int) -> list[dict[str, Any]]:
    import av

    from pipeline.sources import FFmpegSource

    rows = []

    def ffmpeg_pipe() -> int:
        return sum(1 for _ in FFmpegSource(str(source), max_frames=max_frames).frames())

    def pyav() -> int:
        n = 0
        with av.open(str(source)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for f in c.decode(s):
                f.to_ndarray(format="bgr24")
                n += 1
                if n >= max_frames:
                    break
        return n

    def opencv() -> int:
        cap, n = cv2.VideoCapture(str(source)), 0
        while n < max_frames and cap.read()[0]:
            n += 1
        cap.release()
        return n

    decoders: list[tuple[str, Callable[[], int]]] = [
        ("decode ffmpeg-pipe", ffmpeg_pipe),
        ("decode pyav", pyav),
        ("decode opencv", opencv),
    ]
    for name, fn in decoders:
        t = time.perf_counter()
        n = fn()
        ms = (time.perf_counter() - t) * 1e3
        per = {"median_ms": round(ms / max(n, 1), 3), "p95_ms": None}
        rows.append({"stage": name, **per, "frames_per_call": 1, "fps": round(1000 * n / ms, 1)})
    return rows


def bench_stages(cfg: VigilConfig, quick: bool) -> list[dict[str, Any]]:
    from benchmarks.tracking import bench_trackers
    from models.detector import available_backends, create_detector
    from models.postprocess import postprocess
    from pipeline.encode import encode_message
    from pipeline.preprocess import CpuPreprocessor, boxes_to_source
    from pipeline.types import Detections, VigilError
    from pipeline.wiring import build_detector, build_named_embedder, build_tracker, resolve_model
    from trackers.registry import names as tracker_names

    repeat = 5 if quick else 30
    frames = _sample_frames(SAMPLE, 40 if quick else 200)
    rows = bench_decoders(SAMPLE, 60 if quick else 600)
    served = resolve_model(cfg.model)
    det = build_detector(cfg, served)
    size = det.input_size
    pre = CpuPreprocessor(size, 8)
    for b in (1, 8):
        rows.append(_row(f"preprocess b{b}", _timeit(partial(pre, frames[:b]), repeat), b))
    batch8 = pre(frames[:8])[0]
    # every precision the model has (a bare ONNX file: only itself), on every backend
    variants: list[tuple[str, Path]] = [(cfg.model.precision, served.onnx)]
    if served.manifest is not None:
        variants = []
        for precision in ("fp32", "int8"):
            try:
                variants.append((precision, resolve_model(cfg.model, precision).onnx))
            except VigilError:
                continue  # the manifest has no such variant
    for backend in available_backends():
        for precision, path in variants:
            variant = create_detector(path, backend, cfg.model.threads)
            for b in (1, 8):
                x = np.ascontiguousarray(batch8[:b])
                per = _timeit(partial(variant.infer, x), repeat)
                rows.append(_row(f"infer {backend} {precision} b{b}", per, b))
    raw = det.infer(pre(frames[:1])[0])[0]
    person = np.array([0])
    rows.append(_row("nms", _timeit(partial(postprocess, raw, 0.25, 0.45, person), repeat), 1))
    # real detections for the embedders, the tracker and the encoder
    per_frame = []
    for i in range(0, len(frames), 8):
        batch, geoms = pre(frames[i : i + 8])
        for pred, g in zip(det.infer(batch), geoms, strict=True):
            d = postprocess(pred, 0.25, 0.45, person)
            per_frame.append(Detections(boxes_to_source(d.xyxy, g), d.confidence, d.class_id))
    busiest = max(range(len(per_frame)), key=lambda i: len(per_frame[i]))
    boxes = per_frame[busiest].xyxy
    dims = {}
    for name in dict.fromkeys(("histogram", "mobilenet", cfg.tracker.embedder)):
        embedder = build_named_embedder(cfg, name)
        dims[name] = embedder.dim
        per = _timeit(partial(embedder.embed, frames[busiest : busiest + 1], [boxes]), repeat)
        rows.append(_row(f"embed {name} ({len(boxes)} boxes)", per, 1))
    hist = build_named_embedder(cfg, "histogram")
    feats = [hist.embed([f], [d.xyxy])[0] for f, d in zip(frames, per_frame, strict=False)]
    tracker = build_tracker(cfg.tracker)
    times = []
    tracks = None
    for i, (d, e) in enumerate(zip(per_frame, feats, strict=False)):
        t = time.perf_counter()
        tracks = tracker.update(d, e, i)
        times.append((time.perf_counter() - t) * 1e3)
    per = {
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
    }
    rows.append(_row(f"track {cfg.tracker.name} (sample clip)", per, 1))
    # crowds of 20 and 100 people, every tracker interleaved, the embedder's dimension
    names = [n for n in tracker_names() if not (quick and n == "deepsort-reference")]
    sizes = (20,) if quick else (20, 100)
    rows += bench_trackers(names, sizes, dims[cfg.tracker.embedder], 40 if quick else 150)
    assert tracks is not None
    per = _timeit(partial(encode_message, tracks, "cam", 1, 0.0), repeat * 20)
    rows.append(_row("encode v1", per, 1))
    return rows


def bench_replay(cfg: VigilConfig, footage: list[str], max_frames: int) -> list[dict[str, Any]]:
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource
    from pipeline.wiring import build_decode, build_engine

    engine = build_engine(cfg)
    out = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        for i, spec in enumerate(footage):
            src = FFmpegSource(
                spec,
                max_frames=max_frames,
                folder_fps=cfg.source.folder_fps,
                decode=build_decode(cfg.source),
            )
            s = Replay(src, cfg, Path(tmp) / str(i), engine=engine).run()
            stages = {k: v["mean_ms"] for k, v in s["stages_ms"].items()}
            row = {"footage": spec, "frames": s["frames_processed"], "fps": s["fps"]}
            out.append({**row, "stages_ms": stages})
    return out


def live_probe(
    cfg: VigilConfig, urls: list[str], seconds: float, fps: float, **stream: Any
) -> dict[str, Any]:
    """One live run: ``urls`` as looped, real-time-paced streams at ``fps`` (inference rate)
    through :class:`pipeline.live.LivePipeline` for ``seconds`` after a warm-up; latency is
    publish time minus the frame's arrival from the decoder. ``stream``: more StreamConfig
    fields for every stream (``detect_every``, ``motion``). The result's ``capacity`` is the
    pipeline's own estimate (``GET /api/capacity``) at the end of the run."""
    from pipeline.config import StreamConfig
    from pipeline.live import LivePipeline, Published

    n = len(urls)
    latencies: list[float] = []
    lock = threading.Lock()

    def publish(msg: Published) -> None:
        with lock:
            latencies.append(time.time() - msg.arrival)

    live_cfg = replace(cfg, live=replace(cfg.live, max_streams=max(n, 1)))
    pipe = LivePipeline(live_cfg, publish)
    for i, url in enumerate(urls):
        pipe.add_stream(StreamConfig(f"cam{i}", url, fps=fps, loop=True, realtime=True, **stream))
    pipe.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(s.frames_decoded == 0 for s in pipe.streams()):
        time.sleep(0.2)
    time.sleep(min(3.0, seconds / 3))  # warm-up
    with lock:
        latencies.clear()
    before = {s.spec.id: (s.frames_decoded, s.slot.dropped) for s in pipe.streams()}
    time.sleep(seconds)
    after = {s.spec.id: (s.frames_decoded, s.slot.dropped) for s in pipe.streams()}
    capacity = pipe.capacity_report(fps=fps, detect_every=stream.get("detect_every", 1))
    detector = [st.schedule.counts() for st in pipe.runtimes()]
    pipe.stop(2.0)
    with lock:
        lat = np.array(latencies) * 1e3
    decoded = sum(after[k][0] - before[k][0] for k in after)
    dropped = sum(after[k][1] - before[k][1] for k in after)
    return {
        "streams": n,
        "messages": int(lat.size),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "fps_out": round(lat.size / seconds, 1),
        "decoded_fps": round(decoded / seconds, 1),
        "drop_fraction": round(dropped / max(decoded, 1), 4),
        "latencies_ms": np.sort(lat).round(1).tolist(),
        "capacity": capacity,
        "detected_fraction": round(
            sum(c["detected"] for c in detector) / max(1, sum(sum(c.values()) for c in detector)),
            4,
        ),
    }


def bench_live(
    cfg: VigilConfig,
    clip: Path,
    max_streams: int,
    seconds: float,
    fps: float,
    p99_bound_ms: float,
    drop_bound: float,
    rtsp_urls: Callable[[int], list[str]] | None = None,
    step: int = 2,
) -> dict[str, Any]:
    """Capacity search: returns per-N results and the largest N that held both bounds."""
    results = []
    largest = 0
    n = 1 if max_streams < step else step
    while n <= max_streams:
        urls = rtsp_urls(n) if rtsp_urls else [str(clip)] * n
        row = live_probe(cfg, urls, seconds, fps)
        results.append(row)
        held = row["p99_ms"] is not None and row["p99_ms"] <= p99_bound_ms
        held = held and row["drop_fraction"] <= drop_bound
        if not held:
            break
        largest = n
        n += step if n >= step else step - 1
    return {
        "fps_per_stream": fps,
        "p99_bound_ms": p99_bound_ms,
        "drop_bound": drop_bound,
        "largest_n": largest,
        "runs": results,
    }
