"""Prometheus metrics of the analytics and the event outputs, read at scrape time.

Labels carry stream, rule, class, kind, check and sink names, never URLs or credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from analytics.health import CHECKS
from pipeline.live import LivePipeline
from server.outputs import EventOutputs

Family = CounterMetricFamily | GaugeMetricFamily


class EventsCollector(Collector):
    def __init__(
        self,
        pipeline: Callable[[], LivePipeline | None],
        outputs: Callable[[], EventOutputs | None],
    ) -> None:
        self._pipeline = pipeline
        self._outputs = outputs

    def collect(self) -> Iterator[Family]:
        yield from self._analytics()
        yield from self._outputs_metrics()

    def _analytics(self) -> Iterator[Family]:
        p = self._pipeline()
        lines = GaugeMetricFamily(
            "vigil_line_count", "Line crossings since start or the last reset",
            labels=["stream", "line", "direction", "class"],
        )  # fmt: skip
        occupancy = GaugeMetricFamily(
            "vigil_zone_occupancy",
            "Tracks inside each zone now",
            labels=["stream", "zone", "class"],
        )
        health = GaugeMetricFamily(
            "vigil_camera_health_problem", "1 while a camera-health check fails",
            labels=["stream", "check"],
        )  # fmt: skip
        brightness = GaugeMetricFamily(
            "vigil_camera_brightness", "Mean grey level of the last frame", labels=["stream"]
        )
        drift = GaugeMetricFamily(
            "vigil_stream_time_drift_seconds", "Wall-clock time minus stream time since start",
            labels=["stream"],
        )  # fmt: skip
        for s in p.streams() if p is not None else []:
            a = p.analytics(s.stream_id) if p is not None else None
            if a is None:
                continue
            snap = a.counts.snapshot()
            for line, dirs in snap["lines"].items():
                for direction, by_class in dirs.items():
                    for cls, n in by_class.items():
                        lines.add_metric([s.stream_id, line, direction, cls], n)
            for zone, c in snap["zones"].items():
                for cls, n in c["occupancy"].items():
                    occupancy.add_metric([s.stream_id, zone, cls], n)
            if a.health is not None:
                for check in CHECKS:
                    health.add_metric([s.stream_id, check], float(a.health.active[check]))
                brightness.add_metric([s.stream_id], a.health.brightness)
                drift.add_metric([s.stream_id], a.health.drift_s)
        yield from (lines, occupancy, health, brightness, drift)

    def _outputs_metrics(self) -> Iterator[Family]:
        out = self._outputs()
        events = CounterMetricFamily(
            "vigil_events", "Analytics events published", labels=["stream", "kind"]
        )
        sent = CounterMetricFamily("vigil_sink_sent", "Events delivered", labels=["sink"])
        dropped = CounterMetricFamily(
            "vigil_sink_dropped", "Events dropped (buffer full, or refused)", labels=["sink"]
        )
        errors = CounterMetricFamily(
            "vigil_sink_errors", "Failed deliveries and connections", labels=["sink", "reason"]
        )
        duplicates = CounterMetricFamily(
            "vigil_event_store_duplicates",
            "Redelivered cluster event entries the event store already held (not stored again)",
        )
        queue = GaugeMetricFamily("vigil_sink_queue", "Events waiting", labels=["sink"])
        up = GaugeMetricFamily("vigil_sink_connected", "1 while connected", labels=["sink"])
        if out is not None:
            for (stream, kind), n in list(out.events.items()):
                events.add_metric([stream, kind], n)
            if out.store is not None:
                st = out.store
                sent.add_metric([st.name], st.written)
                duplicates.add_metric([], st.duplicates)
                dropped.add_metric([st.name], st.buffer.dropped)
                for reason, n in list(st.errors.items()):
                    errors.add_metric([st.name, reason], n)
                queue.add_metric([st.name], len(st.buffer))
                up.add_metric([st.name], float(st.healthy))
            for sink in out.sinks:
                stats = sink.stats()
                sent.add_metric([sink.name], stats.sent)
                dropped.add_metric([sink.name], stats.dropped)
                errors.add_metric([sink.name, "delivery"], stats.errors)
                queue.add_metric([sink.name], stats.queue)
                up.add_metric([sink.name], float(stats.connected))
        yield from (events, sent, dropped, errors, duplicates, queue, up)
