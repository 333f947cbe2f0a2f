"""Configuration: loaded once, validated with bounds, passed in. Nothing reads the environment.

``configs/default.yaml`` documents every knob; a user file overrides any subset of it, and CLI
flags override the file. Unknown keys and out-of-range values are refused with one line that
names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.types import VigilError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "zoo" / "yolov5n" / "yolov5n.json"
DEFAULT_REID = PACKAGE_ROOT / "models" / "zoo" / "reid" / "mobilenetv2_reid.onnx"


@dataclass(frozen=True)
class ModelConfig:
    manifest: str = str(DEFAULT_MODEL)  # a model manifest (.json) or a plain YOLOv5 .onnx
    precision: str = "int8"  # int8 | fp32
    backend: str = "auto"  # auto | onnxruntime | openvino
    threads: int = 2  # intra-op threads of the detector and embedder
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_det: int = 300
    classes: tuple[str, ...] = ("person",)  # class names, or ("all",)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 8  # frames per detector call
    queue_frames: int = 32  # bound of each queue between stages (frames)


@dataclass(frozen=True)
class TrackerConfig:
    name: str = "deepsort"
    embedder: str = "mobilenet"  # mobilenet | histogram
    embedder_model: str = str(DEFAULT_REID)  # ONNX file of the mobilenet embedder
    max_age: int = 30
    n_init: int = 2
    max_iou_distance: float = 0.7
    max_cosine_distance: float = 0.3
    nn_budget: int = 50
    min_confidence: float = 0.0
    init_confidence: float = 0.5
    report_tentative: bool = True


@dataclass(frozen=True)
class SourceConfig:
    folder_fps: float = 25.0  # nominal rate of a frame folder without seqinfo.ini
    rtsp_transport: str = "tcp"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class VigilConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    source: SourceConfig = field(default_factory=SourceConfig)


_BOUNDS: dict[str, tuple[float, float]] = {
    "model.threads": (1, 64),
    "model.conf_threshold": (0.0, 1.0),
    "model.iou_threshold": (0.0, 1.0),
    "model.max_det": (1, 10000),
    "batch.max_batch": (1, 256),
    "batch.queue_frames": (1, 4096),
    "tracker.max_age": (1, 10000),
    "tracker.n_init": (1, 100),
    "tracker.max_iou_distance": (0.0, 1.0),
    "tracker.max_cosine_distance": (0.0, 2.0),
    "tracker.nn_budget": (1, 10000),
    "tracker.min_confidence": (0.0, 1.0),
    "tracker.init_confidence": (0.0, 1.0),
    "source.folder_fps": (0.1, 1000.0),
    "source.timeout_s": (0.5, 600.0),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.precision": ("int8", "fp32"),
    "model.backend": ("auto", "onnxruntime", "openvino"),
    "tracker.embedder": ("mobilenet", "histogram"),
    "source.rtsp_transport": ("tcp", "udp"),
}


def _coerce(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise VigilError(f"config {key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise VigilError(f"config {key}: expected a list of names, got {value!r}")
        return tuple(items)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise VigilError(f"config {key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise VigilError(f"config {key}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise VigilError(f"config {key}: expected a string, got {value!r}")
    return value


def _validate(key: str, value: Any) -> None:
    if key in _BOUNDS:
        lo, hi = _BOUNDS[key]
        if not lo <= value <= hi:
            raise VigilError(f"config {key}: {value} is outside [{lo:g}, {hi:g}]")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise VigilError(f"config {key}: {value!r} is not one of {', '.join(_CHOICES[key])}")


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise VigilError(f"config {prefix.rstrip('.') or 'file'}: expected a mapping")
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in known:
            raise VigilError(f"config: unknown key {key!r}")
        current = getattr(obj, name)
        if is_dataclass(current):
            changes[name] = _merge(current, value or {}, f"{key}.")
        else:
            coerced = _coerce(key, current, value)
            _validate(key, coerced)
            changes[name] = coerced
    return replace(obj, **changes)


def resolve_path(value: str) -> Path:
    """A config path as given if it exists, else relative to the installed package root
    (so the bundled ``models/zoo/...`` paths work from any working directory)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    return PACKAGE_ROOT / path


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> VigilConfig:
    """Defaults <- YAML file <- overrides (dotted keys, e.g. ``{"model.backend": "openvino"}``)."""
    cfg = VigilConfig()
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise VigilError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise VigilError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        cfg = _merge(cfg, data, "")
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        nested.setdefault(section, {})[name] = value
    return _merge(cfg, nested, "") if nested else cfg
