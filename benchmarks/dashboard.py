"""The dashboard's costs on a real `vigil serve` playing the sample clip (one camera, 10 fps):

1. preview CPU per watched camera: phases with no viewer and with one WebSocket client watching
   the camera's previews, interleaved (``--rounds`` of each). Per phase: the server process's
   CPU seconds (/proc, every thread; FFmpeg is its own process and not counted), the previews
   encoded and the encoder thread's CPU (``vigil_preview_frames_total``,
   ``vigil_preview_encode_cpu_seconds``). Per preview frame: the encoder thread's ms (resize +
   JPEG + header) and the whole process's extra ms over the no-viewer phase (fan-out and the
   WebSocket send included).
2. encode cost by source size: ``encode_jpeg`` on the clip's frames scaled to 720p and 1080p.
3. glass-to-display delay as the page measures it: Debian's Chromium on the camera view for
   ``--page-seconds``, the page's own median and P95 (frame arrival at the decoder to the
   preview drawn, on the server's clock).

    python -m benchmarks.dashboard [--seconds 20] [--rounds 3] [--page-seconds 30]

Prints a Markdown table and writes ``--out`` (JSON). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.serving import REPO, Server, serve
from server.preview import encode_jpeg

CLIP = REPO / "assets" / "one-by-one-person-detection.mp4"
CHROMIUM = Path("/usr/bin/chromium")


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _sample(srv: Server) -> dict[str, float]:
    _, text = srv.request("GET", "/metrics")
    return {
        "cpu_s": _process_cpu(srv.proc.pid),
        "previews": _metric(text, "vigil_preview_frames_total"),
        "encode_cpu_s": _metric(text, "vigil_preview_encode_cpu_seconds_sum"),
        "wall": time.monotonic(),
    }


def _watch(srv: Server, stop: threading.Event, got: list[int]) -> None:
    """A viewer like the page: tracks, events and the camera's previews."""
    from websockets.sync.client import connect

    with connect(srv.ws, max_size=2**22) as ws:
        ws.send(json.dumps({"op": "subscribe"}))
        ws.send(json.dumps({"op": "preview", "streams": ["sample"]}))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                if isinstance(ws.recv(timeout=0.5), bytes):
                    got[0] += 1


def _phase(srv: Server, seconds: float, viewer: bool) -> dict[str, float]:
    stop, got = threading.Event(), [0]
    t = threading.Thread(target=_watch, args=(srv, stop, got), daemon=True) if viewer else None
    if t is not None:
        t.start()
    time.sleep(1.5)  # the subscription in place, or the last phase's viewer gone, first
    a = _sample(srv)
    time.sleep(seconds)
    b = _sample(srv)
    stop.set()
    if t is not None:
        t.join(5)
    out = {k: b[k] - a[k] for k in a}
    out["received"] = float(got[0])
    return out


def preview_cpu(srv: Server, seconds: float, rounds: int) -> dict[str, Any]:
    phases: dict[str, list[dict[str, float]]] = {"none": [], "one": []}
    for _ in range(rounds):
        phases["none"].append(_phase(srv, seconds, viewer=False))
        phases["one"].append(_phase(srv, seconds, viewer=True))
    none_cpu = sum(p["cpu_s"] for p in phases["none"]) / sum(p["wall"] for p in phases["none"])
    one = phases["one"]
    frames = sum(p["previews"] for p in one)
    wall = sum(p["wall"] for p in one)
    extra = sum(p["cpu_s"] for p in one) - none_cpu * wall
    return {
        "phases": phases,
        "no_viewer_previews": sum(p["previews"] for p in phases["none"]),
        "no_viewer_encode_cpu_s": sum(p["encode_cpu_s"] for p in phases["none"]),
        "previews_per_s": frames / wall,
        "encoder_ms_per_preview": 1e3 * sum(p["encode_cpu_s"] for p in one) / max(1.0, frames),
        "process_extra_ms_per_preview": 1e3 * extra / max(1.0, frames),
        "process_cpu_no_viewer": none_cpu,
        "process_cpu_one_viewer": sum(p["cpu_s"] for p in one) / wall,
    }


def _one_step_area(image: np.ndarray, width: int, quality: int) -> bytes:
    """The first version's encoder: one area resize at whatever factor, then JPEG."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
    return bytes(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1])


def encode_by_size(width: int = 640, quality: int = 70, n: int = 50) -> dict[str, Any]:
    """ms per preview on one thread, by source size: ``encode_jpeg`` (``downscale``) and the
    one-step area resize, frame by frame interleaved."""
    cap = cv2.VideoCapture(str(CLIP))
    frames: list[np.ndarray] = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    out: dict[str, Any] = {}
    sizes = (("432p", None), ("720p", (1280, 720)), ("1080p", (1920, 1080)),
             ("2160p", (3840, 2160)))  # fmt: skip
    cv2.setNumThreads(1)
    for name, size in sizes:
        imgs = [f if size is None else np.ascontiguousarray(cv2.resize(f, size)) for f in frames]
        encode_jpeg(imgs[0], width, quality)  # warm-up: the first call initializes the codec
        _one_step_area(imgs[0], width, quality)
        spent = {"downscale": 0.0, "one_step_area": 0.0}
        for img in imgs:
            t0 = time.thread_time()
            encode_jpeg(img, width, quality)
            t1 = time.thread_time()
            _one_step_area(img, width, quality)
            spent["downscale"] += t1 - t0
            spent["one_step_area"] += time.thread_time() - t1
        out[name] = {k: 1e3 * v / len(imgs) for k, v in spent.items()}
    return out


def page_delay(srv: Server, seconds: float, shots: Path | None) -> dict[str, Any]:
    """The page's own delay statistics after ``seconds`` on the camera view; with ``shots``,
    screenshots of the camera view and (with two more cameras added) of the grid there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1280, "height": 860})
        page.goto(srv.base + "/#/camera/sample")
        time.sleep(seconds)
        stats = page.evaluate("window.vigil.stats()")["sample"]
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            boxes = "() => (window.vigil.drawn().sample?.boxes || []).length"
            deadline = time.monotonic() + 60  # a moment with someone in the picture
            while page.evaluate(boxes) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            page.screenshot(path=str(shots / "dashboard-camera.png"))
            for sid, fps in (("lobby", 5), ("hallway", 8)):
                body = {"id": sid, "url": str(CLIP), "fps": fps}
                srv.request("POST", "/api/streams", body)
            page.goto(srv.base + "/#/")
            time.sleep(10)
            page.screenshot(path=str(shots / "dashboard-grid.png"))
        b.close()
    return dict(stats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--page-seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("runs/dashboard-bench.json"))
    ap.add_argument("--screenshots", type=Path, default=None, help="write the README's PNGs here")
    ap.add_argument("--encode-only", action="store_true", help="only the encode table")
    args = ap.parse_args(argv)
    if args.encode_only:
        for k, v in encode_by_size().items():
            print(f"| {k} -> 640 px | {v['downscale']:.2f} | {v['one_step_area']:.2f} |")
        return
    cfg = {
        "tracker": {"embedder": "histogram"},
        "streams": [{"id": "sample", "url": str(CLIP), "fps": 10, "loop": True,
                     "rules_file": str(REPO / "configs" / "sample-analytics.yaml")}],
    }  # fmt: skip
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    result["encode_ms_by_source"] = encode_by_size()
    with tempfile.TemporaryDirectory() as tmp, serve(cfg, Path(tmp)) as srv:
        srv.wait_state("sample", "live", 60)
        time.sleep(3.0)
        result["preview"] = preview_cpu(srv, args.seconds, args.rounds)
        if CHROMIUM.exists():
            result["page"] = page_delay(srv, args.page_seconds, args.screenshots)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    pv, enc = result["preview"], result["encode_ms_by_source"]
    print("| preview CPU, one camera 768x432 at 10 fps, previews at 5 fps, 640 px | |")
    print("|---|---|")
    print(f"| previews per second (one viewer) | {pv['previews_per_s']:.2f} |")
    print(f"| encoder thread, ms per preview frame (resize + JPEG) | "
          f"{pv['encoder_ms_per_preview']:.2f} |")  # fmt: skip
    print(f"| whole process, extra ms per preview frame (fan-out, send) | "
          f"{pv['process_extra_ms_per_preview']:.2f} |")  # fmt: skip
    print(f"| server CPU, no viewer / one viewer (cores) | {pv['process_cpu_no_viewer']:.3f} / "
          f"{pv['process_cpu_one_viewer']:.3f} |")  # fmt: skip
    print(f"| previews encoded with no viewer | {pv['no_viewer_previews']:.0f} "
          f"(encoder CPU {pv['no_viewer_encode_cpu_s']:.3f} s) |")  # fmt: skip
    for k, v in enc.items():
        print(f"| encode {k} -> 640 px, ms on one thread: downscale / one-step area | "
              f"{v['downscale']:.2f} / {v['one_step_area']:.2f} |")  # fmt: skip
    if "page" in result:
        pg = result["page"]
        print(f"| glass-to-display, page-measured: median / P95 ms ({pg['count']} frames) | "
              f"{1e3 * pg['median']:.0f} / {1e3 * pg['p95']:.0f} |")  # fmt: skip
    print(f"(load average before {result['load_before'][0]:.1f}, after "
          f"{result['load_after'][0]:.1f}: other jobs shared the CPU)")  # fmt: skip
    print(f"(per-phase samples: {statistics.mean(p['previews'] for p in pv['phases']['one']):.0f} "
          f"previews per {args.seconds:g} s phase; JSON: {args.out})")  # fmt: skip


if __name__ == "__main__":
    main()
