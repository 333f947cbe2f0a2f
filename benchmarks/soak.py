"""Long reliability runs against real `vigil serve` processes (`make soak`). Each prints its
figures as one JSON line (and writes them to ``--out``) and exits 1 if a promise was broken.

    python -m benchmarks.soak frames   [--frames 100000] [--streams 4] [--readers 4]
    python -m benchmarks.soak restarts [--times 20] [--outage 3]
    python -m benchmarks.soak clients  [--clients 1000] [--stalled 0.1] [--seconds 60]
    python -m benchmarks.soak flood    [--size 15000000] [--readers 20] [--seconds 30]
    python -m benchmarks.soak unpaced  [--streams 3] [--compare ../main]
    python -m benchmarks.soak memory   [--clients 900]

- ``frames``: looped files inferred as fast as the machine allows, ``--readers`` WebSocket
  clients reading every message, the server's RSS, threads and open files sampled every
  ``--sample-s`` (30 s): after the warm-up RSS must grow less than 5% and threads and files
  not at all.
- ``restarts``: an RTSP camera (the loopback GStreamer server) killed and started again
  ``--times`` times beside a local file: time from the moment the server listens again to the
  camera's next inferred frame each time, and the longest gap between two messages of the
  local stream seen by a WebSocket reader (the other stream must never pause).
- ``clients``: ``--clients`` WebSocket clients of which ``--stalled`` never read: messages per
  second of the healthy ones, the server's RSS before, during and after (with the periodic
  ``malloc_trim`` off and on: is memory that stays after a load held, or only kept by the
  allocator?).
- ``flood``: one client sending ``--size``-byte frames in a loop (reconnecting whenever it is
  closed) while ``--readers`` clients measure their latency: before, during and after.
- ``unpaced``: files read as fast as possible; frames inferred per stream and second (with
  ``--compare CHECKOUT``, that checkout's server too, interleaved round by round).
- ``memory``: the server in-process after a load of clients: what the memory that stays is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from benchmarks.faults import RtspServer
from benchmarks.serving import Server, free_port, serve

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "one-by-one-person-detection.mp4"


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MiB), threads and open file descriptors of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def _base_config(media: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"media_root": str(media), "ws_max_clients": 5000, **server},
        "live": {"stall_timeout_s": 3.0, "backoff_initial_s": 0.2, "backoff_max_s": 2.0},
        "source": {"timeout_s": 3.0},
        "tracker": {"embedder": "histogram"},
    }


class Readers:
    """``n`` WebSocket clients reading every message in a background event loop; records the
    receive time of each message per stream."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.times: dict[str, list[float]] = {}
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Readers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _one(self, record: bool) -> None:
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, max_size=None) as ws:
                    await ws.send(json.dumps({"op": "subscribe"}))
                    while not self._stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 1.0)
                        except TimeoutError:
                            continue
                        self.messages += 1
                        if record:
                            msg = json.loads(raw)
                            if "stream" in msg:
                                self.times.setdefault(msg["stream"], []).append(time.time())
            except (OSError, websockets.ConnectionClosed):
                await asyncio.sleep(0.5)

    async def _main(self) -> None:
        await asyncio.gather(*(self._one(i == 0) for i in range(self.n)))


def _inferred(srv: Server) -> int:
    return sum(s["frames_inferred"] for s in srv.request("GET", "/api/streams")[1])


def run_frames(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    shutil.copy(SAMPLE, tmp / "people.mp4")
    cfg = _base_config(tmp)
    cfg["streams"] = [
        {"id": f"s{i}", "url": "people.mp4", "fps": 0, "realtime": False}
        for i in range(args.streams)
    ]
    samples: list[dict[str, Any]] = []
    with serve(cfg, tmp) as srv:
        for s in cfg["streams"]:
            srv.wait_state(s["id"], "live", timeout=120)
        readers = Readers(srv.ws, args.readers).start()
        t0 = time.time()
        next_sample = t0
        try:
            while True:
                now = time.time()
                inferred = _inferred(srv)
                if now >= next_sample:
                    samples.append(
                        {"t_s": round(now - t0), "frames": inferred, **proc_stats(srv.proc.pid)}
                    )
                    print(json.dumps(samples[-1]), flush=True)
                    next_sample += args.sample_s
                if inferred >= args.frames or now - t0 > args.max_minutes * 60:
                    break
                time.sleep(1.0)
            samples.append(
                {
                    "t_s": round(time.time() - t0),
                    "frames": _inferred(srv),
                    **proc_stats(srv.proc.pid),
                }
            )
            streams = srv.request("GET", "/api/streams")[1]
        finally:
            readers.stop()
    warm = [s for s in samples if s["t_s"] >= args.warmup_s] or samples[-1:]
    base = warm[0]
    growth = max(s["rss_mb"] for s in warm) / base["rss_mb"] - 1
    result = {
        "case": "frames",
        "frames": samples[-1]["frames"],
        "minutes": round(samples[-1]["t_s"] / 60, 1),
        "fps": round(samples[-1]["frames"] / max(samples[-1]["t_s"], 1), 1),
        "readers": args.readers,
        "messages_read": readers.messages,
        "rss_after_warmup_mb": base["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in warm),
        "rss_growth_pct": round(100 * growth, 2),
        "threads": sorted({s["threads"] for s in warm}),
        "fds": sorted({s["fds"] for s in warm}),
        "reconnects": sum(s["reconnects"] for s in streams),
        "samples": samples,
    }
    # "no growth": the run ends with no more threads or open files than the warm-up ended with
    result["ok"] = (
        growth < 0.05
        and samples[-1]["threads"] <= base["threads"]
        and samples[-1]["fds"] <= base["fds"]
    )
    return result


def _advanced(srv: Server, sid: str, before: int) -> bool:
    return bool(srv.stream(sid)["frames_inferred"] > before)


def _wait(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError


def run_restarts(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    shutil.copy(SAMPLE, tmp / "people.mp4")
    rtsp = RtspServer(free_port(), tmp / "people.mp4")
    rtsp.start()
    cfg = _base_config(tmp)
    cfg["streams"] = [
        {"id": "cam", "url": f"rtsp://127.0.0.1:{rtsp.port}/cam", "fps": 10},
        {"id": "local", "url": "people.mp4", "fps": 10},
    ]
    back_s: list[float] = []
    server_start_s: list[float] = []
    try:
        with serve(cfg, tmp) as srv:
            srv.wait_state("cam", "live", timeout=60)
            srv.wait_state("local", "live")
            readers = Readers(srv.ws, 1).start()
            t_start = time.time()
            try:
                for i in range(args.times):
                    rtsp.kill()
                    _wait(lambda: srv.stream("cam")["state"] != "live", 60)
                    time.sleep(args.outage)
                    before = srv.stream("cam")["frames_inferred"]
                    t_cmd = time.monotonic()
                    rtsp.start()  # returns once the server listens
                    t0 = time.monotonic()
                    _wait(functools.partial(_advanced, srv, "cam", before), 120)
                    back_s.append(round(time.monotonic() - t0, 2))
                    server_start_s.append(round(t0 - t_cmd, 2))
                    print(json.dumps({"restart": i + 1, "rtsp_server_start_s": server_start_s[-1],
                                      "back_to_live_s": back_s[-1]}), flush=True)  # fmt: skip
                    time.sleep(2.0)
            finally:
                readers.stop()
            local = np.array([t for t in readers.times.get("local", []) if t >= t_start])
            cam_state = srv.stream("cam")
    finally:
        rtsp.kill()
    gaps = np.diff(local) if local.size > 1 else np.array([0.0])
    result = {
        "case": "restarts",
        "times": args.times,
        "outage_s": args.outage,
        "rtsp_server_start_s": server_start_s,
        "back_to_live_s": back_s,
        "back_to_live_p50_s": round(float(np.median(back_s)), 2),
        "back_to_live_max_s": round(float(np.max(back_s)), 2),
        "local_messages": int(local.size),
        "local_longest_gap_s": round(float(gaps.max()), 3),
        "cam_reconnects": cam_state["reconnects"],
    }
    result["ok"] = result["local_longest_gap_s"] < 2.0 and len(back_s) == args.times
    return result


def _raw_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and never reads again."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)
    return raw


def _filters(n: int, distinct: bool) -> list[list[str] | None]:
    """``n`` class filters: none, or each client its own (person + two other COCO classes)."""
    from itertools import combinations

    from models.classes import COCO_NAMES

    if not distinct:
        return [None] * n
    pairs = combinations(COCO_NAMES[1:], 2)
    return [["person", a, b] for (a, b), _ in zip(pairs, range(n), strict=False)]


async def _healthy(url: str, filters: list[list[str] | None], seconds: float) -> list[int]:
    """Connect one client per filter (50 handshakes at a time), each reading from the moment it
    is connected (a client that does not read stops answering pings and is dropped); count the
    messages each receives during ``seconds`` once all are connected. -1: closed on us."""
    n = len(filters)
    counts = [0] * n
    connected = asyncio.Event()
    gate = asyncio.Semaphore(50)
    ready = 0

    async def client(i: int) -> None:
        nonlocal ready
        async with gate:
            # the server pings; a client that is busy reading should not fail its own pings
            ws = await websockets.connect(url, max_size=None, open_timeout=120, ping_interval=None)
        sub: dict[str, Any] = {"op": "subscribe"}
        if filters[i] is not None:
            sub["classes"] = filters[i]
        await ws.send(json.dumps(sub))
        ready += 1
        if ready == n:
            connected.set()
        deadline = None
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    raw = ""
                if deadline is None and connected.is_set():
                    deadline = time.monotonic() + seconds
                if deadline is not None and '"seq"' in raw:
                    counts[i] += 1
        except websockets.ConnectionClosed:
            counts[i] = -1
        finally:
            await ws.close()

    await asyncio.gather(*(client(i) for i in range(n)))
    return counts


def _cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _clients_once(
    args: argparse.Namespace, tmp: Path, trim_s: float, distinct: bool
) -> dict[str, Any]:
    cfg = _base_config(tmp, malloc_trim_interval_s=trim_s)
    cfg["streams"] = [{"id": "s0", "url": "people.mp4", "fps": 10}]
    stalled_n = int(args.clients * args.stalled)
    with serve(cfg, tmp) as srv:
        for s in cfg["streams"]:
            srv.wait_state(s["id"], "live")
        time.sleep(5)
        before = proc_stats(srv.proc.pid)
        stalled = [_raw_client(srv.port) for _ in range(stalled_n)]
        box: dict[str, Any] = {}

        filters = _filters(args.clients - stalled_n, distinct)

        def load() -> None:
            box["counts"] = asyncio.run(_healthy(srv.ws, filters, args.seconds))

        t = threading.Thread(target=load)
        cpu0, wall0 = _cpu_seconds(srv.proc.pid), time.monotonic()
        inferred0 = _inferred(srv)
        t.start()
        peak = before
        while t.is_alive():
            t.join(5)
            now = proc_stats(srv.proc.pid)
            peak = now if now["rss_mb"] > peak["rss_mb"] else peak
        wall = time.monotonic() - wall0
        cpu = (_cpu_seconds(srv.proc.pid) - cpu0) / wall
        published = (_inferred(srv) - inferred0) / wall  # messages/s each client should get
        for s in stalled:
            s.close()
        time.sleep(max(trim_s, 5) + 5)
        after = proc_stats(srv.proc.pid)
        counts = np.array(box["counts"])
        closed = int((counts < 0).sum())
        rate = np.maximum(counts, 0) / args.seconds
        lost = srv.request("GET", "/metrics")[1]
        lost_total = next(
            (float(line.split()[-1]) for line in lost.splitlines()
             if line.startswith("vigil_ws_messages_lost_total ")), 0.0,
        )  # fmt: skip
    return {
        "distinct_filters": distinct,
        "server_cpu_cores": round(cpu, 2),
        "malloc_trim_interval_s": trim_s,
        "rss_before_mb": before["rss_mb"],
        "rss_peak_mb": peak["rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "fds_before": before["fds"],
        "fds_after": after["fds"],
        "published_msgs_per_s": round(published, 2),
        "healthy_closed": closed,
        "healthy_msgs_per_s_min": round(float(rate.min()), 2),
        "healthy_msgs_per_s_median": round(float(np.median(rate)), 2),
        "messages_lost_to_stalled": lost_total,
    }


def run_clients(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    shutil.copy(SAMPLE, tmp / "people.mp4")
    runs = []
    for trim_s, distinct in ((0.0, False), (10.0, False), (10.0, True)):
        runs.append(_clients_once(args, tmp, trim_s, distinct))
        print(json.dumps(runs[-1]), flush=True)
    result = {"case": "clients", "clients": args.clients, "stalled": args.stalled, "runs": runs}
    # every healthy client gets (nearly) every message published while it reads
    result["ok"] = all(
        r["healthy_closed"] == 0 and r["healthy_msgs_per_s_min"] >= 0.9 * r["published_msgs_per_s"]
        for r in runs
    )
    return result


async def _latencies(url: str, readers: int, seconds: float) -> list[float]:
    """Receive time minus each message's arrival stamp ``ts`` (ms), over ``readers`` clients."""
    out: list[float] = []

    async def one() -> None:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"op": "subscribe"}))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                except TimeoutError:
                    continue
                if "ts" in msg:
                    out.append((time.time() - msg["ts"]) * 1000)

    await asyncio.gather(*(one() for _ in range(readers)))
    return out


def _flooder(url: str, stop: threading.Event, size: int) -> int:
    """Send ``size``-byte text frames in a loop, reconnecting whenever closed; frames sent."""
    sent = 0

    async def run() -> None:
        nonlocal sent
        blob = "x" * size
        while not stop.is_set():
            try:
                async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
                    while not stop.is_set():
                        await ws.send(blob)
                        sent += 1
            except (OSError, websockets.WebSocketException, TimeoutError):
                await asyncio.sleep(0.01)

    asyncio.run(run())
    return sent


def run_flood(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The flooder runs in its own process at the lowest CPU priority, so what the readers see is
    the server's doing, not the flooding client's own CPU on the same two cores."""
    import subprocess

    shutil.copy(SAMPLE, tmp / "people.mp4")
    cfg = _base_config(tmp)
    cfg["streams"] = [{"id": f"s{i}", "url": "people.mp4", "fps": 10} for i in range(2)]
    phases: dict[str, Any] = {}
    with serve(cfg, tmp) as srv:
        for s in cfg["streams"]:
            srv.wait_state(s["id"], "live")
        for phase in ("quiet", "flooded", "quiet again"):
            flooder = None
            if phase == "flooded":
                code = (
                    "import os, threading, time; os.nice(19); from benchmarks.soak import _flooder;"
                    f"e = threading.Event(); threading.Timer({args.seconds + 5}, e.set).start();"
                    f"print(_flooder({srv.ws!r}, e, {args.size}))"
                )
                flooder = subprocess.Popen(
                    [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
                )
                time.sleep(2)
            cpu0, t0 = _cpu_seconds(srv.proc.pid), time.monotonic()
            lat = np.array(asyncio.run(_latencies(srv.ws, args.readers, args.seconds)))
            cpu = (_cpu_seconds(srv.proc.pid) - cpu0) / (time.monotonic() - t0)
            sent = 0
            if flooder is not None:
                sent = int((flooder.communicate(timeout=60)[0] or "0").strip() or 0)
            phases[phase] = {
                "messages": int(lat.size),
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "server_cpu_cores": round(cpu, 2),
                "flood_frames_sent": sent,
            }
            print(json.dumps({phase: phases[phase]}), flush=True)
    result = {"case": "flood", "size": args.size, "readers": args.readers, "phases": phases}
    result["ok"] = phases["flooded"]["p99_ms"] < 3 * max(phases["quiet"]["p99_ms"], 100.0)
    return result


def run_unpaced(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Streams read as fast as possible (``realtime: false``, ``fps: 0``): frames inferred per
    stream and second, for this checkout and (``--compare``) another one, interleaved."""
    shutil.copy(SAMPLE, tmp / "people.mp4")
    cfg = {  # only keys every checkout knows
        "server": {"media_root": str(tmp)},
        "tracker": {"embedder": "histogram"},
        "streams": [
            {"id": f"u{i}", "url": "people.mp4", "fps": 0, "realtime": False, "loop": True}
            for i in range(args.streams)
        ],
    }
    repos = {"this": REPO, **({"compare": args.compare} if args.compare else {})}
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name, repo in repos.items():
            with serve(cfg, tmp, repo=repo) as srv:
                time.sleep(args.warmup_s)
                before = {s["id"]: s for s in srv.request("GET", "/api/streams")[1]}
                time.sleep(args.seconds)
                after = {s["id"]: s for s in srv.request("GET", "/api/streams")[1]}
            per = {
                k: round(
                    (after[k]["frames_inferred"] - before[k]["frames_inferred"]) / args.seconds, 2
                )
                for k in after
            }
            dec = {
                k: round(
                    (after[k]["frames_decoded"] - before[k]["frames_decoded"]) / args.seconds, 1
                )
                for k in after
            }
            runs.append({"round": round_, "checkout": name, "infer_fps": per, "decode_fps": dec})
            print(json.dumps(runs[-1]), flush=True)
    mine = [min(r["infer_fps"].values()) for r in runs if r["checkout"] == "this"]
    return {"case": "unpaced", "streams": args.streams, "runs": runs, "ok": min(mine) > 1.0}


def run_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The server in this process (uvicorn in a thread, periodic trim off), ``--clients``
    clients from a child process: RSS, Python's live objects and allocated blocks before,
    after the load, after ``malloc_trim`` alone, and after ``gc.collect()`` + ``malloc_trim``:
    is the memory that stays held by something, or only waiting to be given back?"""
    import gc
    import subprocess
    from dataclasses import replace

    import uvicorn

    from pipeline.config import StreamConfig, load_config
    from server.app import create_app
    from server.http_guard import guarded_protocol
    from server.memory import malloc_trim

    shutil.copy(SAMPLE, tmp / "people.mp4")
    port = free_port()
    cfg = load_config(None, {"server.media_root": str(tmp), "tracker.embedder": "histogram"})
    cfg = replace(
        cfg,
        streams=(StreamConfig("s0", "people.mp4", fps=10),),
        server=replace(cfg.server, port=port, ws_max_clients=5000, malloc_trim_interval_s=0.0),
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, loop="uvloop",
                       ws="websockets-sansio", http=guarded_protocol(10.0), log_level="warning")
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started, 120)
    time.sleep(args.warmup_s)
    pid = os.getpid()

    def state(label: str) -> dict[str, Any]:
        row = {"when": label, "rss_mb": proc_stats(pid)["rss_mb"],
               "objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks()}  # fmt: skip
        print(json.dumps(row), flush=True)
        return row

    gc.collect()
    rows = [state("before")]
    code = (
        "import asyncio; from benchmarks.soak import _healthy, _filters;"
        f"print(min(asyncio.run(_healthy('ws://127.0.0.1:{port}/ws', _filters({args.clients},"
        f" False), {args.seconds}))))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=600, check=True)
    time.sleep(5)
    rows.append(state("after the clients left"))
    malloc_trim()
    rows.append(state("after malloc_trim"))
    gc.collect()
    malloc_trim()
    rows.append(state("after gc.collect + malloc_trim"))
    server.should_exit = True
    thread.join(30)
    return {"case": "memory", "clients": args.clients, "rows": rows, "ok": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="case", required=True)
    f = sub.add_parser("frames")
    f.add_argument("--frames", type=int, default=100_000)
    f.add_argument("--streams", type=int, default=4)
    f.add_argument("--readers", type=int, default=4)
    f.add_argument("--sample-s", type=float, default=30.0)
    f.add_argument("--warmup-s", type=float, default=60.0)
    f.add_argument("--max-minutes", type=float, default=60.0)
    r = sub.add_parser("restarts")
    r.add_argument("--times", type=int, default=20)
    r.add_argument("--outage", type=float, default=3.0)
    c = sub.add_parser("clients")
    c.add_argument("--clients", type=int, default=1000)
    c.add_argument("--stalled", type=float, default=0.1)
    c.add_argument("--seconds", type=float, default=60.0)
    fl = sub.add_parser("flood")
    fl.add_argument("--size", type=int, default=15_000_000)
    fl.add_argument("--readers", type=int, default=20)
    fl.add_argument("--seconds", type=float, default=30.0)
    u = sub.add_parser("unpaced")
    u.add_argument("--streams", type=int, default=3)
    u.add_argument("--seconds", type=float, default=30.0)
    u.add_argument("--warmup-s", type=float, default=10.0)
    u.add_argument("--rounds", type=int, default=2)
    u.add_argument("--compare", type=Path, help="another checkout to run side by side")
    m = sub.add_parser("memory")
    m.add_argument("--clients", type=int, default=900)
    m.add_argument("--seconds", type=float, default=15.0)
    m.add_argument("--warmup-s", type=float, default=8.0)
    for p in (f, r, c, fl, u, m):
        p.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = ap.parse_args()
    runners = {"frames": run_frames, "restarts": run_restarts, "clients": run_clients,
               "flood": run_flood, "unpaced": run_unpaced, "memory": run_memory}  # fmt: skip
    runner = runners[args.case]
    tmp = Path(tempfile.mkdtemp(prefix=f"vigil-soak-{args.case}-"))
    try:
        result = runner(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
