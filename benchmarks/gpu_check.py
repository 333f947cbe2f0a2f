"""The GPU check: one command, one call on a GPU machine, everything written to one folder.

    python -m benchmarks.gpu_check --out DIR [--smoke] [--budget-s 420]
    python -m benchmarks.gpu_check --prepare-carry .gpu     # on a machine with pip, beforehand

Sections (each one's failure is recorded and the next one runs):

1. ``environment``: torch/CUDA/GPU, ONNX Runtime, DALI and TensorRT presence, the FFmpeg in use
   and its decode path;
2. ``parity``: the torch-CUDA backend (FP16 + CUDA graphs, and FP32 eager) against ONNX Runtime
   FP32 on real frames of the bundled clip: detections per frame, matched boxes' largest
   coordinate and score differences;
3. ``throughput``: the detector at 320 for batch 1, 8, 32, 64, 128, FP16 eager against FP16
   with CUDA graphs (network + decode, CUDA-event timed), and the full ``detect`` (plus NMS and
   the copy back) with graphs;
4. ``replay``: end-to-end replay fps of 1080p footage (the bundled clip scaled to 1920x1080 and
   sped up to 30 fps by FFmpeg) with the per-stage split, torch-CUDA against ONNX Runtime INT8;
5. ``live``: the largest number of concurrent 1080p30 streams (looped files paced at real time,
   every frame inferred) whose P99 arrival-to-publish latency stays under 100 ms, searched by
   doubling then bisection within the time left.

``--smoke`` runs the same code on the CPU with tiny settings (the torch backend in FP32, two
batch sizes, a 20-frame clip, one live probe): a test runs it end to end. Output:
``gpu_check.json``, ``gpu_check.md``, ``gpu_check.png`` and ``gpu_check.log`` (progress and
any tracebacks). What the GPU machine lacks travels as wheels (``--prepare-carry``,
:mod:`benchmarks.gpu_carry`, README "GPU").
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import _sample_frames, live_probe
from pipeline.config import DEFAULT_MODEL, SAMPLE_CLIP, VigilConfig, load_config

BATCHES = (1, 8, 32, 64, 128)
SMOKE_BATCHES = (1, 2)
P99_BOUND_MS = 100.0
DROP_BOUND = 0.01


class Budget:
    """Seconds left of the whole check; sections shorten or skip themselves against it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Log:
    """Progress lines to stderr and to ``gpu_check.log``."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {msg}"
        print(line, file=sys.stderr, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


# -- sections ---------------------------------------------------------------------------
def environment(cfg: VigilConfig) -> dict[str, Any]:
    import importlib.util

    import onnxruntime
    import torch

    from pipeline.wiring import build_decode

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": onnxruntime.__version__,
        "dali": importlib.util.find_spec("nvidia.dali") is not None,
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "decode": build_decode(cfg.source).describe(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": p.name,
            "capability": f"{p.major}.{p.minor}",
            "gpu_mem_gib": p.total_memory / 2**30,
        }
    return info


def people_frames(n: int) -> list[np.ndarray]:
    """``n`` frames of the bundled clip, 5 s apart, from the first with people in it (25 s)."""
    return _sample_frames(SAMPLE_CLIP, 250 + 50 * n)[250::50][:n]


def letterboxed(frames: list[np.ndarray], size: int) -> np.ndarray:
    from pipeline.preprocess import CpuPreprocessor

    return np.asarray(CpuPreprocessor(size, len(frames))(frames)[0])


def compare(ref: list[Any], got: list[Any]) -> dict[str, Any]:
    """Per-frame agreement of two detection lists (letterbox pixels): counts, and for each
    reference box its best IoU match's coordinate and score differences."""
    from models.postprocess import box_iou

    same = matched = total = 0
    max_px = max_score = 0.0
    min_iou = 1.0
    for a, b in zip(ref, got, strict=True):
        same += int(len(a) == len(b))
        total += len(a)
        if not len(a) or not len(b):
            continue
        iou = box_iou(a.xyxy, b.xyxy)
        j = iou.argmax(axis=1)
        best = iou[np.arange(len(a)), j]
        matched += int((best > 0.5).sum())
        min_iou = min(min_iou, float(best.min()))
        max_px = max(max_px, float(np.abs(a.xyxy - b.xyxy[j]).max()))
        max_score = max(max_score, float(np.abs(a.confidence - b.confidence[j]).max()))
    return {
        "frames": len(ref),
        "frames_same_count": same,
        "reference_boxes": total,
        "boxes_matched_iou_0.5": matched,
        "min_matched_iou": round(min_iou, 4) if total else None,
        "max_abs_px": round(max_px, 4),
        "max_abs_score": round(max_score, 5),
    }


def parity(device: str, n_frames: int) -> dict[str, Any]:
    from models.detector import OrtDetector
    from models.postprocess import PostprocessParams, postprocess_batch
    from models.torch_detector import TorchDetector

    frames = people_frames(n_frames)
    batch = letterboxed(frames, 320)
    params = PostprocessParams(0.25, 0.45)
    ref = postprocess_batch(
        OrtDetector(DEFAULT_MODEL.parent / "yolov5n-320.onnx").infer(batch), params
    )
    out: dict[str, Any] = {"reference": "onnxruntime fp32 (CPU)", "conf": 0.25, "iou": 0.45}
    variants = [("fp32 eager", False, False)]
    if device != "cpu":
        variants.insert(0, ("fp16 cuda graphs", True, True))
    for name, fp16, graphs in variants:
        det = TorchDetector(DEFAULT_MODEL, device, len(frames), cuda_graphs=graphs, fp16=fp16)
        out[name] = compare(ref, det.detect(batch, params))
    return out


def _timed(fn: Callable[[], Any], sync: Callable[[], None], seconds: float) -> dict[str, float]:
    """Median and mean ms per call over about ``seconds`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    sync()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": round(statistics.median(times), 3), "calls": len(times)}


def throughput(device: str, batches: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    import torch

    from models.postprocess import PostprocessParams
    from models.torch_detector import TorchDetector

    real = torch.from_numpy(letterboxed(people_frames(8), 320))
    on_cuda = device != "cpu"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    variants = (
        [("fp16 eager", False), ("fp16 cuda graphs", True)] if on_cuda else [("fp32 eager", False)]
    )
    rows = []
    params = PostprocessParams(0.25, 0.45)
    for name, graphs in variants:
        det = TorchDetector(DEFAULT_MODEL, device, max(batches), cuda_graphs=graphs)
        for b in batches:
            reps = -(-b // real.shape[0])
            x = real.repeat(reps, 1, 1, 1)[:b].to(device)
            fwd = _timed(partial(det.raw_device, x), sync, seconds)
            row = {"variant": name, "batch": b, "forward_ms": fwd["median_ms"]}
            row["forward_fps"] = round(1e3 * b / fwd["median_ms"], 1)
            if graphs or not on_cuda:
                full = _timed(partial(det.detect, x, params), sync, seconds)
                row["detect_ms"] = full["median_ms"]
                row["detect_fps"] = round(1e3 * b / full["median_ms"], 1)
            rows.append(row)
    return rows


def make_clip(ffmpeg: str, out: Path, frames: int) -> Path:
    """The bundled clip scaled to 1920x1080 and played 3x faster as 30 fps (every frame a
    distinct picture), H.264; ``frames`` > 0: only that many, from the first person on."""
    limit = ["-ss", "25"] if frames else []
    limit_out = ["-frames:v", str(frames)] if frames else []
    cmd = [
        ffmpeg, "-nostdin", "-loglevel", "error", "-y", *limit, "-i", str(SAMPLE_CLIP),
        "-vf", "setpts=PTS/3,scale=1920:1080", "-r", "30", *limit_out, "-an",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "60",
        "-pix_fmt", "yuv420p", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def replay_runs(
    cfg: VigilConfig, clip: Path, backends: list[str], tmp: Path, max_frames: int
) -> list[dict[str, Any]]:
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource
    from pipeline.wiring import build_decode

    rows = []
    for backend in backends:
        c = replace(cfg, model=replace(cfg.model, backend=backend))
        src = FFmpegSource(
            str(clip), stream_id="r1080", max_frames=max_frames, decode=build_decode(c.source)
        )
        s = Replay(src, c, tmp / backend).run()
        rows.append(
            {
                "backend": s["model"]["backend"],
                "precision": s["model"]["precision"],
                "device": s["model"]["device"],
                "preprocess": s["model"]["preprocess"],
                "decode": s["decode"]["path"],
                "frames": s["frames_processed"],
                "fps": s["fps"],
                "stages_ms": {k: v["mean_ms"] for k, v in s["stages_ms"].items()},
            }
        )
    return rows


def live_search(
    cfg: VigilConfig, clip: Path, budget: Budget, seconds: float, cap: int, log: Log
) -> dict[str, Any]:
    """Doubling, then bisection, on N; stops when a probe would not fit in the time left."""
    probe_cost = seconds + 12.0  # warm-up, start-up and shutdown around the measurement
    runs: dict[int, dict[str, Any]] = {}

    def held(n: int) -> bool | None:
        if budget.left() < probe_cost:
            return None
        row = live_probe(cfg, [str(clip)] * n, seconds, 30.0)
        row["held"] = bool(
            row["p99_ms"] is not None
            and row["p99_ms"] <= P99_BOUND_MS
            and row["drop_fraction"] <= DROP_BOUND
        )
        runs[n] = row
        log(f"live: {n} streams: P99 {row['p99_ms']} ms, dropped {row['drop_fraction']:.1%}")
        return bool(row["held"])

    good, bad = 0, 0
    n = 1
    while n <= cap:
        ok = held(n)
        if ok is None:
            break
        if not ok:
            bad = n
            break
        good, n = n, n * 2
    while bad and bad - good > 1:
        mid = (good + bad) // 2
        ok = held(mid)
        if ok is None:
            break
        good, bad = (mid, bad) if ok else (good, mid)
    for row in runs.values():
        row.pop("latencies_ms", None)
    return {
        "fps_per_stream": 30.0,
        "resolution": "1920x1080",
        "p99_bound_ms": P99_BOUND_MS,
        "drop_bound": DROP_BOUND,
        "largest_n": good,
        "first_failing_n": bad or None,
        "complete": (bool(bad) and bad - good == 1) or (not bad and n > cap),
        "runs": [runs[k] for k in sorted(runs)],
    }


# -- the report -------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append(
            "| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |"
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Vigil GPU check ({'smoke, CPU' if result['smoke'] else 'full'})", ""]
    lines += [f"Command: `{result['command']}`; wall {result['wall_s']} s.", ""]
    env = result.get("environment", {})
    lines += ["## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    par = result.get("parity", {})
    if "error" not in par and par:
        rows = [{"variant": k, **v} for k, v in par.items() if isinstance(v, dict)]
        keys = [
            "variant",
            "frames",
            "frames_same_count",
            "reference_boxes",
            "boxes_matched_iou_0.5",
            "min_matched_iou",
            "max_abs_px",
            "max_abs_score",
        ]
        lines += [f"## Parity against {par['reference']}", "", *_table(rows, keys), ""]
    thr = result.get("throughput")
    if isinstance(thr, list):
        keys = ["variant", "batch", "forward_ms", "forward_fps", "detect_ms", "detect_fps"]
        lines += ["## Detector throughput at 320 (frames/s)", "", *_table(thr, keys), ""]
    rep = result.get("replay")
    if isinstance(rep, list):
        stages = sorted(
            {k for r in rep for k in r["stages_ms"]}, key=list(rep[0]["stages_ms"]).index
        )
        flat = [{**r, **{f"{k} ms": v for k, v in r["stages_ms"].items()}} for r in rep]
        keys = ["backend", "precision", "device", "preprocess", "decode", "frames", "fps"]
        lines += ["## Replay, 1080p", "", *_table(flat, keys + [f"{k} ms" for k in stages]), ""]
    live = result.get("live")
    if isinstance(live, dict) and "runs" in live:
        lines += [
            f"## Live: 1080p30 streams, P99 arrival-to-publish under {live['p99_bound_ms']:g} ms",
            "",
        ]
        lines += [
            f"Largest N that held: **{live['largest_n']}** (first failing: "
            f"{live['first_failing_n']}; search complete: {live['complete']}).",
            "",
        ]
        keys = [
            "streams",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "fps_out",
            "decoded_fps",
            "drop_fraction",
            "held",
        ]
        lines += [*_table(live["runs"], keys), ""]
    for name in ("environment", "parity", "throughput", "replay", "live"):
        sec = result.get(name)
        if isinstance(sec, dict) and "error" in sec:
            lines += [f"**{name} failed**: {sec['error']}", ""]
        if isinstance(sec, dict) and "skipped" in sec:
            lines += [f"**{name} skipped**: {sec['skipped']}", ""]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    thr = result.get("throughput")
    if isinstance(thr, list):
        for variant in dict.fromkeys(r["variant"] for r in thr):
            rows = [r for r in thr if r["variant"] == variant]
            ax1.plot(
                [r["batch"] for r in rows], [r["forward_fps"] for r in rows], "o-", label=variant
            )
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("batch")
        ax1.set_ylabel("frames/s (network + decode)")
        ax1.legend()
    live = result.get("live")
    if isinstance(live, dict) and live.get("runs"):
        runs = live["runs"]
        ax2.plot([r["streams"] for r in runs], [r["p99_ms"] or 0 for r in runs], "o")
        ax2.axhline(live["p99_bound_ms"], color="r", linestyle="--", label="bound")
        ax2.set_xlabel("1080p30 streams")
        ax2.set_ylabel("P99 arrival-to-publish ms")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------
def ffmpeg_binary() -> str:
    """FFmpeg on PATH, else the one inside the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit(
            "gpu_check: no ffmpeg on PATH and imageio-ffmpeg is not installed"
        ) from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def check_config(smoke: bool, ffmpeg: str) -> VigilConfig:
    """Settings of every section: the bundled model, DeepSORT with the MobileNetV2 embedder."""
    cfg = load_config(None)
    model = replace(cfg.model, threads=2 if smoke else 8)
    batch = replace(cfg.batch, max_batch=4 if smoke else 32, queue_frames=64)
    live = replace(cfg.live, max_batch=8 if smoke else 64, max_wait_ms=5.0, inference_nice=0)
    source = replace(cfg.source, ffmpeg=ffmpeg)
    return replace(cfg, model=model, batch=batch, live=live, source=source)


def run(out: Path, smoke: bool, budget_s: float, command: str) -> dict[str, Any]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    budget = Budget(budget_s)
    start = time.monotonic()
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    backend = "torch-cuda" if device == "cuda" else "torch"
    cfg = check_config(smoke, ffmpeg_binary())
    result: dict[str, Any] = {"smoke": smoke, "device": device, "command": command}

    def section(name: str, fn: Callable[[], Any], min_left: float = 0.0) -> None:
        if budget.left() < min_left:
            result[name] = {"skipped": f"{budget.left():.0f} s left of the budget"}
            log(f"{name}: skipped (budget)")
            return
        log(f"{name} ...")
        try:
            result[name] = fn()
            log(f"{name}: done")
        except Exception as e:
            result[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            log(f"{name} failed:\n{traceback.format_exc()}")
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")

    section("environment", lambda: environment(cfg))
    section("parity", lambda: parity(device, 2 if smoke else 16))
    batches = SMOKE_BATCHES if smoke else BATCHES
    section("throughput", lambda: throughput(device, batches, 0.2 if smoke else 1.5), 60)
    with tempfile.TemporaryDirectory(prefix="vigil-gpu-check-") as tmp:
        clip = Path(tmp) / "clip1080p30.mp4"
        section("clip", lambda: str(make_clip(cfg.source.ffmpeg, clip, 20 if smoke else 0)))
        backends = [backend, "onnxruntime"]
        section(
            "replay", lambda: replay_runs(cfg, clip, backends, Path(tmp), 0 if smoke else 900), 90
        )
        c = replace(cfg, model=replace(cfg.model, backend=backend))
        section(
            "live",
            lambda: live_search(c, clip, budget, 2.0 if smoke else 8.0, 1 if smoke else 64, log),
            30,
        )
    result["wall_s"] = round(time.monotonic() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    try:
        plot(result, out / "gpu_check.png")
    except Exception:
        log(f"plot failed:\n{traceback.format_exc()}")
    log(f"written: {out}/gpu_check.json, gpu_check.md, gpu_check.png, gpu_check.log")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, help="folder for gpu_check.{json,md,png,log}")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, on the CPU")
    parser.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget")
    parser.add_argument(
        "--prepare-carry",
        type=Path,
        metavar="DIR",
        help="download the wheels the GPU machine needs into DIR",
    )
    args = parser.parse_args(argv)
    if args.prepare_carry:
        from benchmarks.gpu_carry import prepare_carry

        return prepare_carry(args.prepare_carry)
    if args.out is None:
        parser.error("--out is required")
    command = "python -m benchmarks.gpu_check " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    result = run(args.out, args.smoke, args.budget_s, command)
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    print((args.out / "gpu_check.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
