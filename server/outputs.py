"""Where events go besides the WebSocket: the event store and the sinks (MQTT, webhooks).

``publish`` is called on the inference thread for every frame that has events; it only hands
them to bounded buffers (never waits, never raises into the pipeline: a failing output is
counted and logged, throttled). Each output has its own thread; one that is down never slows
another or the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analytics.events import Event
from pipeline.config import VigilConfig
from pipeline.live_step import Published
from server.event_store import EventStore
from server.sink_mqtt import CountsProvider, MqttSink
from server.sink_webhook import WebhookSink
from server.sinks import Sink


class EventOutputs:
    """The event store (if enabled) and every configured sink of one server."""

    def __init__(
        self, cfg: VigilConfig, counts: CountsProvider, log: Callable[[str, str], None]
    ) -> None:
        self._log = log
        self.store = EventStore(cfg.events, log) if cfg.events.enabled else None
        self.sinks: list[Sink] = []
        if cfg.sinks.mqtt.enabled:
            self.sinks.append(MqttSink(cfg.sinks.mqtt, counts, log))
        self.sinks += [WebhookSink(w, log) for w in cfg.sinks.webhooks]
        self.events: dict[tuple[str, str], int] = {}  # (stream, kind) -> events published
        self.failures = 0

    def start(self) -> None:
        if self.store is not None:
            self.store.start()
        for sink in self.sinks:
            sink.start()

    def close(self, timeout: float) -> None:
        for sink in self.sinks:
            sink.close(timeout)
        if self.store is not None:
            self.store.close(timeout)

    def publish(self, msg: Published) -> None:
        """Hand one frame's events to every output (inference thread; never waits)."""
        if not msg.events:
            return
        for e in msg.events:
            key = (e.stream, e.kind)
            self.events[key] = self.events.get(key, 0) + 1
        outputs: list[EventStore | Sink] = [*([self.store] if self.store else []), *self.sinks]
        for out in outputs:
            try:
                out.publish(msg.events, msg.event_data)
            except Exception as e:  # an output's bug must not reach the pipeline
                self.failures += 1
                line = f"vigil: {out.name}: {type(e).__name__}: {e}"[:300]
                self._log(f"output:{out.name}", line)

    def publish_durable(
        self, events: Sequence[Event], data: Sequence[bytes], sources: Sequence[str]
    ) -> None:
        """Events a gateway took through the cluster's consumer group: written to the store
        before returning (a failure raises, so they stay pending in Redis and are retried;
        ``sources``, their entry ids, make a redelivered entry stored once), then handed to
        the sinks' buffers. Sinks get a redelivered entry again (at least once, as MQTT QoS 1
        is): the first copy may have been lost with the gateway that died before acking it."""
        for e in events:
            key = (e.stream, e.kind)
            self.events[key] = self.events.get(key, 0) + 1
        if self.store is not None:
            self.store.write(events, data, sources)
        for sink in self.sinks:
            try:
                sink.publish(events, data)
            except Exception as exc:  # a sink's bug must not stop the store path
                self.failures += 1
                self._log(f"output:{sink.name}", f"vigil: {sink.name}: {exc!r}"[:300])

    def forget_stream(self, stream: str) -> None:
        for key in [k for k in self.events if k[0] == stream]:
            del self.events[key]

    def status(self) -> dict[str, Any]:
        """For /readyz: each output's state (the server stays ready when they are down)."""
        out: dict[str, Any] = {}
        if self.store is not None:
            s = self.store
            out["event_store"] = {"ok": s.healthy, "written": s.written,
                                  "duplicates": s.duplicates, "queue": len(s.buffer),
                                  "dropped": s.buffer.dropped,
                                  "last_error": s.last_error or None}  # fmt: skip
        for sink in self.sinks:
            out[sink.name] = sink.stats().as_dict()
        return out
