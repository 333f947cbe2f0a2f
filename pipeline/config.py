"""Configuration: loaded once, validated with bounds, passed in. Nothing reads the environment.

The dataclasses below are the one schema of every knob: a field's default is the default, and
its ``metadata`` holds its bounds (``range``), allowed values (``choices``; ``each_of`` for a
list of names), a ``pattern`` for names, the dataclass of its ``items`` (a list of mappings), or
``points`` (how many ``[x, y]`` pairs, each coordinate in 0..1). A dataclass with a
``problem()`` method is also checked as a whole (a polygon's area, unique rule ids).
``configs/default.yaml`` documents the same knobs (a test keeps the two in step); a user file
overrides any subset of it, and CLI flags override the file. Unknown keys and out-of-range
values are refused with one line that names the key.

Tracker parameters are each tracker's own dataclass (``trackers.*``), nested under
``tracker.<name>``; a stream's lines, zones and camera-health settings are the analytics' own
dataclasses (``analytics.rules``); streams are :class:`StreamConfig`, the one schema the config
file, the REST API, the replay ``--analytics`` file and the live pipeline share.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from analytics.events import EVENT_KINDS
from analytics.rules import (
    AnalyticsParams,
    HealthParams,
    LineRule,
    ZoneRule,
    duplicate_rule_id,
)
from pipeline.types import VigilError
from trackers.bytetrack import ByteTrackParams
from trackers.deepsort import DeepSortParams
from trackers.registry import TRACKERS

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "zoo" / "yolov5n" / "yolov5n.json"
DEFAULT_REID = PACKAGE_ROOT / "models" / "zoo" / "reid" / "mobilenetv2_reid.onnx"
SAMPLE_CLIP = PACKAGE_ROOT / "assets" / "one-by-one-person-detection.mp4"  # bundled, CC BY 4.0

STREAM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RULE_FIELDS = ("lines", "zones", "health")  # what a replay --analytics file may hold
_T = TypeVar("_T")


def bounded(default: float, lo: float, hi: float) -> Any:
    """A numeric knob with inclusive bounds."""
    return field(default=default, metadata={"range": (lo, hi)})


def one_of(default: str, *choices: str) -> Any:
    """A string knob with a fixed set of values."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class ModelConfig:
    manifest: str = str(DEFAULT_MODEL)  # registry name[@version], manifest (.json) or .onnx
    registry: str = "models/registry"  # the user's model registry (searched before the zoo)
    precision: str = one_of("int8", "int8", "fp32", "int8-qat")
    backend: str = one_of(
        "auto", "auto", "onnxruntime", "openvino", "torch", "torch-cuda", "tensorrt"
    )
    threads: int = bounded(2, 1, 64)  # intra-op threads of the detector and embedder
    preprocess: str = one_of("numpy", "numpy", "dali")  # letterbox: numpy/OpenCV or DALI
    cuda_graphs: bool = True  # torch-cuda: one CUDA graph per batch bucket
    engine_cache: str = "runs/engines"  # tensorrt: where `vigil models build-engine` wrote
    # detections below this are dropped; the trackers' own thresholds split the rest into
    # strong (start and match tracks) and weak (only continue tracks: ByteTrack's idea)
    conf_threshold: float = bounded(0.1, 0.0, 1.0)
    iou_threshold: float = bounded(0.45, 0.0, 1.0)
    max_det: int = bounded(300, 1, 10000)
    classes: tuple[str, ...] = ("person",)  # class names, or ("all",)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = bounded(8, 1, 256)  # frames per detector call
    queue_frames: int = bounded(32, 1, 4096)  # bound of each queue between stages (frames)


@dataclass(frozen=True)
class TrackerConfig:
    name: str = field(default="deepsort", metadata={"choices": tuple(TRACKERS)})
    # mobilenet, histogram, or a re-id model imported with `vigil models import-reid`
    # (its registry name or manifest path)
    embedder: str = field(default="mobilenet", metadata={"pattern": r"^\S+$"})
    embedder_model: str = str(DEFAULT_REID)  # ONNX file of the mobilenet embedder
    embedder_size: str = field(default="", metadata={"pattern": r"^(\d+x\d+)?$"})  # crop HxW
    # One section per registered tracker (a test checks that every tracker has one);
    # deepsort-reference reads the deepsort section.
    deepsort: DeepSortParams = field(default_factory=DeepSortParams)
    bytetrack: ByteTrackParams = field(default_factory=ByteTrackParams)

    def params(self, name: str = "") -> Any:
        """The parameters of tracker ``name`` (default: the chosen one), its own dataclass."""
        return getattr(self, TRACKERS[name or self.name].section)


@dataclass(frozen=True)
class SourceConfig:
    folder_fps: float = bounded(25.0, 0.1, 1000.0)  # nominal rate of a frame folder
    rtsp_transport: str = one_of("tcp", "tcp", "udp")
    timeout_s: float = bounded(10.0, 0.5, 600.0)
    ffmpeg: str = "ffmpeg"  # the FFmpeg binary: a name on PATH or a path
    decode: str = one_of("auto", "auto", "cpu", "cuda")  # cuda: NVDEC via -hwaccel cuda
    decode_threads: int = bounded(0, 0, 64)  # CPU decoder threads per stream (0: FFmpeg's)


@dataclass(frozen=True)
class LiveConfig:
    max_batch: int = bounded(8, 1, 256)  # frames (one per stream) per detector call
    max_wait_ms: float = bounded(15.0, 0.0, 1000.0)  # emit a partial batch after this wait
    stall_timeout_s: float = bounded(10.0, 0.5, 3600.0)  # restart a silent stream
    backoff_initial_s: float = bounded(0.5, 0.01, 60.0)  # first reconnection delay
    backoff_max_s: float = bounded(30.0, 0.1, 3600.0)
    max_streams: int = bounded(64, 1, 1024)
    # Niceness of the inference threads (Linux). Above 0, decoding, reconnecting and serving
    # win the CPU under overload: inference then drops frames instead of starving the cameras.
    inference_nice: int = bounded(5, 0, 19)


@dataclass(frozen=True)
class CapacityConfig:
    """Admission control and per-stream QoS (``pipeline.capacity``): the machine's budget is
    ``cpus`` (0: the cores this process may use) x ``target_load`` of CPU time; measured costs
    say how much each stream takes of it."""

    enabled: bool = True  # refuse (409) a stream that would overload; degrade by priority
    cpus: float = bounded(0.0, 0.0, 1024.0)  # CPU cores to budget (0: os.sched_getaffinity)
    target_load: float = bounded(0.8, 0.05, 1.0)  # fraction of the budget admission may fill
    calibrate: bool = True  # time the detector at start (batch 1 and live.max_batch)
    smoothing: float = bounded(0.05, 0.001, 1.0)  # weight of each new measurement (EWMA)
    floor_fps: float = bounded(1.0, 0.0, 240.0)  # under overload no stream goes below this
    # (or its own min_fps when higher)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = bounded(8000, 0, 65535)
    media_root: str = "."  # file and folder streams must resolve inside this folder
    allow_http: bool = False  # accept http(s):// stream URLs
    # Hosts (names or IP networks, e.g. "cam.local", "10.1.0.0/16") that network stream URLs
    # may point at; empty: any. Names are compared as written, never resolved.
    allowed_hosts: tuple[str, ...] = ()
    redact_query: bool = True  # API output masks every query value of a stream URL
    ws_queue: int = bounded(64, 1, 100000)  # per-client queue; the oldest dropped beyond it
    ws_ping_interval_s: float = bounded(20.0, 0.0, 3600.0)  # keepalive ping (0: off)
    ws_ping_timeout_s: float = bounded(20.0, 0.1, 3600.0)
    drain_timeout_s: float = bounded(5.0, 0.0, 600.0)  # shutdown: the batch in flight
    # Kernel send buffer per connection, KiB (0: the OS default, which grows to MBs per client
    # that stops reading); bounds what a stalled client can hold.
    send_buffer_kb: int = bounded(256, 0, 65536)
    # What one client may send. WebSocket messages above ws_max_message_bytes close the
    # connection (1009) before they are read; past ws_messages_per_s (bursts of 10 s worth) or
    # ws_bad_messages_per_minute malformed ones it is closed with 1008.
    ws_max_message_bytes: int = bounded(16384, 256, 1048576)
    ws_messages_per_s: float = bounded(10.0, 0.1, 1000.0)
    ws_bad_messages_per_minute: int = bounded(10, 1, 10000)
    ws_max_clients: int = bounded(1024, 1, 100000)  # beyond it new clients are closed with 1013
    max_body_kb: int = bounded(64, 1, 65536)  # larger HTTP request bodies get 413
    header_timeout_s: float = bounded(10.0, 0.5, 600.0)  # a request's headers must arrive in this
    malloc_trim_interval_s: float = bounded(60.0, 0.0, 86400.0)  # gc + malloc_trim (0: off)


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[str, ...] = ()  # API keys, plain or "sha256:<hex>"; empty: auth off
    keys_file: str = ""  # a file with one key (or sha256:<hex>) per line, or KEY=value lines
    protect_reads: bool = False  # also require a key for GET /api/* (healthz stays open)
    protect_metrics: bool = False  # require a key for /metrics
    mutations_per_minute: int = bounded(30, 1, 100000)  # per key; beyond it 429
    allow_anonymous_remote: bool = False  # serve without keys on a non-loopback host


@dataclass(frozen=True)
class DashboardConfig:
    """The web page at ``/`` (server/static) and what it needs from the server: the preview
    JPEGs of watched cameras and the short-lived session tokens a browser uses instead of the
    API key."""

    enabled: bool = True  # serve the page at / (the REST and WebSocket APIs stay either way)
    preview_fps: float = bounded(5.0, 0.0, 30.0)  # preview frames per watched camera (0: none)
    preview_width: int = bounded(640, 64, 3840)  # preview JPEG width, px (never upscaled)
    preview_quality: int = bounded(70, 10, 100)  # JPEG quality
    token_ttl_s: float = bounded(600.0, 30.0, 86400.0)  # a session token's lifetime
    # A file whose first line (>= 32 characters) signs session tokens: they then survive a
    # restart and work on every gateway sharing it. Empty: a random secret per process.
    token_secret_file: str = ""


@dataclass(frozen=True)
class RedisConfig:
    """How ``vigil worker`` and ``vigil gateway`` reach Redis (``vigil serve`` never does)."""

    url: str = "redis://127.0.0.1:6379/0"  # redis:// or rediss:// (TLS); no password in here
    username: str = ""  # Redis 6+ ACL user (empty: the default user)
    password: str = ""  # never logged; prefer password_file
    password_file: str = ""  # a file whose first line is the password (e.g. a mounted secret)
    tls_ca_file: str = ""  # CA bundle for rediss:// (empty: the system's)
    tls_cert_file: str = ""  # client certificate for mutual TLS (optional)
    tls_key_file: str = ""
    key_prefix: str = field(default="vigil", metadata={"pattern": r"^[A-Za-z0-9_.-]{1,32}$"})
    timeout_s: float = bounded(2.0, 0.05, 60.0)  # connect and command timeout
    backoff_initial_s: float = bounded(0.2, 0.01, 60.0)  # reconnection delays (jittered)
    backoff_max_s: float = bounded(5.0, 0.1, 600.0)


@dataclass(frozen=True)
class ClusterConfig:
    """Scale-out roles: workers own cameras by lease, gateways serve clients from Redis."""

    node_id: str = field(default="", metadata={"pattern": r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"})
    # Admission: the most cameras one worker claims (the capacity estimate's seam).
    worker_max_streams: int = bounded(8, 1, 1024)
    lease_ttl_s: float = bounded(10.0, 0.5, 600.0)  # a dead worker's cameras wait this long
    claim_interval_s: float = bounded(1.0, 0.05, 60.0)  # how often workers look for cameras
    rebalance: bool = True  # hand a camera to a worker that owns at least two fewer
    stream_maxlen: int = bounded(1000, 10, 10_000_000)  # entries kept per camera (approximate)
    buffer_messages: int = bounded(2000, 1, 1_000_000)  # a worker's queue while Redis is away
    write_batch: int = bounded(256, 1, 100_000)  # entries per Redis round trip
    gateway_read_count: int = bounded(100, 1, 100_000)  # entries per stream per read
    event_group: str = field(default="event-store", metadata={"pattern": r"^[A-Za-z0-9_.-]{1,64}$"})


@dataclass(frozen=True)
class MotionConfig:
    """Motion gating of one stream (``pipeline.motion``): on a small grey image of each frame
    (the camera-health thumbnail), pixels that differ from a running background by more than
    ``threshold`` grey levels (the sensitivity: lower is more sensitive), dilated, must cover
    ``min_area`` of the frame for the frame to count as moving. A frame with no motion and no
    live track skips the detector; a full detection still runs every ``full_detect_s``."""

    enabled: bool = False
    threshold: float = bounded(20.0, 1.0, 255.0)
    min_area: float = bounded(0.002, 0.0, 1.0)
    background_s: float = bounded(2.0, 0.05, 3600.0)
    full_detect_s: float = bounded(5.0, 0.1, 3600.0)


@dataclass(frozen=True)
class StreamConfig:
    """One live stream: the config file's ``streams:`` entries and the REST body alike.

    ``fps``: inference rate (0: every decoded frame); ``loop`` and ``realtime`` apply to files
    and folders (a recorded file played as a live camera); ``url`` is an ``rtsp://``,
    ``rtsps://`` (``http(s)://`` if allowed) URL or a path under ``server.media_root``;
    ``tracker`` picks this stream's tracker by name (empty: ``tracker.name``), with that
    tracker's ``tracker.<section>`` knobs. Capacity: ``detect_every`` runs the detector on
    every k-th inferred frame (the tracker predicts the others), ``motion`` skips it on still
    frames, ``priority`` (higher keeps its fps longer under overload) and ``min_fps`` (above 0:
    the lowest rate this stream accepts, at admission and under overload) as in
    ``pipeline.capacity``.
    """

    id: str = field(default="", metadata={"pattern": STREAM_ID, "required": True})
    url: str = field(default="", metadata={"required": True, "max_length": 2048})
    fps: float = bounded(10.0, 0.0, 240.0)
    loop: bool = True
    realtime: bool = True
    rtsp_transport: str = one_of("tcp", "tcp", "udp")
    tracker: str = field(default="", metadata={"choices": ("", *TRACKERS)})  # "": tracker.name
    lines: tuple[LineRule, ...] = field(default=(), metadata={"items": LineRule, "max_items": 256})
    zones: tuple[ZoneRule, ...] = field(default=(), metadata={"items": ZoneRule, "max_items": 256})
    health: HealthParams = field(default_factory=HealthParams)
    # A YAML file of lines/zones/health (the replay --analytics format), read when the config
    # file is loaded; its rules come before the inline ones. Config files only, never REST.
    rules_file: str = field(default="", metadata={"rest": False})
    detect_every: int = bounded(1, 1, 30)
    motion: MotionConfig = field(default_factory=MotionConfig)
    priority: int = bounded(0, 0, 100)
    min_fps: float = bounded(0.0, 0.0, 240.0)

    def problem(self) -> str | None:
        return duplicate_rule_id(self.lines, self.zones)


@dataclass(frozen=True)
class EventStoreConfig:
    """The embedded event database (SQLite, WAL): written in batches off the event loop and
    off the inference thread; the oldest events go beyond ``max_age_days`` or ``max_size_mb``."""

    enabled: bool = True
    path: str = "runs/events.db"
    max_age_days: float = bounded(30.0, 0.0, 36500.0)  # 0: keep regardless of age
    max_size_mb: float = bounded(1024.0, 1.0, 10_000_000.0)
    batch_size: int = bounded(500, 1, 100_000)  # events per transaction at most
    flush_interval_s: float = bounded(0.5, 0.01, 60.0)  # write at least this often
    queue: int = bounded(100_000, 10, 10_000_000)  # events waiting; the oldest dropped beyond
    busy_timeout_ms: int = bounded(1000, 0, 60_000)  # wait for a lock held by another process
    retention_interval_s: float = bounded(60.0, 1.0, 86400.0)  # how often retention runs


@dataclass(frozen=True)
class MqttConfig:
    """Events to an MQTT broker: ``<topic_prefix>/<stream>/events`` (one message per event) and
    retained ``<topic_prefix>/<stream>/counts/<rule>`` (the rule's counts when they change)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = bounded(1883, 1, 65535)
    client_id: str = ""  # default: vigil-<random>
    username: str = ""
    password: str = field(default="", repr=False)  # secret: never logged or served
    password_file: str = ""  # or read the password from this file
    tls: bool = False
    ca_file: str = ""  # TLS: CA bundle (default: the system's)
    cert_file: str = ""  # TLS client certificate and key, if the broker wants one
    key_file: str = ""
    tls_insecure: bool = False  # TLS without checking the broker's host name (testing only)
    topic_prefix: str = field(default="vigil", metadata={"pattern": r"^[^#+\x00]{1,128}$"})
    qos: int = bounded(1, 0, 2)
    keepalive_s: int = bounded(30, 5, 3600)
    queue: int = bounded(10_000, 1, 10_000_000)  # events held while the broker is away
    inflight: int = bounded(100, 1, 65535)  # published, not yet acknowledged
    backoff_initial_s: int = bounded(1, 1, 60)  # reconnection delays (whole s), doubling
    backoff_max_s: int = bounded(30, 1, 3600)
    counts_interval_s: float = bounded(1.0, 0.1, 3600.0)  # how often changed counts are sent
    kinds: tuple[str, ...] = field(default=(), metadata={"each_of": EVENT_KINDS})  # empty: all


@dataclass(frozen=True)
class WebhookConfig:
    """Batches of events POSTed as ``{"v":1,"events":[...]}`` with ``X-Vigil-Signature:
    sha256=<HMAC-SHA256 of the body with the secret>``; retried with exponential backoff."""

    id: str = field(default="", metadata={"pattern": STREAM_ID, "required": True})
    url: str = field(default="", metadata={"pattern": r"^https?://[^\s]+$", "required": True})
    secret: str = field(default="", repr=False)  # secret: never logged or served
    secret_file: str = ""  # or read the secret from this file
    timeout_s: float = bounded(5.0, 0.1, 300.0)
    batch_size: int = bounded(100, 1, 10_000)
    batch_wait_s: float = bounded(0.2, 0.0, 60.0)  # gather events this long before a POST
    queue: int = bounded(10_000, 1, 10_000_000)  # events held while the endpoint fails
    backoff_initial_s: float = bounded(0.5, 0.01, 60.0)
    backoff_max_s: float = bounded(60.0, 0.1, 3600.0)
    kinds: tuple[str, ...] = field(default=(), metadata={"each_of": EVENT_KINDS})  # empty: all
    streams: tuple[str, ...] = ()  # empty: every stream


@dataclass(frozen=True)
class SinksConfig:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    webhooks: tuple[WebhookConfig, ...] = field(default=(), metadata={"items": WebhookConfig})


@dataclass(frozen=True)
class VigilConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    analytics: AnalyticsParams = field(default_factory=AnalyticsParams)
    events: EventStoreConfig = field(default_factory=EventStoreConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    streams: tuple[StreamConfig, ...] = field(default=(), metadata={"items": StreamConfig})


def field_default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name} has no default")


def _coerce(key: str, f: Field[Any], default: Any, value: Any) -> Any:
    item_type = f.metadata.get("items")
    if item_type is not None:
        if not isinstance(value, list | tuple) or not all(isinstance(v, dict) for v in value):
            raise VigilError(f"config {key}: expected a list of mappings")
        limit = f.metadata.get("max_items")
        if limit is not None and len(value) > limit:
            raise VigilError(f"config {key}: at most {limit} entries")
        return tuple(parse_section(item_type, v, f"{key}[{i}].") for i, v in enumerate(value))
    if "points" in f.metadata:
        return _points(key, value)
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


def _points(key: str, value: Any) -> tuple[tuple[float, float], ...]:
    """``[[x, y], ...]`` -> a tuple of float pairs (bounds are checked by ``_validate``)."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
        for p in value
    )
    if not ok:
        raise VigilError(f"config {key}: expected a list of [x, y] points, got {value!r}"[:300])
    return tuple((float(p[0]), float(p[1])) for p in value)


def _validate(key: str, f: Field[Any], value: Any) -> None:
    meta = f.metadata
    if "points" in meta:
        lo, hi = meta["points"]
        if not lo <= len(value) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise VigilError(f"config {key}: expected {want} points, got {len(value)}")
        if not all(math.isfinite(c) and 0.0 <= c <= 1.0 for p in value for c in p):
            raise VigilError(f"config {key}: coordinates must be in [0, 1] (normalized)")
        return
    if "each_of" in meta:
        bad = [v for v in value if v not in meta["each_of"]]
        if bad:
            raise VigilError(f"config {key}: {bad[0]!r} is not one of {', '.join(meta['each_of'])}")
        return
    if "range" in meta:
        lo, hi = meta["range"]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise VigilError(f"config {key}: {value} is outside [{lo:g}, {hi:g}]")
    if "choices" in meta and value not in meta["choices"]:
        raise VigilError(f"config {key}: {value!r} is not one of {', '.join(meta['choices'])}")
    if "pattern" in meta and not re.match(meta["pattern"], value):
        raise VigilError(f"config {key}: {value!r} must match {meta['pattern']}")
    if meta.get("required") and isinstance(value, str) and not value.strip():
        raise VigilError(f"config {key}: must not be empty")
    if "max_length" in meta and len(value) > meta["max_length"]:
        raise VigilError(f"config {key}: longer than {meta['max_length']} characters")


def _merge(obj: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise VigilError(f"config {prefix.rstrip('.') or 'file'}: expected a mapping")
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in known:
            raise VigilError(f"config: unknown key {key!r}")
        current = getattr(obj, name)
        if is_dataclass(current):
            changes[name] = _merge(current, {} if value is None else value, f"{key}.")
        else:
            coerced = _coerce(key, known[name], current, value)
            _validate(key, known[name], coerced)
            changes[name] = coerced
    merged = replace(obj, **changes)
    _check_whole(merged, prefix)
    return merged


def parse_section(cls: type[_T], data: Any, prefix: str = "") -> _T:
    """Build dataclass ``cls`` from a mapping, with every check of the config loader; fields
    marked ``required`` must be present."""
    if not isinstance(data, dict):
        raise VigilError(f"config {prefix.rstrip('.') or 'entry'}: expected a mapping")
    for f in fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("required") and f.name not in data:
            raise VigilError(f"config {prefix}{f.name}: required")
    obj: _T = _merge(cls(), data, prefix)
    return obj


def _check_whole(obj: Any, prefix: str) -> None:
    check = getattr(obj, "problem", None)
    message = check() if callable(check) else None
    if message:
        raise VigilError(f"config {prefix}{message}")


def parse_stream(data: Any) -> StreamConfig:
    """One stream entry (config file or REST body) -> :class:`StreamConfig`, or VigilError."""
    sid = data.get("id") if isinstance(data, dict) else None
    prefix = f"stream {sid}: " if isinstance(sid, str) and re.match(STREAM_ID, sid) else "stream "
    try:
        stream = parse_section(StreamConfig, data, "")
    except VigilError as e:
        raise VigilError(prefix + str(e).removeprefix("config: ").removeprefix("config ")) from None
    return replace(stream, url=stream.url.strip())


def resolve_path(value: str) -> Path:
    """A config path as given if it exists, else relative to the installed package root
    (so the bundled ``models/zoo/...`` paths work from any working directory)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    return PACKAGE_ROOT / path


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, IsADirectoryError):
        raise VigilError(f"{what} not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise VigilError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None


def load_rules(path: Path, stream_id: str = "replay") -> StreamConfig:
    """An analytics file (``vigil replay --analytics``, a stream's ``rules_file``): ``lines``,
    ``zones`` and ``health`` with StreamConfig's schema. Returns a StreamConfig holding them."""
    data = _read_yaml(path, "analytics file")
    if not isinstance(data, dict):
        raise VigilError(f"{path}: expected a mapping with lines, zones and health")
    unknown = sorted(k for k in data if k not in RULE_FIELDS)
    if unknown:
        raise VigilError(f"{path}: unknown key {unknown[0]!r} (expected lines, zones, health)")
    try:
        return parse_section(StreamConfig, {**data, "id": stream_id, "url": str(path)})
    except VigilError as e:
        raise VigilError(f"{path}: {str(e).removeprefix('config ')}") from None


def _with_rules_file(stream: StreamConfig, index: int) -> StreamConfig:
    """The stream with its ``rules_file`` read: the file's rules first, then the inline ones;
    the inline health settings win unless they are the defaults."""
    if not stream.rules_file:
        return stream
    rules = load_rules(resolve_path(stream.rules_file), stream.id)
    merged = replace(
        stream,
        lines=rules.lines + stream.lines,
        zones=rules.zones + stream.zones,
        health=stream.health if stream.health != HealthParams() else rules.health,
    )
    _check_whole(merged, f"streams[{index}].")
    return merged


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> VigilConfig:
    """Defaults <- YAML file <- overrides (dotted keys, e.g. ``{"model.backend": "openvino"}``)."""
    cfg = VigilConfig()
    if path is not None:
        cfg = _merge(cfg, _read_yaml(path, "config file"), "")
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = nested
        *parents, name = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    cfg = _merge(cfg, nested, "") if nested else cfg
    ids = [s.id for s in cfg.streams]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise VigilError(f"config streams: the id {dup!r} is used twice")
    return replace(cfg, streams=tuple(_with_rules_file(s, i) for i, s in enumerate(cfg.streams)))
