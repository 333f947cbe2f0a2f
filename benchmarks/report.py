"""``vigil bench`` orchestration and its outputs: ``bench.json``, ``bench.md`` and PNG plots."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.analytics import bench_cost
from benchmarks.bench import SAMPLE, bench_live, bench_replay, bench_stages
from pipeline.config import VigilConfig
from pipeline.types import VigilError


def _fp32_model(cfg: VigilConfig) -> Path:
    """The FP32 variant of the configured model (a bare ONNX file is used as it is)."""
    from pipeline.wiring import resolve_model

    return resolve_model(cfg.model, "fp32").onnx


def bench_baselines(cfg: VigilConfig, footage: list[str], max_frames: int) -> list[dict[str, Any]]:
    from benchmarks.baselines import decode_only, naive_loop

    vigil = {r["footage"]: r for r in bench_replay(cfg, footage, max_frames)}
    rows = []
    for spec in footage:
        naive = naive_loop(spec, _fp32_model(cfg), max_frames)
        dec = decode_only(spec, max_frames)
        v = vigil[spec]["fps"]
        rows.append(
            {
                "footage": spec,
                "vigil_fps": v,
                "naive_fps": round(naive["fps"], 2),
                "decode_only_fps": round(dec["fps"], 1),
                "vigil_over_naive": round(v / naive["fps"], 2) if naive["fps"] else None,
                "vigil_over_decode": round(v / dec["fps"], 3) if dec["fps"] else None,
            }
        )
    return rows


def bench_accuracy(cfg: VigilConfig, sequences: list[Path]) -> dict[str, Any]:
    """HOTA / IDF1 / MOTA of Vigil and of the naive loop on MOT sequences (TrackEval)."""
    from benchmarks.baselines import naive_loop
    from evaluation.mot import (
        load_mot,
        read_sequence,
        replay_sequences,
        score_sequences,
        trackeval_data,
    )
    from pipeline.encode import mot_rows
    from pipeline.types import Tracks

    naive = {}
    with tempfile.TemporaryDirectory(prefix="vigil-acc-") as tmp:
        vigil, _ = replay_sequences(cfg, sequences, Path(tmp))
        for seq_dir in sequences:
            seq = read_sequence(seq_dir)
            gt = load_mot(seq.path / "gt" / "gt.txt", keep_zero_conf=False)
            rows: list[str] = []

            def collect(
                i: int, ids: np.ndarray, xyxy: np.ndarray, conf: np.ndarray, out: list[str] = rows
            ) -> None:
                zeros = np.zeros(len(ids), np.int32)
                out.append(mot_rows(Tracks(xyxy, ids, zeros, conf, zeros, frame_index=i)))

            naive_loop(str(seq.path / "img1"), _fp32_model(cfg), on_tracks=collect)
            path = Path(tmp) / f"{seq.name}-naive.txt"
            path.write_text("".join(rows))
            naive[seq.name] = trackeval_data(gt, load_mot(path), seq.frames, seq.name)
    pick = ("HOTA", "IDF1", "MOTA")
    v, n = score_sequences(vigil), score_sequences(naive)
    return {
        s: {
            "vigil": {k: round(v[s][k], 3) for k in pick},
            "naive": {k: round(n[s][k], 3) for k in pick},
        }
        for s in v
    }


def start_rtsp_server(clip: Path, mounts: int) -> tuple[subprocess.Popen[str], list[str]]:
    """The loopback GStreamer RTSP server (benchmarks/rtsp_server.py, Debian's python3-gi)
    serving ``clip`` on ``mounts`` mounts; returns the process and the URLs."""
    import random
    import socket

    from pipeline.config import PACKAGE_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    script = PACKAGE_ROOT / "benchmarks" / "rtsp_server.py"
    if not script.is_file() or not Path("/usr/bin/python3").exists():
        raise VigilError("--rtsp needs benchmarks/rtsp_server.py and Debian's python3-gi")
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(script), "--port", str(port),
         "--rtp-base", str(random.randrange(20000, 40000, 2)),
         *[f"cam{i}={clip}" for i in range(mounts)]],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    urls = [proc.stdout.readline().strip() for _ in range(mounts)]
    if not all(u.startswith("rtsp://") for u in urls):
        proc.terminate()
        raise VigilError(
            "the GStreamer RTSP server did not start (is gir1.2-gst-rtsp-server-1.0 installed?)"
        )
    return proc, urls


def make_clip(out: Path, seconds: int = 60) -> Path:
    """A 640x480, 10 fps H.264 clip from the bundled sample: the live benchmark's camera."""
    clip = out / "cam640.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(SAMPLE), "-t", str(seconds),
         "-vf", "scale=640:480", "-r", "10", "-c:v", "libx264", "-preset", "veryfast", "-bf", "0",
         "-g", "20", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    return clip


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    live = result.get("live")
    if live and live["runs"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in live["runs"]:
            lat = np.array(run["latencies_ms"])
            if lat.size:
                ax.plot(lat, np.linspace(0, 1, lat.size), label=f"N={run['streams']}")
        ax.axvline(live["p99_bound_ms"], color="grey", linestyle="--", label="P99 bound")
        ax.set(xlabel="arrival to publish (ms)", ylabel="fraction of frames", title="Latency CDF")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=100)
        written.append("latency_cdf.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [r["streams"] for r in live["runs"]]
        ax.plot(ns, [r["fps_out"] for r in live["runs"]], "o-", label="frames out/s")
        ax.plot(ns, [n * live["fps_per_stream"] for n in ns], "--", label="offered")
        ax.set(xlabel="streams", ylabel="frames/s", title="Throughput against stream count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fps_vs_streams.png", dpi=100)
        written.append("fps_vs_streams.png")
    if result.get("replay"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, r in enumerate(result["replay"]):
            bottom = 0.0
            for j, (stage, ms) in enumerate(r["stages_ms"].items()):
                ax.bar(i, ms, bottom=bottom, color=f"C{j}", label=stage if i == 0 else None)
                bottom += ms
        ax.set_xticks(
            range(len(result["replay"])), [Path(r["footage"]).name for r in result["replay"]]
        )
        ax.set(ylabel="ms per frame (summed over overlapping stages)", title="Replay stages")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "replay_stages.png", dpi=100)
        written.append("replay_stages.png")
    plt.close("all")
    return written


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# vigil bench", "", "## Stages", ""]
    lines += _table(
        ["stage", "median ms", "p95 ms", "frames/call", "frames/s"],
        [
            [r["stage"], r["median_ms"], r["p95_ms"] or "", r["frames_per_call"], r["fps"]]
            for r in result.get("stages", [])
        ],
    )
    if result.get("replay"):
        lines += ["", "## Replay", ""]
        lines += _table(
            ["footage", "frames", "fps", "ms/frame per stage"],
            [
                [Path(r["footage"]).name, r["frames"], r["fps"],
                 ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())]
                for r in result["replay"]
            ],
        )  # fmt: skip
    if result.get("baselines"):
        lines += ["", "## Against the baselines (same footage, same model, one run)", ""]
        lines += _table(
            ["footage", "Vigil fps", "naive fps", "decode-only fps", "Vigil/naive", "Vigil/decode"],
            [
                [Path(r["footage"]).name, r["vigil_fps"], r["naive_fps"], r["decode_only_fps"],
                 f"{r['vigil_over_naive']}x", r["vigil_over_decode"]]
                for r in result["baselines"]
            ],
        )  # fmt: skip
    if result.get("accuracy"):
        lines += ["", "## Accuracy (HOTA / IDF1 / MOTA)", ""]

        def trio(m: dict[str, float]) -> str:
            return f"{m['HOTA']} / {m['IDF1']} / {m['MOTA']}"

        lines += _table(
            ["sequence", "Vigil", "naive loop"],
            [[s, trio(r["vigil"]), trio(r["naive"])] for s, r in result["accuracy"].items()],
        )
    if result.get("analytics"):
        lines += ["", "## Analytics: us per frame, 10 rules (5 lines, 5 zones)", ""]
        lines += _table(
            ["tracks", "camera health", "median us", "p95 us", "events/frame"],
            [
                [r["tracks"], "on" if r["health"] else "off", r["median_us"], r["p95_us"],
                 r["events_per_frame"]]
                for r in result["analytics"]
            ],
        )  # fmt: skip
    if result.get("live"):
        live = result["live"]
        lines += [
            "",
            f"## Live capacity ({live['fps_per_stream']:g} fps per stream, "
            f"P99 <= {live['p99_bound_ms']:g} ms, drops <= {live['drop_bound']:.0%})",
            "",
            f"Largest N that held: **{live['largest_n']}**",
            "",
        ]
        lines += _table(
            ["streams", "P50 ms", "P95 ms", "P99 ms", "frames out/s", "dropped"],
            [
                [r["streams"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["fps_out"],
                 f"{r['drop_fraction']:.1%}"]
                for r in live["runs"]
            ],
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def run_bench(
    cfg: VigilConfig,
    out: Path,
    quick: bool,
    footage: list[str],
    sequences: list[Path],
    max_streams: int,
    live_seconds: float,
    rtsp: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if not footage:
        raise VigilError("no footage to benchmark")
    max_frames = 60 if quick else 0
    steps: list[tuple[str, Any]] = [
        ("stages", lambda: bench_stages(cfg, quick)),
        ("replay", lambda: bench_replay(cfg, footage, max_frames)),
        ("baselines", lambda: bench_baselines(cfg, footage, max_frames or 300)),
        ("analytics", lambda: bench_cost(300 if quick else 2000)),
    ]
    if sequences:
        steps.append(("accuracy", lambda: bench_accuracy(cfg, sequences)))
    result: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory(prefix="vigil-live-") as tmp:
        clip = make_clip(Path(tmp), 10 if quick else 60)
        server, urls = start_rtsp_server(clip, max_streams) if rtsp else (None, [])
        live_urls = (lambda n: urls[:n]) if rtsp else None

        def live() -> dict[str, Any]:
            return bench_live(cfg, clip, max_streams, live_seconds, 10.0, 150.0, 0.01, live_urls)

        steps.append(("live", live))
        try:
            for name, fn in steps:
                if progress is not None:
                    progress(name)
                result[name] = fn()
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
    result["plots"] = write_plots(result, out)
    slim = {**result}
    if "live" in slim:
        runs = [{k: v for k, v in r.items() if k != "latencies_ms"} for r in slim["live"]["runs"]]
        slim["live"] = {**slim["live"], "runs": runs}
    (out / "bench.json").write_text(json.dumps(slim, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return result
