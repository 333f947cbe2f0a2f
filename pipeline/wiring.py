"""Wiring: the one place that turns configuration into a detector, an embedder, a tracker and a
stream's analytics.

Everything that runs a model (replay, the live server, evaluation, benchmarks, the toolchain's
report) resolves it here, so ``--model NAME``, a pinned ``NAME@1.2.0``, a manifest path and a
bare ONNX file mean the same thing everywhere.

Device placement follows the detector: with a CUDA backend (``torch-cuda``, ``tensorrt``) the
CNN embedder runs in torch on the same GPU (:mod:`models.reid_torch`) and DALI, when chosen,
preprocesses on it; on the CPU both stay on the CPU (``torch``: the embedder in torch too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analytics.stream import StreamAnalytics
from models.classes import COCO_NAMES
from models.detector import Detector, DetectorSpec, create_detector
from models.manifest import ModelManifest, sha256_file
from models.registry import is_reference, resolve, roots
from models.reid import Embedder, create_embedder
from pipeline.config import (
    ModelConfig,
    SourceConfig,
    StreamConfig,
    TrackerConfig,
    VigilConfig,
    resolve_path,
)
from pipeline.decode import DecodePlan, resolve_decode
from pipeline.engine import Engine, ModelInfo, Preprocessor, class_filter
from pipeline.preprocess import CpuPreprocessor
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


def tracker_uses_appearance(tracker: TrackerConfig, name: str = "") -> bool:
    return bool(build_tracker(tracker, name).uses_appearance)


def build_tracker(tracker: TrackerConfig, name: str = "") -> Tracker:
    """A fresh tracker state for one stream: tracker ``name`` (a stream's own choice; empty:
    ``tracker.name``) with its ``tracker.<section>`` knobs."""
    name = name or tracker.name
    if name not in TRACKERS:
        raise VigilError(f"unknown tracker {name!r} (choose {', '.join(TRACKERS)})")
    return create_tracker(name, tracker.params(name))


def build_analytics(
    cfg: VigilConfig, stream: StreamConfig, class_names: Sequence[str], live: bool
) -> StreamAnalytics:
    """A fresh analytics state for one stream: its lines, zones and camera-health checks (the
    drift check only ``live``). VigilError names a rule whose classes the model does not know."""
    return StreamAnalytics(
        stream.id, class_names, cfg.analytics, stream.lines, stream.zones, stream.health, live
    )


def build_embedder(
    cfg: VigilConfig, device: str = "cpu", torch_backend: bool = False
) -> Embedder | None:
    """The appearance embedder, or None when neither the configured tracker nor any configured
    stream's own tracker uses appearance. ``device``/``torch_backend``: as in
    :func:`build_named_embedder`."""
    chosen = {cfg.tracker.name, *(s.tracker for s in cfg.streams if s.tracker)}
    if not any(tracker_uses_appearance(cfg.tracker, name) for name in chosen):
        return None
    return build_named_embedder(cfg, cfg.tracker.embedder, device, torch_backend)


def embedder_model(cfg: VigilConfig, name: str) -> Path | None:
    """The file behind embedder ``name``: none for ``histogram``, ``tracker.embedder_model``
    for ``mobilenet``, else a re-id manifest by registry name (``model.registry``, then the
    zoo) or by path (written by ``vigil models import-reid``)."""
    if name == "histogram":
        return None
    if name == "mobilenet":
        return resolve_path(cfg.tracker.embedder_model)
    if is_reference(name):
        for root in roots(resolve_path(cfg.model.registry)):
            path = root / name / f"{name}.json"
            if path.is_file():
                return path
        raise VigilError(
            f"unknown embedder {name!r}: not histogram or mobilenet, and no re-id model of that "
            "name in the registry (import one: vigil models import-reid FILE.onnx --name NAME)"
        )
    path = resolve_path(name)
    if path.suffix != ".json":
        raise VigilError(f"embedder {name}: expected a re-id manifest (.json) from import-reid")
    return path


def embed_min_confidence(cfg: VigilConfig) -> float:
    """The weakest detection any configured appearance tracker reads an embedding of: its
    ``high_confidence`` (weaker ones it matches by position only), 0 if it has no such knob."""
    chosen = {cfg.tracker.name, *(s.tracker for s in cfg.streams if s.tracker)}
    floors = [
        float(getattr(cfg.tracker.params(name), "high_confidence", 0.0))
        for name in chosen
        if tracker_uses_appearance(cfg.tracker, name)
    ]
    return min(floors, default=0.0)


def build_named_embedder(
    cfg: VigilConfig, name: str, device: str = "cpu", torch_backend: bool = False
) -> Embedder:
    """Embedder ``name`` (see :func:`embedder_model`) at ``tracker.embedder_size``.

    The bundled ``mobilenet`` runs in torch on ``device`` when the detector is a torch/TensorRT
    backend (``torch_backend``); imported re-id models (their own preprocessing) and crop sizes
    other than the model's own run in ONNX Runtime on the CPU."""
    model = embedder_model(cfg, name)
    if name == "mobilenet" and torch_backend and not cfg.tracker.embedder_size and model:
        from models.reid_torch import TorchEmbedder

        return TorchEmbedder(model, device, name)
    return create_embedder(name, model, cfg.model.threads, cfg.tracker.embedder_size)


def build_detector(cfg: VigilConfig, resolved: ResolvedModel | None = None) -> Detector:
    """The detector ``model.*`` asks for (``auto`` resolved here)."""
    m = cfg.model
    resolved = resolved or resolve_model(m)
    spec = DetectorSpec(
        resolved.onnx,
        resolved.manifest_path,
        m.backend,
        m.threads,
        max(cfg.batch.max_batch, cfg.live.max_batch),
        m.cuda_graphs,
        resolve_path(m.engine_cache),
    )
    return create_detector(spec)


def build_preprocessor(cfg: VigilConfig, detector: Detector) -> Preprocessor:
    """numpy/OpenCV, or DALI (on the detector's GPU when it takes device input)."""
    max_batch = max(cfg.batch.max_batch, cfg.live.max_batch)
    if cfg.model.preprocess == "dali":
        from pipeline.preprocess_dali import DaliPreprocessor

        device_id = 0 if detector.accepts_device else None
        fp16 = detector.input_dtype == "float16" and device_id is not None
        return DaliPreprocessor(detector.input_size, max_batch, device_id, fp16, cfg.model.threads)
    return CpuPreprocessor(detector.input_size, max_batch)


def build_decode(source: SourceConfig) -> DecodePlan:
    """Which FFmpeg decodes, and how (NVDEC or CPU threads), for every source of ``source``."""
    return resolve_decode(source.ffmpeg, source.decode, source.decode_threads)


def build_engine(cfg: VigilConfig, appearance: bool | None = None) -> Engine:
    """Detector + preprocessor + embedder for ``cfg``, with the model's identity for summaries
    and /readyz.
    ``appearance=False`` builds no embedder whatever the trackers need (the tuner embeds
    separately, once per embedder)."""
    m = cfg.model
    resolved = resolve_model(m)
    detector = build_detector(cfg, resolved)
    nc = detector.num_outputs - 5
    manifest = resolved.manifest
    names = list(manifest.class_names) if manifest else (list(COCO_NAMES) if nc == 80 else [])
    names = names or [f"class{i}" for i in range(nc)]
    precision = detector.precision
    if precision == "as-file":  # an ONNX runtime runs the ONNX at model.precision
        precision = m.precision if manifest else "as-file"
    info = ModelInfo(
        name=manifest.name if manifest else resolved.onnx.stem,
        version=manifest.version if manifest else "unversioned",
        precision=precision,
        backend=detector.backend,
        file=detector.model_file.name,
        sha256=sha256_file(detector.model_file),
        input_size=detector.input_size,
        class_names=tuple(names),
        device="cuda" if detector.accepts_device else "cpu",
        preprocess=m.preprocess,
    )
    preprocessor = build_preprocessor(cfg, detector)
    torch_backend = detector.backend in ("torch", "torch-cuda", "tensorrt")
    return Engine(
        detector,
        info,
        class_filter(names, m.classes),
        build_embedder(cfg, info.device, torch_backend) if appearance is not False else None,
        m.conf_threshold,
        m.iou_threshold,
        m.max_det,
        cfg.batch.max_batch,
        embed_min_confidence(cfg),
        preprocessor,
    )
