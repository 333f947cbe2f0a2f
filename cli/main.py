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
            "model.preprocess": getattr(args, "preprocess", None),
            "batch.max_batch": getattr(args, "batch", None),
            "tracker.embedder": getattr(args, "embedder", None),
            "tracker.name": getattr(args, "tracker", None),
            "source.decode": getattr(args, "decode", None),
        },
    )


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    """``detect_every`` and ``motion`` (a checked MotionConfig) from --detect-every/--motion*."""
    from pipeline.config import MotionConfig, parse_section

    knobs: dict[str, Any] = {"enabled": bool(args.motion)}
    if args.motion_threshold is not None:
        knobs["threshold"] = args.motion_threshold
    if args.motion_min_area is not None:
        knobs["min_area"] = args.motion_min_area
    if args.full_detect_s is not None:
        knobs["full_detect_s"] = args.full_detect_s
    if args.detect_every < 1 or args.detect_every > 30:
        from pipeline.types import VigilError

        raise VigilError(f"--detect-every: {args.detect_every} is outside [1, 30]")
    motion = parse_section(MotionConfig, knobs, "motion.")
    return {"detect_every": args.detect_every, "motion": motion}


def _progress(total: int | None, quiet: bool, desc: str, unit: str = "frame") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=quiet, dynamic_ncols=True)


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.config import load_rules
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource
    from pipeline.wiring import build_decode

    cfg = _config(args)
    rules = load_rules(args.analytics, args.stream_id) if args.analytics else None
    source = FFmpegSource(
        args.source,
        stream_id=args.stream_id,
        max_frames=args.max_frames,
        folder_fps=cfg.source.folder_fps,
        rtsp_transport=cfg.source.rtsp_transport,
        timeout_s=cfg.source.timeout_s,
        decode=build_decode(cfg.source),
    )
    replay = Replay(source, cfg, args.out, rules=rules, **_schedule(args))
    total = source.info.frame_count
    if args.max_frames and total:
        total = min(total, args.max_frames)
    with _progress(total, args.quiet, "replay") as bar:
        summary = replay.run(bar.update)
    stages = summary["stages_ms"]
    split = ", ".join(f"{k} {v['mean_ms']:.1f}" for k, v in stages.items())
    m = summary["model"]
    print(
        f"{summary['frames_processed']} frames in {summary['wall_s']:.1f} s "
        f"({summary['fps']:.1f} fps; ms/frame: {split}); "
        f"model {m['name']} {m['version']} {m['precision']} on {m['backend']} ({m['device']}); "
        f"preprocess {m['preprocess']}; decode {summary['decode']['path']} "
        f"({summary['decode']['reason']})"
    )
    if summary["decode_errors"]:
        print(f"decoder reported {summary['decode_errors']} errors (decoded past them)")
    extra = ""
    if rules is not None:
        extra = ", events.jsonl, counts.json"
        print(f"{summary['events']} events; counts: {_counts_line(args.out / 'counts.json')}")
    print(f"results: {args.out}/tracks.txt, messages.jsonl, summary.json{extra}")
    return 0


def _counts_line(path: Path) -> str:
    """One line of a replay's counts: ``line in/out``, ``zone entered/exited`` (all classes)."""
    counts = json.loads(path.read_text())
    parts = [
        f"{rule} in {sum(c['in'].values())} / out {sum(c['out'].values())}"
        for rule, c in counts["lines"].items()
    ] + [
        f"{rule} entered {sum(c['entered'].values()) + sum(c['spawned'].values())} / "
        f"exited {sum(c['exited'].values())}"
        for rule, c in counts["zones"].items()
    ]
    return "; ".join(parts) or "no rules"


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.mot import format_table, replay_sequences, score_sequences
    from pipeline.config import load_rules

    cfg = _config(args)
    rules = load_rules(args.analytics) if args.analytics else None
    per_seq, replays = replay_sequences(
        cfg, args.sequences, args.out, progress=lambda n, name: _progress(n, args.quiet, name),
        rules=rules, **_schedule(args),
    )  # fmt: skip
    table = score_sequences(per_seq)
    print(format_table(table))
    if rules is not None:
        _eval_counting(args.sequences, args.out, rules, replays)
    for name, r in replays.items():
        c = r["detector_frames"]
        print(
            f"{name}: {r['fps']:.1f} fps; detector ran on {c['detected']} of "
            f"{r['frames_processed']} frames ({c['predicted']} predicted, {c['idle']} idle)"
        )
    result = {
        "metrics": table,
        "replay": {
            s: {k: r[k] for k in ("fps", "stages_ms", "detector_frames")}
            for s, r in replays.items()
        },
        "model": next(iter(replays.values()))["model"],
        "tracker": next(iter(replays.values()))["tracker"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"metrics: {args.out}/metrics.json")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from evaluation.tune import format_result, tune

    if args.trials < 1:
        raise VigilError(f"--trials must be at least 1, got {args.trials}")
    cfg = _config(args)
    only = [p.strip() for p in args.params.split(",") if p.strip()] if args.params else []
    result = tune(
        cfg,
        args.sequences,
        args.out,
        cfg.tracker.name,
        args.objective,
        args.trials,
        only,
        cv=not args.no_cv,
        seed=args.seed,
        progress=lambda n, name, unit="frame": _progress(n, args.quiet, name, unit),
        detect_every=args.detect_every,
    )
    print(format_result(result))
    print(f"study: {args.out}/study.db (resumable), {args.out}/tune.json, {args.out}/best.yaml")
    return 0


def _eval_counting(sequences: list[Path], out: Path, rules: Any, replays: dict[str, Any]) -> None:
    """Line counts of each replay against those derived from its ground truth."""
    from evaluation.counting import compare, format_counting, gt_line_counts, replay_line_counts
    from evaluation.mot import load_mot, read_sequence

    per_seq = {}
    for path in sequences:
        seq = read_sequence(path)
        summary = replays[seq.name]
        gt = load_mot(seq.path / "gt" / "gt.txt", keep_zero_conf=False)
        size = (summary["width"], summary["height"])
        truth = gt_line_counts(gt, size, rules.lines)
        naive = gt_line_counts(load_mot(out / seq.name / "tracks.txt"), size, rules.lines)
        vigil = replay_line_counts(out / seq.name / "counts.json")
        per_seq[seq.name] = compare(truth, vigil, naive)
    print(format_counting(per_seq))
    (out / "counting.json").write_text(json.dumps(per_seq, indent=1) + "\n")
    print(f"counting: {out}/counting.json")


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
        p.add_argument(
            "--backend", help="auto, onnxruntime, openvino, torch, torch-cuda or tensorrt"
        )
        p.add_argument("--preprocess", help="numpy or dali (NVIDIA DALI, the gpu extra)")
        p.add_argument("--decode", help="auto, cpu or cuda (FFmpeg -hwaccel cuda)")
        p.add_argument("--classes", help="comma-separated class names or ids, or 'all'")
        p.add_argument("--batch", type=int, help="frames per detector call")
        p.add_argument("--embedder", help="mobilenet, histogram or an imported re-id model")
        p.add_argument("--tracker", help="deepsort, bytetrack or deepsort-reference")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def skip_frames(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--detect-every", type=int, default=1, metavar="K",
            help="run the detector on every K-th frame; the tracker predicts the others",
        )  # fmt: skip
        p.add_argument(
            "--motion", action="store_true",
            help="motion gating: skip the detector on still frames with no live track",
        )  # fmt: skip
        p.add_argument("--motion-threshold", type=float, help="grey levels (sensitivity)")
        p.add_argument("--motion-min-area", type=float, help="fraction of the frame, 0..1")
        p.add_argument("--full-detect-s", type=float, help="full detection at least this often")

    rp = sub.add_parser("replay", help="replay a video, frame folder or rtsp:// URL")
    rp.add_argument("source", help="video file, folder of frames, or rtsp:// URL")
    common(rp)
    rp.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    rp.add_argument("--stream-id", default="replay", help="stream name in messages")
    rp.add_argument(
        "--analytics", type=Path, help="YAML of lines/zones: also write events.jsonl, counts.json"
    )
    skip_frames(rp)
    rp.set_defaults(func=cmd_replay)

    ev = sub.add_parser("eval", help="replay MOTChallenge sequences and score them")
    ev.add_argument("sequences", nargs="+", type=Path, help="sequence folders")
    common(ev)
    ev.add_argument(
        "--analytics", type=Path,
        help="YAML of lines: also compare line counts with those of the ground truth",
    )  # fmt: skip
    skip_frames(ev)
    ev.set_defaults(func=cmd_eval)

    tn = sub.add_parser(
        "tune", help="search tracker parameters on MOTChallenge sequences (Optuna TPE)"
    )
    tn.add_argument("sequences", nargs="*", type=Path, help="sequence folders")
    common(tn)
    tn.add_argument("--objective", default="hota", help="hota, idf1 or mota")
    tn.add_argument("--trials", type=int, default=100, help="trials per study")
    tn.add_argument("--params", help="comma-separated knobs to search (default: all tunable)")
    tn.add_argument("--no-cv", action="store_true", help="skip leave-one-sequence-out CV")
    tn.add_argument("--seed", type=int, default=0)
    tn.add_argument("--detect-every", type=int, default=1, metavar="K",
                    help="tune for streams with detect_every: K (the tracker predicts the "
                    "frames between detections)")  # fmt: skip
    tn.set_defaults(func=cmd_tune)

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
