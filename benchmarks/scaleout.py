"""Scale-out figures on this machine (README "Scale-out"). Figures, not pass/fail.

    .venv/bin/python -m benchmarks.scaleout capacity --workers 3 [--max-streams 16]
    .venv/bin/python -m benchmarks.scaleout capacity --workers 0     # the single process
    .venv/bin/python -m benchmarks.scaleout failover --trials 10 [--ttl 10]
    .venv/bin/python -m benchmarks.scaleout memory [--cameras 8 --maxlen 1000]

- ``capacity``: N looped 640x480 RTSP cameras at 10 fps (the live-capacity camera) into either
  ``vigil serve`` (``--workers 0``) or K ``vigil worker`` processes and one ``vigil gateway``
  on a loopback Redis; N grows by ``--step`` (cameras added through REST, nothing restarted)
  until the P99 of frame arrival (at the worker) to WebSocket receive (from the gateway)
  passes 150 ms or frames dropped pass 1 %, as the single-process capacity search does.
- ``failover``: two workers, six cameras, three each; each trial kills one worker with SIGKILL
  and measures until every one of its cameras delivers to the WebSocket client again (from the
  other worker); a new worker is started and the cameras rebalanced before the next trial.
- ``memory``: Redis ``used_memory`` after an hour of messages at 10 fps per camera (typical
  v1 messages, five tracks) written through the fenced append with ``MAXLEN ~``, and without
  the bound for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cluster_run import Cluster, WsCollector, redis_server
from benchmarks.report import make_clip, start_rtsp_server
from benchmarks.serving import Server, serve

P99_BOUND_MS = 150.0
DROP_BOUND = 0.01


def _window(ws: WsCollector, cams: list[str], since: float, until: float) -> dict[str, Any]:
    rows = ws.snapshot()
    lat = np.array([(t - ts) * 1e3 for c in cams for _, t, ts in rows.get(c, [])
                    if since < t <= until])  # fmt: skip
    n = len(lat)
    return {
        "messages": n,
        "fps_out": round(n / (until - since), 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if n else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if n else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if n else None,
    }


def _drops(statuses: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(s["frames_decoded"] for s in statuses), sum(s["drops"] for s in statuses)


def capacity(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    clip = make_clip(tmp)
    rtsp, urls = start_rtsp_server(clip, args.max_streams)
    base: dict[str, Any] = {"server": {"media_root": str(tmp)},
                            "tracker": {"embedder": args.embedder}}  # fmt: skip
    cluster: Cluster | None = None
    runs = []
    try:
        if args.workers:
            cfg = {**base, "cluster": {"worker_max_streams": args.max_streams}}
            (tmp / "cluster").mkdir()
            cluster = Cluster(tmp / "cluster", cfg)
            cluster.start([f"w{i + 1}" for i in range(args.workers)])
            assert cluster.gateway is not None
            runs = _search(cluster.gateway, urls, args, cluster)
        else:
            with serve(base, tmp) as srv:
                runs = _search(srv, urls, args, None)
    finally:
        if cluster is not None:
            cluster.stop()
        rtsp.terminate()
        rtsp.wait(timeout=10)
    held = [r["streams"] for r in runs if r["held"]]
    return {"workers": args.workers, "runs": runs, "largest_n": max(held, default=0)}


def _statuses(api: Server, cluster: Cluster | None) -> list[dict[str, Any]]:
    if cluster is None:
        return list(api.request("GET", "/api/streams")[1])
    return [s for w in cluster.workers.values() for s in w.request("GET", "/api/streams")[1]]


def _search(
    api: Server, urls: list[str], args: argparse.Namespace, cluster: Cluster | None
) -> list[dict[str, Any]]:
    ws = WsCollector(api.ws)
    runs = []
    try:
        n = 0
        while n + args.step <= args.max_streams:
            for i in range(n, n + args.step):
                body = {"id": f"cam{i}", "url": urls[i], "fps": 10}
                status, reply = api.request("POST", "/api/streams", body)
                assert status == 201, reply
            n += args.step
            cams = [f"cam{i}" for i in range(n)]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(ws.count(c) > 0 for c in cams):
                time.sleep(0.5)
            time.sleep(args.warmup)
            decoded0, dropped0 = _drops(_statuses(api, cluster))
            start = time.time()
            time.sleep(args.seconds)
            end = time.time()
            decoded1, dropped1 = _drops(_statuses(api, cluster))
            row = _window(ws, cams, start, end)
            decoded = max(decoded1 - decoded0, 1)
            row.update(streams=n, drop_fraction=round((dropped1 - dropped0) / decoded, 4))
            if cluster is not None:
                owners = cluster.owners()
                row["streams_per_worker"] = sorted(
                    sum(1 for w, _ in owners.values() if w == name) for name in cluster.workers
                )
            row["held"] = bool(row["p99_ms"] is not None and row["p99_ms"] <= P99_BOUND_MS
                               and row["drop_fraction"] <= DROP_BOUND)  # fmt: skip
            print(json.dumps(row), flush=True)
            runs.append(row)
            if not row["held"]:
                break
    finally:
        ws.close()
    return runs


def failover(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    media = tmp / "media"
    media.mkdir()
    clip = make_clip(tmp, seconds=20)
    cams = [f"cam{i}" for i in range(6)]
    for cam in cams:
        shutil.copy(clip, media / f"{cam}.mp4")
    cfg = {"server": {"media_root": str(media)}, "tracker": {"embedder": "histogram"},
           "cluster": {"lease_ttl_s": args.ttl, "worker_max_streams": 6}}  # fmt: skip
    (tmp / "cluster").mkdir()
    cluster = Cluster(tmp / "cluster", cfg)
    times = []
    try:
        cluster.start(["w0", "w1"])
        gw = cluster.gateway
        assert gw is not None
        for cam in cams:
            gw.request("POST", "/api/streams", {"id": cam, "url": f"{cam}.mp4", "fps": 10})
        ws = WsCollector(gw.ws)
        try:
            for trial in range(args.trials):
                _wait(lambda: _spread(cluster) and all(ws.count(c, time.time() - 2)
                      for c in cams), 180)  # fmt: skip
                owners = cluster.owners()
                victim = max(cluster.workers, key=lambda w: sum(o == w for o, _ in owners.values()))
                theirs = [c for c, (w, _) in owners.items() if w == victim]
                killed = time.time()
                proc = cluster.workers.pop(victim).proc
                proc.kill()
                proc.wait()
                _wait(lambda k=killed, th=theirs: all(ws.count(c, k + 0.5) for c in th), 120)
                rows = ws.snapshot()
                back = max(min(t for _, t, _ in rows[c] if t > killed + 0.5) for c in theirs)
                times.append(round(back - killed, 2))
                print(f"trial {trial + 1}: {len(theirs)} cameras of {victim} back after "
                      f"{times[-1]:.2f} s", flush=True)  # fmt: skip
                cluster.add_worker(f"w{trial + 2}")
        finally:
            ws.close()
    finally:
        cluster.stop()
    return {"ttl_s": args.ttl, "trials": times, "median_s": statistics.median(times),
            "max_s": max(times)}  # fmt: skip


def _spread(cluster: Cluster) -> bool:
    """Six cameras owned, three by each of the two workers (rebalanced)."""
    owners = cluster.owners()
    counts = [sum(1 for w, _ in owners.values() if w == name) for name in cluster.workers]
    return len(owners) == 6 and counts == [3, 3]


def _wait(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from cluster.connection import Keys, connect
    from cluster.entries import track_fields
    from cluster.leases import Leases
    from pipeline.config import RedisConfig
    from pipeline.encode import encode_message
    from pipeline.live_step import Published
    from pipeline.types import Tracks

    per_camera = 3600 * 10  # an hour at 10 fps
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"cameras": args.cameras, "messages_per_camera": per_camera}
    for label, maxlen in (("bounded", args.maxlen), ("unbounded", 10**9)):
        with redis_server(tmp / label, aof=False) as srv:
            client = connect(RedisConfig(url=srv.url, timeout_s=30))
            leases = Leases(client, Keys("vigil"), ttl_s=3600)
            held = [leases.claim(f"cam{i}", "bench") for i in range(args.cameras)]
            base = srv.memory_bytes()
            size = 0
            for start in range(0, per_camera, 500):
                batches = []
                for lease in held:
                    assert lease is not None
                    entries = []
                    for seq in range(start, start + 500):
                        xy = rng.uniform(0, 600, (5, 2)).astype(np.float32)
                        t = Tracks(
                            np.hstack([xy, xy + 60]).astype(np.float32),
                            np.arange(5, dtype=np.int64),
                            np.zeros(5, np.int32),
                            rng.uniform(0.3, 1, 5).astype(np.float32),
                            np.arange(5, dtype=np.int32),
                            lease.camera,
                            seq,
                            seq / 10,
                        )
                        data = encode_message(t, lease.camera, seq, 1.8e9 + seq / 10)
                        size += len(data)
                        msg = Published(lease.camera, seq, 1.8e9 + seq / 10, data, t)
                        entries.append(track_fields(msg, "bench", lease.token))
                    batches.append((lease, leases.keys.out(lease.camera), maxlen, entries))
                leases.append_many(batches)
            used = srv.memory_bytes()
            result[label] = {
                "maxlen": maxlen if maxlen < 10**9 else None,
                "entries_kept": sum(
                    int(client.xlen(leases.keys.out(f"cam{i}"))) for i in range(args.cameras)
                ),
                "used_memory_mb": round((used - base) / 2**20, 1),
                "mean_message_bytes": round(size / (per_camera * args.cameras), 1),
            }
            print(json.dumps({label: result[label]}), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description="scale-out figures")
    sub = ap.add_subparsers(dest="what", required=True)
    cap = sub.add_parser("capacity")
    cap.add_argument("--workers", type=int, default=3, help="0: the single process")
    cap.add_argument("--max-streams", type=int, default=16)
    cap.add_argument("--step", type=int, default=2)
    cap.add_argument("--seconds", type=float, default=30)
    cap.add_argument("--warmup", type=float, default=10)
    cap.add_argument("--embedder", default="mobilenet")
    fo = sub.add_parser("failover")
    fo.add_argument("--trials", type=int, default=10)
    fo.add_argument("--ttl", type=float, default=10.0)
    mem = sub.add_parser("memory")
    mem.add_argument("--cameras", type=int, default=8)
    mem.add_argument("--maxlen", type=int, default=1000)
    for p in (cap, fo, mem):
        p.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops children
    tmp = Path(tempfile.mkdtemp(prefix="vigil-scaleout-"))
    try:
        result = {"capacity": capacity, "failover": failover, "memory": memory}[args.what](
            args, tmp
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
