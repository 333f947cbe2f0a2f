"""Analytics benchmarks: per-frame cost of a stream's analytics, and sink throughput.

    python -m benchmarks.analytics [--frames 2000] [--sinks] [--events 20000]

- cost: microseconds per frame of ``StreamAnalytics.update`` for 10, 50 and 200 tracks walking
  across a 1280x720 frame (ids churning), with 10 rules (5 lines, 5 zones), with and without
  the camera-health checks on the decoded frame; median and p95 over ``--frames`` frames after
  a warm-up, as the thread's CPU time (what the step costs, whatever else shares the CPU).
  Also a section of ``vigil bench``.
- sinks (``--sinks``): events/s that each output sustains on this machine: the MQTT sink to a
  local Mosquitto (QoS 1, every event acknowledged and received by a subscriber), the webhook
  sink to a local HTTP receiver, and the event store (SQLite, WAL).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from analytics.events import Event, encode_event
from analytics.rules import AnalyticsParams, HealthParams, LineRule, ZoneRule
from analytics.stream import StreamAnalytics
from pipeline.types import Tracks

SIZE = (1280, 720)
HALF_BOX, FOOT = np.array([25.0, 100.0]), np.array([25.0, 0.0])  # 50x100 boxes, anchor at pos


def ten_rules() -> tuple[list[LineRule], list[ZoneRule]]:
    lines = [LineRule(id=f"l{i}", points=((0.1 + 0.2 * i, 1.0), (0.1 + 0.2 * i, 0.0)))
             for i in range(5)]  # fmt: skip
    zones = [
        ZoneRule(id=f"z{i}", polygon=((0.2 * i, 0.3), (0.2 * i + 0.15, 0.3),
                                      (0.2 * i + 0.15, 0.8), (0.2 * i, 0.8)), loiter_s=5.0)
        for i in range(5)
    ]  # fmt: skip
    return lines, zones


def _walk(n: int, frames: int, seed: int = 0) -> list[Tracks]:
    """``frames`` frames of ``n`` tracks on a random walk; each slot takes a new id about every
    200 frames."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform((0, 100), SIZE, (n, 2))
    vel = rng.normal(0, 6, (n, 2))
    ids = np.arange(n, dtype=np.int64)
    next_id = n
    out = []
    for f in range(frames):
        pos = (pos + vel) % SIZE
        churn = rng.random(n) < 0.005
        k = int(churn.sum())
        ids[churn] = np.arange(next_id, next_id + k)
        next_id += k
        xyxy = np.concatenate((pos - HALF_BOX, pos + FOOT), 1).astype(np.float32)
        out.append(Tracks(xyxy, ids.copy(), np.zeros(n, np.int32), np.ones(n, np.float32),
                          np.zeros(n, np.int32), "bench", f, f / 25.0))  # fmt: skip
    return out


def bench_cost(frames: int = 2000, sizes: tuple[int, ...] = (10, 50, 200)) -> list[dict[str, Any]]:
    """Median and p95 CPU microseconds per frame, per number of tracks, with and without
    health."""
    lines, zones = ten_rules()
    image = np.random.default_rng(1).integers(0, 255, (SIZE[1], SIZE[0], 3), np.uint8)
    rows = []
    for n in sizes:
        walk = _walk(n, frames + 200)
        for health in (False, True):
            a = StreamAnalytics("bench", ["person"], AnalyticsParams(), lines, zones,
                                HealthParams() if health else None)  # fmt: skip
            times = []
            events = 0
            for i, tracks in enumerate(walk):
                t0 = time.thread_time()
                events += len(a.update(tracks, SIZE, 1e9 + i / 25, image if health else None))
                if i >= 200:
                    times.append((time.thread_time() - t0) * 1e6)
            rows.append({
                "tracks": n, "rules": len(lines) + len(zones), "health": health,
                "median_us": round(float(np.median(times)), 1),
                "p95_us": round(float(np.percentile(times, 95)), 1),
                "events_per_frame": round(events / len(walk), 2),
            })  # fmt: skip
    return rows


def _events(n: int) -> tuple[list[Event], list[bytes]]:
    events = [Event("line_cross", "bench", i, i / 25, 1e9 + i, rule="door", track=i, class_id=0,
                    class_name="person", direction="in", box=(1.0, 2.0, 3.0, 4.0), seq=i)
              for i in range(n)]  # fmt: skip
    return events, [encode_event(e) for e in events]


def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the sink did not deliver in time")
        time.sleep(0.005)


def bench_mqtt(n: int, folder: Path) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    from benchmarks.mqtt_broker import Mosquitto
    from pipeline.config import MqttConfig
    from server.sink_mqtt import MqttSink

    with Mosquitto(folder) as broker:
        got = [0]
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        sub.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("vigil/bench/events", qos=1)
        sub.loop_start()
        sink = MqttSink(MqttConfig(enabled=True, port=broker.port, queue=n), dict, lambda *_: None)
        sink.start()
        _until(lambda: sink.stats().connected, 20)
        time.sleep(0.5)  # the subscription is in place
        events, data = _events(n)
        t0 = time.perf_counter()
        for i in range(0, n, 10):  # ten events a frame
            sink.publish(events[i : i + 10], data[i : i + 10])
        _until(lambda: got[0] >= n and sink.stats().sent >= n, 300)
        wall = time.perf_counter() - t0
        sink.close(5.0)
        sub.loop_stop()
    return {"sink": "mqtt (QoS 1, local Mosquitto)", "events": n,
            "events_per_s": round(n / wall)}  # fmt: skip


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def bench_webhook(n: int) -> dict[str, Any]:
    from pipeline.config import WebhookConfig
    from server.sink_webhook import WebhookSink

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/hook"
    sink = WebhookSink(WebhookConfig(id="bench", url=url, secret="bench-secret", queue=n),
                       lambda *_: None)  # fmt: skip
    sink.start()
    events, data = _events(n)
    t0 = time.perf_counter()
    for i in range(0, n, 10):
        sink.publish(events[i : i + 10], data[i : i + 10])
    _until(lambda: sink.stats().sent >= n, 300)
    wall = time.perf_counter() - t0
    sink.close(1.0)
    srv.shutdown()
    return {"sink": "webhook (batches of 100, local HTTP receiver)", "events": n,
            "events_per_s": round(n / wall)}  # fmt: skip


def bench_store(n: int, folder: Path) -> dict[str, Any]:
    from pipeline.config import EventStoreConfig
    from server.event_store import EventStore

    store = EventStore(EventStoreConfig(path=str(folder / "events.db"), queue=n), lambda *_: None)
    store.start()
    events, data = _events(n)
    t0 = time.perf_counter()
    for i in range(0, n, 10):
        store.publish(events[i : i + 10], data[i : i + 10])
    _until(lambda: store.written >= n, 300)
    wall = time.perf_counter() - t0
    store.close()
    return {"sink": "event store (SQLite WAL, batches of 500)", "events": n,
            "events_per_s": round(n / wall)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--sinks", action="store_true", help="also measure sink throughput")
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"cost": bench_cost(args.frames)}
    print("| tracks | rules | camera health | median us/frame | p95 us/frame | events/frame |")
    print("|---|---|---|---|---|---|")
    for r in result["cost"]:
        print(f"| {r['tracks']} | {r['rules']} | {'on' if r['health'] else 'off'} | "
              f"{r['median_us']} | {r['p95_us']} | {r['events_per_frame']} |")  # fmt: skip
    if args.sinks:
        with tempfile.TemporaryDirectory(prefix="vigil-sinks-") as tmp:
            folder = Path(tmp)
            result["sinks"] = [
                bench_mqtt(args.events, folder / "broker"),
                bench_webhook(args.events),
                bench_store(args.events, folder),
            ]
        print("\n| output | events | events/s |\n|---|---|---|")
        for r in result["sinks"]:
            print(f"| {r['sink']} | {r['events']} | {r['events_per_s']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
