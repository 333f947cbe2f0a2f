"""Configuration: loaded once, validated with bounds, passed in. Nothing reads the environment.

``configs/default.yaml`` documents every knob; a user file overrides any subset of it, and CLI
flags override the file. Unknown keys and out-of-range values are refused with one line that
names the key.
"""

from __future__ import annotations

import re
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
    manifest: str = str(DEFAULT_MODEL)  # registry name[@version], manifest (.json) or .onnx
    registry: str = "models/registry"  # the user's model registry (searched before the zoo)
    precision: str = "int8"  # int8 | fp32 | int8-qat (when the model has one)
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
class LiveConfig:
    max_batch: int = 8  # frames (one per stream) per detector call in live mode
    max_wait_ms: float = 15.0  # emit a partial batch once its oldest frame waited this long
    stall_timeout_s: float = 10.0  # restart a stream that yielded no frame for this long
    backoff_initial_s: float = 0.5  # first reconnection delay; doubles up to backoff_max_s
    backoff_max_s: float = 30.0
    max_streams: int = 64
    # Niceness of the inference threads (Linux). Above 0, decoding, reconnecting and serving
    # win the CPU under overload: inference then drops frames instead of starving the cameras.
    inference_nice: int = 5


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    media_root: str = "."  # file and folder streams must resolve inside this folder
    allow_http: bool = False  # accept http(s):// stream URLs
    ws_queue: int = 64  # per-client queue of messages; the oldest are dropped beyond it
    ws_ping_interval_s: float = 20.0  # WebSocket keepalive ping; a peer that misses a pong dies
    ws_ping_timeout_s: float = 20.0
    drain_timeout_s: float = 5.0  # shutdown: how long the batch in flight may take


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[str, ...] = ()  # API keys, plain or "sha256:<hex>"; empty: auth off
    keys_file: str = ""  # a file with one key (or sha256:<hex>) per line, or KEY=value lines
    protect_reads: bool = False  # also require a key for GET /api/* (healthz stays open)
    protect_metrics: bool = False  # require a key for /metrics
    mutations_per_minute: int = 30  # per key; POST/DELETE beyond it get 429
    allow_anonymous_remote: bool = False  # serve without keys on a non-loopback host


@dataclass(frozen=True)
class VigilConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    streams: tuple[dict[str, Any], ...] = ()  # validated by pipeline.config.parse_streams


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
    "live.max_batch": (1, 256),
    "live.max_wait_ms": (0.0, 1000.0),
    "live.stall_timeout_s": (0.5, 3600.0),
    "live.backoff_initial_s": (0.01, 60.0),
    "live.backoff_max_s": (0.1, 3600.0),
    "live.max_streams": (1, 1024),
    "live.inference_nice": (0, 19),
    "server.port": (0, 65535),
    "server.ws_queue": (1, 100000),
    "server.ws_ping_interval_s": (0.0, 3600.0),
    "server.ws_ping_timeout_s": (0.1, 3600.0),
    "server.drain_timeout_s": (0.0, 600.0),
    "auth.mutations_per_minute": (1, 100000),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.precision": ("int8", "fp32", "int8-qat"),
    "model.backend": ("auto", "onnxruntime", "openvino"),
    "tracker.embedder": ("mobilenet", "histogram"),
    "source.rtsp_transport": ("tcp", "udp"),
}


def _coerce(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise VigilError(f"config {key}: expected true or false, got {value!r}")
        return value
    if key == "streams":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise VigilError("config streams: expected a list of mappings (id, url, ...)")
        return tuple(value)
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


_STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STREAM_KEYS = {"id", "url", "fps", "loop", "realtime", "rtsp_transport"}


def validate_stream(data: dict[str, Any]) -> dict[str, Any]:
    """Check one stream entry (config file or REST body); returns it with defaults filled."""
    unknown = set(data) - _STREAM_KEYS
    if unknown:
        raise VigilError(f"stream: unknown key {sorted(unknown)[0]!r}")
    sid = data.get("id")
    if not isinstance(sid, str) or not _STREAM_ID.match(sid):
        raise VigilError(f"stream id must match {_STREAM_ID.pattern}, got {sid!r}")
    url = data.get("url")
    if not isinstance(url, str) or not url.strip():
        raise VigilError(f"stream {sid}: url must be a non-empty string")
    fps = data.get("fps", 10.0)
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 <= fps <= 240:
        raise VigilError(f"stream {sid}: fps must be a number in [0, 240], got {fps!r}")
    for flag in ("loop", "realtime"):
        if not isinstance(data.get(flag, True), bool):
            raise VigilError(f"stream {sid}: {flag} must be true or false")
    transport = data.get("rtsp_transport", "tcp")
    if transport not in ("tcp", "udp"):
        raise VigilError(f"stream {sid}: rtsp_transport must be tcp or udp")
    return {
        "id": sid,
        "url": url.strip(),
        "fps": float(fps),
        "loop": data.get("loop", True),
        "realtime": data.get("realtime", True),
        "rtsp_transport": transport,
    }
