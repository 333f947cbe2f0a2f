"""Detections and embeddings of MOTChallenge sequences, computed once and replayed into trackers.

Tuning and comparing trackers re-runs only the tracker: the detector (through the same
:class:`pipeline.engine.Engine`, FFmpeg decode and batching as ``vigil replay``) runs once per
sequence at a low confidence floor, and each embedder once on those boxes. Any confidence
threshold at or above the floor gives exactly the detections a replay at that threshold gets
(greedy NMS never lets a lower score suppress a higher one). The arrays are stored as ``.npz``
under a cache folder, keyed by everything they depend on (model file, thresholds, classes,
embedder files, sequence frames), so a second run loads them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.mot import load_mot, read_sequence, score_sequences, trackeval_data
from pipeline.config import VigilConfig
from pipeline.schedule import DetectSchedule
from pipeline.types import Detections, Frame, Tracks, VigilError
from trackers.base import can_predict

CACHE_VERSION = 1


@dataclass
class CachedSequence:
    """One sequence's detections (all frames concatenated, ``offsets`` ``(F + 1,)`` delimits
    each frame's rows), embeddings per embedder name, ground truth ``(K, 6)`` rows and the
    milliseconds per frame each embedder took while caching."""

    name: str
    frames: int
    fps: float
    xyxy: np.ndarray  # (K, 4) float32 source pixels
    confidence: np.ndarray  # (K,) float32
    class_id: np.ndarray  # (K,) int32
    offsets: np.ndarray  # (F + 1,) int64
    gt: np.ndarray  # (G, 6) float64: frame, id, x, y, w, h
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K, D) float32
    embed_ms: dict[str, float] = field(default_factory=dict)  # name -> ms per frame

    def frame(
        self, index: int, conf_threshold: float, embedder: str | None
    ) -> tuple[Detections, np.ndarray | None]:
        """Frame ``index``'s detections at ``conf_threshold`` and their embeddings."""
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        keep = np.flatnonzero(self.confidence[a:b] >= conf_threshold) + a
        dets = Detections(self.xyxy[keep], self.confidence[keep], self.class_id[keep])
        emb = None if embedder is None else self.embeddings[embedder][keep]
        return dets, emb


def _key(cfg: VigilConfig, seq_path: Path, floor: float, embedders: dict[str, Any]) -> str:
    from models.manifest import sha256_file
    from pipeline.wiring import resolve_model

    m = cfg.model
    parts = {
        "v": CACHE_VERSION,
        "model": sha256_file(resolve_model(m).onnx),
        "backend": m.backend,
        "floor": floor,
        "iou": m.iou_threshold,
        "max_det": m.max_det,
        "classes": list(m.classes),
        "batch": cfg.batch.max_batch,
        "seq": str(seq_path.resolve()),
        "frames": sorted(p.name for p in (seq_path / "img1").iterdir()),
        "embedders": {name: ident for name, ident in sorted(embedders.items())},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _embedder_identity(cfg: VigilConfig, name: str) -> str:
    from models.manifest import sha256_file
    from pipeline.wiring import embedder_model

    path = embedder_model(cfg, name)
    return f"{name}:{cfg.tracker.embedder_size}:{sha256_file(path) if path else ''}"


def _compute(
    cfg: VigilConfig,
    seq_path: Path,
    floor: float,
    embedder_names: Sequence[str],
    progress: Callable[[int], Any] | None,
) -> CachedSequence:
    from pipeline.sources import FFmpegSource
    from pipeline.wiring import build_engine, build_named_embedder

    seq = read_sequence(seq_path)
    det_cfg = replace(cfg, model=replace(cfg.model, conf_threshold=floor))
    engine = build_engine(det_cfg, appearance=False)
    embedders = {name: build_named_embedder(cfg, name) for name in embedder_names}
    source = FFmpegSource(str(seq_path / "img1"), stream_id=seq.name, folder_fps=seq.fps)
    dets: list[Detections] = []
    feats: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
    spent = dict.fromkeys(embedders, 0.0)

    def run(batch: list[Frame]) -> None:
        found, _ = engine.process(batch)
        dets.extend(found)
        images, boxes = [f.image for f in batch], [d.xyxy for d in found]
        for name, emb in embedders.items():
            t = time.perf_counter()
            feats[name].extend(emb.embed(images, boxes))
            spent[name] += (time.perf_counter() - t) * 1e3
        if progress is not None:
            progress(len(batch))

    batch: list[Frame] = []
    try:
        for frame in source.frames():
            batch.append(frame)
            if len(batch) == cfg.batch.max_batch:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        source.close()
    counts = np.array([len(d) for d in dets], np.int64)
    n = len(dets)
    return CachedSequence(
        name=seq.name,
        frames=max(seq.frames, n),
        fps=seq.fps,
        xyxy=np.concatenate([d.xyxy for d in dets]) if n else np.zeros((0, 4), np.float32),
        confidence=np.concatenate([d.confidence for d in dets]) if n else np.zeros(0, np.float32),
        class_id=np.concatenate([d.class_id for d in dets]) if n else np.zeros(0, np.int32),
        offsets=np.concatenate(([0], np.cumsum(counts))),
        gt=load_mot(seq_path / "gt" / "gt.txt", keep_zero_conf=False),
        embeddings={
            k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in feats.items()
        },
        embed_ms={k: v / max(n, 1) for k, v in spent.items()},
    )


def _save(path: Path, c: CachedSequence) -> None:
    import io

    from models.manifest import atomic_write_bytes

    arrays: dict[str, Any] = {
        "xyxy": c.xyxy,
        "confidence": c.confidence,
        "class_id": c.class_id,
        "offsets": c.offsets,
        "gt": c.gt,
        "meta": np.array(
            json.dumps({"name": c.name, "frames": c.frames, "fps": c.fps, "embed_ms": c.embed_ms})
        ),
    }
    for name, e in c.embeddings.items():
        arrays[f"emb:{name}"] = e
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> CachedSequence:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return CachedSequence(
            name=meta["name"],
            frames=int(meta["frames"]),
            fps=float(meta["fps"]),
            xyxy=z["xyxy"],
            confidence=z["confidence"],
            class_id=z["class_id"],
            offsets=z["offsets"],
            gt=z["gt"],
            embeddings={k[4:]: z[k] for k in z.files if k.startswith("emb:")},
            embed_ms=meta["embed_ms"],
        )


def cache_sequences(
    cfg: VigilConfig,
    paths: Sequence[Path],
    cache_dir: Path,
    floor: float,
    embedder_names: Sequence[str] = (),
    progress: Callable[[int | None, str], Any] | None = None,
) -> list[CachedSequence]:
    """Detections at ``floor`` and each named embedder's embeddings for every sequence,
    loaded from ``cache_dir`` when present, computed (and stored) otherwise.
    ``progress(total_frames, name)`` may return a context manager with an ``update`` method."""
    out = []
    idents = {name: _embedder_identity(cfg, name) for name in embedder_names}
    for path in paths:
        seq = read_sequence(path)
        file = cache_dir / f"{seq.name}-{_key(cfg, path, floor, idents)}.npz"
        if file.is_file():
            out.append(_load(file))
            continue
        if progress is None:
            cached = _compute(cfg, path, floor, list(embedder_names), None)
        else:
            with progress(seq.frames or None, f"cache {seq.name}") as bar:
                cached = _compute(cfg, path, floor, list(embedder_names), bar.update)
        _save(file, cached)
        out.append(cached)
    return out


def run_tracker(
    seq: CachedSequence,
    tracker: Any,
    conf_threshold: float,
    embedder: str | None,
    detect_every: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Feed every cached frame to ``tracker``; returns the MOT rows ``(K, 6)`` (frame, id,
    x, y, w, h, rounded as ``tracks.txt`` writes them) and the tracker's ms per frame. With
    ``detect_every`` k > 1 the frames the live schedule would skip (``pipeline.schedule``, the
    cadence alone) get the tracker's prediction instead of their detections, as a replay with
    ``--detect-every k`` does."""
    if detect_every > 1 and not can_predict(tracker):
        raise VigilError(f"tracker {type(tracker).__name__} cannot predict skipped frames")
    schedule = DetectSchedule(detect_every)
    rows, ms = [], np.zeros(seq.frames)
    for i in range(seq.frames):  # a loop over frames, as the replay's tracking thread
        pts = i / seq.fps
        if not schedule.always and not schedule.decide(pts, moving=True):
            t = time.perf_counter()
            tracks = tracker.predict_only(i, pts)
            ms[i] = (time.perf_counter() - t) * 1e3
            rows += _mot_rows(tracks, i)
            continue
        dets, emb = seq.frame(i, conf_threshold, embedder if tracker.uses_appearance else None)
        t = time.perf_counter()
        tracks = tracker.update(dets, emb, i, pts)
        ms[i] = (time.perf_counter() - t) * 1e3
        rows += _mot_rows(tracks, i)
    return (np.concatenate(rows) if rows else np.zeros((0, 6))), ms


def _mot_rows(tracks: Tracks, i: int) -> list[np.ndarray]:
    """Frame ``i``'s tracks as MOT rows ``(n, 6)`` (frame from 1, id, x, y, w, h); [] if none."""
    if not len(tracks):
        return []
    xywh = np.concatenate((tracks.xyxy[:, :2], tracks.xyxy[:, 2:] - tracks.xyxy[:, :2]), axis=1)
    frame = np.full((len(tracks), 1), i + 1, np.float64)
    tid = tracks.track_id[:, None].astype(np.float64)
    return [np.concatenate((frame, tid, np.round(xywh.astype(np.float64), 2)), 1)]


def score_runs(
    seqs: Sequence[CachedSequence], rows: Sequence[np.ndarray]
) -> dict[str, dict[str, float]]:
    """TrackEval scores per sequence (and COMBINED when several) of tracker output ``rows``."""
    data = {
        s.name: trackeval_data(s.gt, r, s.frames, s.name) for s, r in zip(seqs, rows, strict=True)
    }
    return score_sequences(data)
