"""The one ``vigil`` entry point: serve, worker, gateway, replay, eval, bench and the models.

The only module allowed to import every room. Every user error ends as one line
``vigil: <what is wrong>`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.types import VigilError


def _config(args: argparse.Namespace) -> Any:
    from pipeline.config import load_config

    classes = None
    if getattr(args, "classes", None):
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    return load_config(
        args.config,
        {
            "model.manifest": getattr(args, "model", None),
            "model.backend": getattr(args, "backend", None),
            "model.precision": getattr(args, "precision", None),
            "model.classes": classes,
            "batch.max_batch": getattr(args, "batch", None),
            "tracker.embedder": getattr(args, "embedder", None),
        },
    )


def _progress(total: int | None, quiet: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, disable=quiet, dynamic_ncols=True)


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource

    cfg = _config(args)
    source = FFmpegSource(
        args.source,
        stream_id=args.stream_id,
        max_frames=args.max_frames,
        folder_fps=cfg.source.folder_fps,
        rtsp_transport=cfg.source.rtsp_transport,
        timeout_s=cfg.source.timeout_s,
    )
    replay = Replay(source, cfg, args.out)
    total = source.info.frame_count
    if args.max_frames and total:
        total = min(total, args.max_frames)
    with _progress(total, args.quiet, "replay") as bar:
        summary = replay.run(bar.update)
    stages = summary["stages_ms"]
    split = ", ".join(f"{k} {v['mean_ms']:.1f}" for k, v in stages.items())
    print(
        f"{summary['frames_processed']} frames in {summary['wall_s']:.1f} s "
        f"({summary['fps']:.1f} fps; ms/frame: {split}); "
        f"model {summary['model']['name']} {summary['model']['version']} "
        f"{summary['model']['precision']} on {summary['model']['backend']}"
    )
    if summary["decode_errors"]:
        print(f"decoder reported {summary['decode_errors']} errors (decoded past them)")
    print(f"results: {args.out}/tracks.txt, messages.jsonl, summary.json")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.mot import format_table, replay_sequences, score_sequences

    cfg = _config(args)
    per_seq, replays = replay_sequences(
        cfg, args.sequences, args.out, progress=lambda n, name: _progress(n, args.quiet, name)
    )
    table = score_sequences(per_seq)
    print(format_table(table))
    result = {
        "metrics": table,
        "replay": {s: {"fps": r["fps"], "stages_ms": r["stages_ms"]} for s, r in replays.items()},
        "model": next(iter(replays.values()))["model"],
        "tracker": next(iter(replays.values()))["tracker"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"metrics: {args.out}/metrics.json")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.report import run_bench
    from pipeline.config import SAMPLE_CLIP

    cfg = _config(args)
    footage = [str(p) for p in args.footage] or [str(SAMPLE_CLIP)]
    for spec in footage:
        if not Path(spec).exists():
            raise VigilError(f"footage not found: {spec}")
    max_streams = args.max_streams or (2 if args.quick else 16)
    seconds = args.live_seconds or (4.0 if args.quick else 60.0)

    def step(name: str) -> None:
        if not args.quiet:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)

    result = run_bench(
        cfg, args.out, args.quick, footage, args.sequences, max_streams, seconds, args.rtsp, step
    )
    for row in result.get("baselines", []):
        print(
            f"{Path(row['footage']).name}: Vigil {row['vigil_fps']} fps, naive loop "
            f"{row['naive_fps']} fps ({row['vigil_over_naive']}x), decode-only "
            f"{row['decode_only_fps']} fps (Vigil at {row['vigil_over_decode']:.0%} of it)"
        )
    live = result["live"]
    print(f"live: largest N = {live['largest_n']} streams at {live['fps_per_stream']:g} fps")
    print(f"report: {args.out}/bench.md, bench.json, {', '.join(result['plots'])}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from server.serve import serve

    return serve(load_config(args.config, {"server.host": args.host, "server.port": args.port}))


def cmd_worker(args: argparse.Namespace) -> int:
    from cluster.worker_app import serve_worker
    from pipeline.config import load_config

    overrides = {"server.host": args.host, "server.port": args.port, "redis.url": args.redis,
                 "cluster.node_id": args.node_id}  # fmt: skip
    return serve_worker(load_config(args.config, overrides))


def cmd_gateway(args: argparse.Namespace) -> int:
    from cluster.gateway import serve_gateway
    from pipeline.config import load_config

    overrides = {"server.host": args.host, "server.port": args.port, "redis.url": args.redis,
                 "cluster.node_id": args.node_id}  # fmt: skip
    return serve_gateway(load_config(args.config, overrides))


def build_parser() -> argparse.ArgumentParser:
    from toolchain.cli_models import add_model_commands

    parser = argparse.ArgumentParser(prog="vigil", description="Vigil video analytics")
    sub = parser.add_subparsers(dest="command", required=True)

    sv = sub.add_parser("serve", help="run the live server (REST, WebSocket, metrics)")
    sv.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    sv.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default from config: 8000)")
    sv.set_defaults(func=cmd_serve)

    for name, func, text in (
        ("worker", cmd_worker, "scale-out: run the cameras this process claims in Redis"),
        ("gateway", cmd_gateway, "scale-out: REST, WebSocket and metrics fed from Redis"),
    ):
        role = sub.add_parser(name, help=text)
        role.add_argument("--config", type=Path, help="YAML config (redis:, cluster: sections)")
        role.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
        role.add_argument("--port", type=int, help="HTTP port (health, metrics; API on gateways)")
        role.add_argument("--redis", help="Redis URL (default from config: redis.url)")
        role.add_argument("--node-id", help="this node's name (default: <host>-<role>-<pid>)")
        role.set_defaults(func=func)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
        p.add_argument("--model", help="model manifest (.json) or YOLOv5 ONNX file")
        p.add_argument("--precision", choices=("int8", "fp32", "int8-qat"))
        p.add_argument("--backend", help="auto, onnxruntime or openvino")
        p.add_argument("--classes", help="comma-separated class names or ids, or 'all'")
        p.add_argument("--batch", type=int, help="frames per detector call")
        p.add_argument("--embedder", help="histogram or mobilenet")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    rp = sub.add_parser("replay", help="replay a video, frame folder or rtsp:// URL")
    rp.add_argument("source", help="video file, folder of frames, or rtsp:// URL")
    common(rp)
    rp.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    rp.add_argument("--stream-id", default="replay", help="stream name in messages")
    rp.set_defaults(func=cmd_replay)

    ev = sub.add_parser("eval", help="replay MOTChallenge sequences and score them")
    ev.add_argument("sequences", nargs="+", type=Path, help="sequence folders")
    common(ev)
    ev.set_defaults(func=cmd_eval)

    bn = sub.add_parser("bench", help="stage, replay, baseline and live-capacity benchmarks")
    common(bn)
    bn.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    bn.add_argument("--footage", nargs="*", type=Path, default=[], help="videos/frame folders")
    bn.add_argument("--sequences", nargs="*", type=Path, default=[], help="MOT sequences")
    bn.add_argument("--rtsp", action="store_true", help="live streams over loopback RTSP")
    bn.add_argument("--max-streams", type=int, default=0)
    bn.add_argument("--live-seconds", type=float, default=0.0)
    bn.set_defaults(func=cmd_bench)

    add_model_commands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and dispatch; every VigilError becomes one line and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VigilError as e:
        print(f"vigil: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vigil: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
