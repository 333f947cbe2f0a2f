"""The inference engine: preprocess -> detect -> decode/NMS -> embed, for a batch of frames.

Frames of one call may come from any streams; everything heavy is batched across them: one
detector call, one embedder call. Stream state (trackers) lives outside, in the runner.

The preprocessor (numpy/OpenCV, or DALI) hands its batch straight to the detector: on a GPU
with DALI and a CUDA backend it is a device tensor, never copied to the host.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.detector import Detector
from models.postprocess import PostprocessParams
from models.reid import Embedder
from pipeline.preprocess import CpuPreprocessor, LetterboxGeometry, boxes_to_source
from pipeline.types import Detections, Frame, VigilError


class Preprocessor(Protocol):
    """Letterbox a batch: ``(B, 3, S, S)`` RGB [0, 1] (host array or device tensor) and one
    geometry per frame."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Any, list[LetterboxGeometry]]: ...


@dataclass(frozen=True)
class ModelInfo:
    """Which model runs: reported in summaries and logs."""

    name: str
    version: str
    precision: str
    backend: str
    file: str
    sha256: str
    input_size: int
    class_names: tuple[str, ...]
    device: str = "cpu"  # where the detector runs: "cpu" or "cuda"
    preprocess: str = "numpy"  # "numpy" or "dali"


def class_filter(names: Sequence[str], wanted: Sequence[str]) -> np.ndarray | None:
    """Class ids for ``wanted`` (names or integer ids); None means every class."""
    if not wanted or "all" in wanted:
        return None
    ids = []
    for w in wanted:
        if w.isdigit() and int(w) < len(names):
            ids.append(int(w))
        elif w in names:
            ids.append(list(names).index(w))
        else:
            raise VigilError(f"unknown class {w!r} (the model has: {', '.join(names[:10])}...)")
    return np.array(sorted(set(ids)), np.int64)


class Engine:
    """Batched detection + appearance for frames of any streams (built by
    :func:`pipeline.wiring.build_engine`).

    classes: model class ids to keep (None: all); embedder: None when the tracker needs no
    appearance; thresholds as in ``model.*`` of the config; max_batch: frames per call;
    embed_min_confidence: detections below it get a zero embedding row instead of a crop
    through the embedder (the trackers use weaker detections by position only).
    preprocessor: the numpy/OpenCV letterbox unless given (DALI).
    """

    def __init__(
        self,
        detector: Detector,
        info: ModelInfo,
        classes: np.ndarray | None,
        embedder: Embedder | None,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_det: int = 300,
        max_batch: int = 8,
        embed_min_confidence: float = 0.0,
        preprocessor: Preprocessor | None = None,
    ) -> None:
        self.detector = detector
        self.info = info
        self.classes = classes
        self.embedder = embedder
        self.params = PostprocessParams(conf_threshold, iou_threshold, classes, max_det)
        self.embed_min_confidence = embed_min_confidence
        self.pre: Preprocessor = preprocessor or CpuPreprocessor(detector.input_size, max_batch)

    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        """Detections (source pixels) and embeddings for each frame.

        ``timings`` (if given) receives milliseconds per stage for the whole batch.
        """
        t0 = time.perf_counter()
        batch, geoms = self.pre([f.image for f in frames])
        t1 = time.perf_counter()
        split: dict[str, float] = {}
        found = self.detector.detect(batch, self.params, split)
        dets = [
            Detections(boxes_to_source(d.xyxy, g), d.confidence, d.class_id)
            for d, g in zip(found, geoms, strict=True)
        ]
        t3 = time.perf_counter()
        embeds: list[np.ndarray | None] = [None] * len(frames)
        if self.embedder is not None:
            embeds = list(self._embed(frames, dets, self.embedder))
        t4 = time.perf_counter()
        if timings is not None:
            infer_ms = split.get("infer", (t3 - t1) * 1e3)
            timings.update(
                preprocess=(t1 - t0) * 1e3,
                infer=infer_ms,
                nms=(t3 - t1) * 1e3 - infer_ms,
                embed=(t4 - t3) * 1e3,
            )
        return dets, embeds

    def _embed(
        self, frames: Sequence[Frame], dets: list[Detections], embedder: Embedder
    ) -> list[np.ndarray]:
        """Embeddings of every detection at or above ``embed_min_confidence`` (one call for
        the batch); zero rows for the others, so rows still line up with detections."""
        keep = [np.flatnonzero(d.confidence >= self.embed_min_confidence) for d in dets]
        boxes = [d.xyxy[k] for d, k in zip(dets, keep, strict=True)]
        rows = embedder.embed([f.image for f in frames], boxes)
        out = []
        for d, k, r in zip(dets, keep, rows, strict=True):
            full = np.zeros((len(d), embedder.dim), np.float32)
            full[k] = r
            out.append(full)
        return out
