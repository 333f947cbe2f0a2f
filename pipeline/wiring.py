"""Wiring: the one place that turns configuration into a detector, an embedder, a tracker and a
stream's analytics.

Everything that runs a model (replay, the live server, evaluation, benchmarks, the toolchain's
report) resolves it here, so ``--model NAME``, a pinned ``NAME@1.2.0``, a manifest path and a
bare ONNX file mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analytics.stream import StreamAnalytics
from models.classes import COCO_NAMES
from models.detector import create_detector
from models.manifest import ModelManifest, sha256_file
from models.registry import is_reference, resolve
from models.reid import Embedder, create_embedder
from pipeline.config import ModelConfig, StreamConfig, TrackerConfig, VigilConfig, resolve_path
from pipeline.engine import Engine, ModelInfo, class_filter
from pipeline.types import VigilError
from trackers.base import Tracker
from trackers.registry import TRACKERS, create_tracker


@dataclass(frozen=True)
class ResolvedModel:
    """The ONNX file to run, and its manifest (None for a bare ``.onnx``)."""

    onnx: Path
    manifest: ModelManifest | None
    manifest_path: Path | None


def resolve_manifest(spec: str, registry: str | Path) -> Path:
    """A registry reference (``name``, ``name@1.2.0``) or a manifest path -> the manifest path."""
    if is_reference(spec):
        return resolve(spec, resolve_path(str(registry)))
    path = resolve_path(spec)
    if path.suffix != ".json":
        raise VigilError(f"expected a registry name or a model manifest (.json), got {spec}")
    if not path.is_file():
        raise VigilError(f"model manifest not found: {path}")
    return path


def resolve_model(model: ModelConfig, precision: str | None = None) -> ResolvedModel:
    """The file ``model.manifest`` names, at ``precision`` (default ``model.precision``)."""
    spec = model.manifest
    path = resolve(spec, resolve_path(model.registry)) if is_reference(spec) else resolve_path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise VigilError(f"model file not found: {path}")
        return ResolvedModel(path, None, None)
    if path.suffix != ".json":
        raise VigilError(f"model must be a manifest (.json) or an ONNX file (.onnx): {path}")
    manifest = ModelManifest.load(path)
    role = f"onnx-{precision or model.precision}-{manifest.input_size}"
    return ResolvedModel(manifest.file_path(path, role), manifest, path)


def tracker_uses_appearance(tracker: TrackerConfig) -> bool:
    return bool(build_tracker(tracker).uses_appearance)


def build_tracker(tracker: TrackerConfig) -> Tracker:
    """A fresh tracker state for one stream."""
    if tracker.name not in TRACKERS:
        raise VigilError(f"unknown tracker {tracker.name!r} (choose {', '.join(TRACKERS)})")
    return create_tracker(tracker.name, tracker.params())


def build_analytics(
    cfg: VigilConfig, stream: StreamConfig, class_names: Sequence[str], live: bool
) -> StreamAnalytics:
    """A fresh analytics state for one stream: its lines, zones and camera-health checks (the
    drift check only ``live``). VigilError names a rule whose classes the model does not know."""
    return StreamAnalytics(
        stream.id, class_names, cfg.analytics, stream.lines, stream.zones, stream.health, live
    )


def build_embedder(cfg: VigilConfig) -> Embedder | None:
    """The appearance embedder, or None when the configured tracker does not use appearance."""
    if not tracker_uses_appearance(cfg.tracker):
        return None
    t = cfg.tracker
    return create_embedder(t.embedder, resolve_path(t.embedder_model), cfg.model.threads)


def build_engine(cfg: VigilConfig) -> Engine:
    """Detector + embedder for ``cfg``, with the model's identity for summaries and /readyz."""
    m = cfg.model
    resolved = resolve_model(m)
    detector = create_detector(resolved.onnx, m.backend, m.threads)
    nc = detector.num_outputs - 5
    manifest = resolved.manifest
    names = list(manifest.class_names) if manifest else (list(COCO_NAMES) if nc == 80 else [])
    names = names or [f"class{i}" for i in range(nc)]
    info = ModelInfo(
        name=manifest.name if manifest else resolved.onnx.stem,
        version=manifest.version if manifest else "unversioned",
        precision=m.precision if manifest else "as-file",
        backend=detector.backend,
        file=resolved.onnx.name,
        sha256=sha256_file(resolved.onnx),
        input_size=detector.input_size,
        class_names=tuple(names),
    )
    return Engine(
        detector,
        info,
        class_filter(names, m.classes),
        build_embedder(cfg),
        m.conf_threshold,
        m.iou_threshold,
        m.max_det,
        cfg.batch.max_batch,
    )
