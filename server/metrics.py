"""Prometheus metrics. Per-stream numbers are read from the pipeline at scrape time; latency
histograms are observed as messages leave. Labels carry stream ids, never URLs (credentials)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.live import LivePipeline, live_states
from server.ws import REFUSAL_REASONS

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _StreamCollector(Collector):
    def __init__(self, pipeline: Callable[[], LivePipeline | None]) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = self._pipeline()
        streams = p.streams() if p is not None else []
        counters = {
            "frames_decoded": "Frames decoded by FFmpeg",
            "frames_inferred": "Frames that went through the detector",
            "frames_dropped": "Frames replaced in the LATEST slot before inference (stale)",
            "frames_skipped": "Frames skipped by the per-stream inference rate",
            "reconnects": "Reconnections (stalls, errors, source ends)",
            "decode_errors": "Decode errors FFmpeg reported (corrupt packets decoded past)",
            "errors": "Tracker, encoder or publish failures (caught at the stream's boundary)",
        }
        fams = {
            k: CounterMetricFamily(f"vigil_stream_{k}", doc, labels=["stream"])
            for k, doc in counters.items()
        }
        depth = GaugeMetricFamily("vigil_stream_queue_depth", "Frames waiting", labels=["stream"])
        dec = GaugeMetricFamily("vigil_stream_decode_fps", "Decoded frames/s", labels=["stream"])
        inf = GaugeMetricFamily("vigil_stream_infer_fps", "Inferred frames/s", labels=["stream"])
        state = GaugeMetricFamily(
            "vigil_stream_state", "1 for the stream's current state", labels=["stream", "state"]
        )
        for s in streams:
            sid = s.spec.id
            values = {
                "frames_decoded": s.frames_decoded,
                "frames_inferred": s.frames_inferred,
                "frames_dropped": s.slot.dropped,
                "frames_skipped": s.gate.skipped,
                "reconnects": s.reconnects,
                "decode_errors": s.decode_errors,
                "errors": p.errors(sid) if p is not None else 0,
            }
            for k, v in values.items():
                fams[k].add_metric([sid], v)
            depth.add_metric([sid], s.slot.depth)
            rates = p.rates(sid) if p is not None else {}
            dec.add_metric([sid], rates.get("decode_fps", 0.0))
            inf.add_metric([sid], rates.get("infer_fps", 0.0))
            for st in live_states():
                state.add_metric([sid, st], 1.0 if str(s.state) == st else 0.0)
        yield from fams.values()
        yield from (depth, dec, inf, state)
        failures = CounterMetricFamily(
            "vigil_engine_failures", "Batches the detector/embedder failed on (frames lost)"
        )
        failures.add_metric([], p.guard.engine_failures if p is not None else 0)
        alive = GaugeMetricFamily("vigil_inference_alive", "1 while the inference thread runs")
        alive.add_metric([], 1.0 if p is not None and not p.failure else 0.0)
        yield from (failures, alive)
        if p is not None:
            yield from _capacity_families(p)


def _capacity_families(p: LivePipeline) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Capacity and QoS: the estimate (for 640x480 streams at 10 fps), the budget and its use,
    each stream's effective fps and what its detector did."""
    report = p.capacity_report()
    gauges = {
        "vigil_capacity_more_streams": ("More 640x480 10 fps streams that fit", "more_streams"),
        "vigil_capacity_budget_ms_per_second": (
            "Inference-thread ms per second admission may fill", "budget_ms_per_s"),
        "vigil_capacity_used_ms_per_second": (
            "Inference-thread ms per second the streams need at their fps", "used_ms_per_s"),
        "vigil_inference_busy_ratio": (
            "Share of the last second the inference thread ran", "inference_busy"),
        "vigil_capacity_degraded": ("1 while QoS lowers streams' fps by priority", "degraded"),
    }  # fmt: skip
    for name, (doc, key) in gauges.items():
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(report[key]))
        yield g
    eff = GaugeMetricFamily(
        "vigil_stream_effective_fps", "The rate the stream is admitted at now", labels=["stream"]
    )
    target = GaugeMetricFamily("vigil_stream_target_fps", "The stream's fps", labels=["stream"])
    det = CounterMetricFamily(
        "vigil_stream_detector_frames",
        "Inferred frames by what the detector did: detected, predicted (detect_every), "
        "idle (motion gating)",
        labels=["stream", "outcome"],
    )
    for st in p.runtimes():
        sid = st.stream.stream_id
        eff.add_metric([sid], st.stream.gate.fps)
        target.add_metric([sid], st.stream.spec.fps)
        for outcome, n in st.schedule.counts().items():
            det.add_metric([sid, outcome], n)
    yield from (eff, target, det)


class Metrics:
    """The server's metrics; ``pipeline`` None (a gateway): no per-stream pipeline families."""

    def __init__(self, pipeline: Callable[[], LivePipeline | None] | None) -> None:
        self.registry = CollectorRegistry()
        self.stage = Histogram(
            "vigil_stage_seconds",
            "Per-frame time in each pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "vigil_frame_to_send_seconds",
            "Frame arrival from the decoder to the WebSocket send",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Info("vigil_model", "The detection model being served", registry=self.registry)
        self.ws_clients = Gauge(
            "vigil_ws_clients", "Connected WebSocket clients", registry=self.registry
        )
        self.ws_lost = Counter(
            "vigil_ws_messages_lost_total",
            "Messages dropped for slow clients",
            registry=self.registry,
        )
        self._ws_refused = Counter(
            "vigil_ws_refused_total",
            "WebSocket client messages or connections refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:
            self._ws_refused.labels(reason)
        self.handoff_dropped = Counter(
            "vigil_handoff_dropped_total",
            "Messages dropped between the inference thread and the event loop",
            registry=self.registry,
        )
        if pipeline is not None:
            self.registry.register(_StreamCollector(pipeline))

    def ws_refused(self, reason: str) -> None:
        self._ws_refused.labels(reason).inc()

    def observe_stage(self, stage: str, ms: float) -> None:
        self.stage.labels(stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
