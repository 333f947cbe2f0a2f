"""The inference engine: preprocess -> detect -> decode/NMS -> embed, for a batch of frames.

Frames of one call may come from any streams; everything heavy is batched across them: one
detector call, one embedder call. Stream state (trackers) lives outside, in the runner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.detector import Detector, create_detector
from models.manifest import ModelManifest
from models.postprocess import postprocess
from models.reid import Embedder, create_embedder
from pipeline.config import VigilConfig, resolve_path
from pipeline.preprocess import CpuPreprocessor, boxes_to_source
from pipeline.types import Detections, Frame, VigilError


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


def resolve_model(cfg: VigilConfig) -> tuple[Path, ModelManifest | None]:
    """The ONNX file to run and its manifest (None for a bare ``.onnx``)."""
    from models.registry import is_reference, resolve

    if is_reference(cfg.model.manifest):
        spec = resolve(cfg.model.manifest, resolve_path(cfg.model.registry))
    else:
        spec = resolve_path(cfg.model.manifest)
    if spec.suffix == ".onnx":
        if not spec.is_file():
            raise VigilError(f"model file not found: {spec}")
        return spec, None
    if spec.suffix != ".json":
        raise VigilError(f"model must be a manifest (.json) or an ONNX file (.onnx): {spec}")
    manifest = ModelManifest.load(spec)
    role = f"onnx-{cfg.model.precision}-{manifest.input_size}"
    return manifest.file_path(spec, role), manifest


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
    """Batched detection + appearance for frames of any streams."""

    def __init__(self, cfg: VigilConfig, need_embeddings: bool = True) -> None:
        from evaluation.detection import COCO_NAMES
        from models.manifest import sha256_file

        self.cfg = cfg
        path, manifest = resolve_model(cfg)
        self.detector: Detector = create_detector(path, cfg.model.backend, cfg.model.threads)
        nc = self.detector.num_outputs - 5
        names = manifest.class_names if manifest else (COCO_NAMES if nc == 80 else [])
        names = names or [f"class{i}" for i in range(nc)]
        self.classes = class_filter(names, cfg.model.classes)
        self.info = ModelInfo(
            name=manifest.name if manifest else path.stem,
            version=manifest.version if manifest else "unversioned",
            precision=cfg.model.precision if manifest else "as-file",
            backend=self.detector.backend,
            file=path.name,
            sha256=sha256_file(path),
            input_size=self.detector.input_size,
            class_names=tuple(names),
        )
        self.pre = CpuPreprocessor(self.detector.input_size, cfg.batch.max_batch)
        self.embedder: Embedder | None = None
        if need_embeddings:
            self.embedder = create_embedder(
                cfg.tracker.embedder, resolve_path(cfg.tracker.embedder_model), cfg.model.threads
            )

    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        """Detections (source pixels) and embeddings for each frame.

        ``timings`` (if given) receives milliseconds per stage for the whole batch.
        """
        m = self.cfg.model
        t0 = time.perf_counter()
        batch, geoms = self.pre([f.image for f in frames])
        t1 = time.perf_counter()
        raw = self.detector.infer(batch)
        t2 = time.perf_counter()
        dets = []
        for pred, g in zip(raw, geoms, strict=True):
            d = postprocess(pred, m.conf_threshold, m.iou_threshold, self.classes, m.max_det)
            dets.append(Detections(boxes_to_source(d.xyxy, g), d.confidence, d.class_id))
        t3 = time.perf_counter()
        embeds: list[np.ndarray | None] = [None] * len(frames)
        if self.embedder is not None:
            embeds = list(self.embedder.embed([f.image for f in frames], [d.xyxy for d in dets]))
        t4 = time.perf_counter()
        if timings is not None:
            timings.update(
                preprocess=(t1 - t0) * 1e3,
                infer=(t2 - t1) * 1e3,
                nms=(t3 - t2) * 1e3,
                embed=(t4 - t3) * 1e3,
            )
        return dets, embeds
