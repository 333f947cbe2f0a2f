"""Live capacity benchmark: N looped 640x480 RTSP cameras at 10 fps into `vigil serve`.

    .venv/bin/python -m benchmarks.live_capacity --streams 6 --seconds 300

Starts the loopback GStreamer RTSP server (benchmarks/rtsp_server.py) with N mounts fed by a
640x480, 10 fps H.264 clip made from the bundled sample, starts `vigil serve` with those N
cameras, and reads every message over one WebSocket. Latency = WebSocket receive time minus
the frame's arrival stamp ``ts`` (same clock, loopback). Prints P50/P95/P99 over the whole
window and per minute (a growing backlog would show as a rising per-minute P99), frames
inferred per stream, and frames dropped by the LATEST slots. It prints figures; it is not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import websockets

from benchmarks.report import make_clip, start_rtsp_server
from benchmarks.serving import serve


async def read_messages(url: str, seconds: float, warmup: float) -> list[tuple[float, float]]:
    """(receive time, latency) for every message after the warm-up."""
    out: list[tuple[float, float]] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"op": "subscribe"}))
        t0 = time.time()
        while time.time() - t0 < warmup + seconds:
            msg = json.loads(await ws.recv())
            now = time.time()
            if "ts" in msg and now - t0 >= warmup:
                out.append((now - t0 - warmup, now - msg["ts"]))
            if msg.get("op") == "lost":
                print(f"websocket client lost {msg['count']} messages", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--embedder", default="mobilenet")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-cap-"))
    try:
        clip = make_clip(tmp)
        rtsp, urls = start_rtsp_server(clip, args.streams)
        cfg = {
            "server": {"media_root": str(tmp)},
            "tracker": {"embedder": args.embedder},
            "streams": [{"id": f"cam{i}", "url": url, "fps": 10} for i, url in enumerate(urls)],
        }
        try:
            with serve(cfg, tmp) as srv:
                for i in range(args.streams):
                    srv.wait_state(f"cam{i}", "live", timeout=120)
                before = {s["id"]: s for s in srv.request("GET", "/api/streams")[1]}
                t_start = time.time()
                samples = asyncio.run(read_messages(srv.ws, args.seconds, args.warmup))
                after = {s["id"]: s for s in srv.request("GET", "/api/streams")[1]}
                elapsed = time.time() - t_start
        finally:
            rtsp.terminate()
            rtsp.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lat = np.array([latency for _, latency in samples]) * 1000
    minute = np.array([t for t, _ in samples]) // 60
    per_minute = [round(float(np.percentile(lat[minute == m], 99)), 1) for m in np.unique(minute)]
    inferred = sum(after[k]["frames_inferred"] - before[k]["frames_inferred"] for k in after)
    dropped = sum(after[k]["drops"] - before[k]["drops"] for k in after)
    decoded = sum(after[k]["frames_decoded"] - before[k]["frames_decoded"] for k in after)
    result = {
        "streams": args.streams,
        "seconds": args.seconds,
        "messages": len(lat),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "max_ms": round(float(lat.max()), 1),
        "p99_per_minute_ms": per_minute,
        "inferred_fps_total": round(inferred / elapsed, 2),
        "decoded_fps_total": round(decoded / elapsed, 2),
        "dropped_fraction": round(dropped / max(decoded, 1), 4),
        "reconnects_in_window": sum(
            after[k]["reconnects"] - before[k]["reconnects"] for k in after
        ),
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
