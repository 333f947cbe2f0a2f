"""The MQTT sink (paho-mqtt): events on ``<prefix>/<stream>/events``, one message each, QoS 1
by default; each rule's counts retained on ``<prefix>/<stream>/counts/<rule>`` when they change.

The pipeline hands events to a bounded drop-oldest buffer and never waits. A sender thread moves
them to the client while the broker is connected, keeping at most ``inflight`` unacknowledged
(QoS 1 messages still unacknowledged when a connection drops are sent again after reconnecting;
delivery is at least once). While the broker is away the buffer fills; beyond ``queue`` the
oldest events are dropped and counted. paho's network thread reconnects with doubling delays
(``backoff_initial_s`` to ``backoff_max_s``). Credentials come from the config or a file and are
never logged; log lines name the broker by host and port only.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from analytics.events import Event
from pipeline.config import MqttConfig
from server.buffer import DropOldest
from server.sinks import SinkStats, read_secret, wanted

CountsProvider = Callable[[], dict[str, dict[str, Any]]]  # stream -> Counts.snapshot()


class MqttSink:
    name = "mqtt"

    def __init__(
        self, cfg: MqttConfig, counts: CountsProvider, log: Callable[[str, str], None]
    ) -> None:
        self.cfg = cfg
        self._counts = counts
        self._log = log
        self.buffer: DropOldest[tuple[str, bytes]] = DropOldest(cfg.queue)
        self._stats = SinkStats()
        self._handed = 0  # messages given to the client
        self._acked = 0  # ...and acknowledged by the broker (QoS 1) or written (QoS 0)
        self._window = threading.Condition()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._retained: dict[tuple[str, str], bytes] = {}  # what each counts topic holds now
        self._resend_counts = False
        self._where = f"{cfg.host}:{cfg.port}"
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="vigil-mqtt", daemon=True)

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"vigil-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        password = read_secret(cfg.password, cfg.password_file, "sinks.mqtt.password_file")
        if cfg.username or password:
            client.username_pw_set(cfg.username or None, password or None)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
            )
            client.tls_insecure_set(cfg.tls_insecure)
        client.reconnect_delay_set(cfg.backoff_initial_s, cfg.backoff_max_s)
        client.max_inflight_messages_set(cfg.inflight)
        client.max_queued_messages_set(0)  # bounded by our own window instead
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        return client

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self._client.loop_start()
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Send what is buffered while connected (within ``timeout``), then disconnect."""
        deadline = time.monotonic() + timeout
        self.buffer.close()
        self._stop.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._window:
            self._window.wait_for(
                lambda: self._acked >= self._handed or not self._connected.is_set(),
                max(0.0, deadline - time.monotonic()),
            )
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> SinkStats:
        s = self._stats
        s.queue = len(self.buffer) + max(0, self._handed - self._acked)
        s.dropped = self.buffer.dropped
        s.sent = self._acked
        s.connected = self._connected.is_set()
        return s

    # -- producer side -----------------------------------------------------------------------
    def publish(self, events: Sequence[Event], data: Sequence[bytes]) -> None:
        pairs = wanted(events, data, self.cfg.kinds, ())
        if pairs:
            self.buffer.put((e.stream, d) for e, d in pairs)

    # -- paho callbacks (its network thread) -------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._failed(f"connection refused ({reason})")
            return
        self._connected.set()
        self._resend_counts = True  # a new session: publish every rule's counts again
        with self._window:
            self._window.notify_all()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self._failed(f"connection lost ({reason})")
        with self._window:
            self._window.notify_all()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._failed("cannot connect")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._window:
            self._acked += 1
            self._window.notify_all()

    def _failed(self, what: str) -> None:
        self._stats.errors += 1
        self._stats.last_error = what
        self._log(f"mqtt:{what[:20]}", f"vigil: mqtt broker {self._where}: {what}; retrying "
                  f"({len(self.buffer)} events waiting)")  # fmt: skip

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        next_counts = 0.0
        while not (self._stop.is_set() and (not len(self.buffer) or not self._connected.is_set())):
            if not self._connected.wait(0.2):
                continue
            now = time.monotonic()
            if now >= next_counts:
                self._publish_counts()
                next_counts = now + self.cfg.counts_interval_s
            with self._window:
                room = self.cfg.inflight - (self._handed - self._acked)
                if room <= 0:
                    self._window.wait(0.2)
                    continue
            batch = self.buffer.take(room, 0.1)
            prefix = self.cfg.topic_prefix
            for stream, data in batch:
                self._send(f"{prefix}/{stream}/events", data, retain=False)
        self._publish_counts()

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        with self._window:
            self._handed += 1
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._failed(f"publish failed ({mqtt.error_string(info.rc)})")

    def _publish_counts(self) -> None:
        """Retained counts of every rule whose counts changed; empty retained payloads clear
        the topics of rules (or streams) that are gone."""
        if not self._connected.is_set():
            return
        if self._resend_counts:
            self._resend_counts = False
            self._retained = {k: b"" for k in self._retained}  # differs from any payload
        now: dict[tuple[str, str], bytes] = {}
        for stream, snap in self._counts().items():
            for kind in ("lines", "zones"):
                for rule, counts in snap.get(kind, {}).items():
                    body = {"v": 1, "stream": stream, "rule": rule, "kind": kind[:-1],
                            "since_ts": snap.get("since_ts"), "counts": counts}  # fmt: skip
                    now[(stream, rule)] = json.dumps(body, separators=(",", ":")).encode()
        prefix = self.cfg.topic_prefix
        for key, payload in now.items():
            if self._retained.get(key) != payload:
                self._send(f"{prefix}/{key[0]}/counts/{key[1]}", payload, retain=True)
        for key in set(self._retained) - set(now):  # rules deleted since: clear their topics
            self._send(f"{prefix}/{key[0]}/counts/{key[1]}", b"", retain=True)
        self._retained = now
