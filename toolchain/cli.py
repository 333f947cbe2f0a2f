"""``vigil models prune|quantize|list|report|build-engine``: the optimizing toolchain's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.types import VigilError


def model_manifest(spec: str, registry: Path) -> Path:
    """A ``--weights`` value: a registry reference or a manifest path."""
    from pipeline.wiring import resolve_manifest

    return resolve_manifest(spec, registry)


def cmd_prune(args: argparse.Namespace) -> int:
    from toolchain.distill import DistillSettings
    from toolchain.images import gather_images
    from toolchain.prune import check_ratio, prune_model

    check_ratio(args.ratio)
    if args.steps < 1 or args.batch < 1:
        raise VigilError("--steps and --batch must be at least 1")
    if not args.lr > 0:
        raise VigilError(f"--lr must be positive, got {args.lr}")
    if args.imgsz % 32 or not 64 <= args.imgsz <= 1920:  # checked now, not after the training
        raise VigilError(f"--imgsz must be a multiple of 32 in [64, 1920], got {args.imgsz}")
    weights = model_manifest(args.weights, args.registry)
    images = gather_images(args.images, args.max_images, "distillation")
    settings = DistillSettings(steps=args.steps, batch=args.batch, lr=args.lr, imgsz=args.imgsz)
    out = prune_model(
        weights, args.ratio, images, args.out or args.registry, args.name, settings, args.resume
    )
    from models.manifest import ModelManifest

    m = ModelManifest.load(out)
    p = m.lineage["pruning"]
    d = m.lineage["distillation"]
    print(
        f"{m.name} {m.version}: {p['params_before']:,} -> {p['params_after']:,} parameters, "
        f"{p['macs_before'] / 1e6:.0f} -> {p['macs_after'] / 1e6:.0f} MMACs at {args.imgsz}; "
        f"distilled {d['steps']} steps on {d['images']} images in {d['seconds'] / 60:.1f} min "
        f"(loss {d['first_loss']:.3f} -> {d['last_loss']:.3f}) -> {out}"
    )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from toolchain.images import gather_images
    from toolchain.quantize import quantize_model

    weights = model_manifest(args.weights, args.registry)
    images = gather_images(args.calib, args.calib_frames, "INT8 calibration")
    if args.qat:
        from toolchain.qat import qat_model

        out = qat_model(weights, images, args.data, args.imgsz, args.qat_steps, args.scope)
        print(f"QAT INT8 -> {out}")
        return 0
    from models.manifest import ModelManifest

    out, _ = quantize_model(
        weights, images, args.methods, args.data, args.imgsz, args.scope, args.for_tensorrt
    )
    kind = "int8-trt" if args.for_tensorrt else "int8"
    chosen = ModelManifest.load(weights).files[f"onnx-{kind}-{args.imgsz}"]["method"]
    print(f"INT8 ({chosen} calibration) -> {out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from models.registry import entries

    rows = entries(args.registry)
    print(f"{'name':24s} {'version':9s} {'derived from':24s} files")
    for e in rows:
        print(f"{e.name:24s} {e.version:9s} {e.parent or '-':24s} {', '.join(e.roles)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from evaluation.mot import read_sequence
    from models.detector import available_backends
    from models.registry import entries
    from pipeline.config import SAMPLE_CLIP, load_config
    from toolchain import report as mr
    from toolchain.images import gather_images

    if args.data is not None:
        from evaluation.detection import find_annotations

        find_annotations(args.data)
    for seq in args.sequences:
        read_sequence(seq)
    specs = args.models or [
        e.name
        for e in entries(args.registry)
        if e.name == "yolov5n" or e.parent.startswith("yolov5n@")
    ]
    manifests = [model_manifest(s, args.registry) for s in specs]
    variants = mr.collect_variants(manifests, args.imgsz)
    backends = args.backends or available_backends()
    print(f"report: {len(variants)} variants, backends {', '.join(backends)}", flush=True)
    mr.measure_accuracy(variants, load_config(args.config), args.data, args.sequences)
    frames = gather_images([str(SAMPLE_CLIP)], 8, "latency")
    mr.measure_latency(variants, frames, backends, args.rounds, args.reps)
    if not args.no_record:
        mr.record(variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(mr.markdown(variants))
    rows = [
        {"variant": v.label, "version": v.version, "onnx": str(v.onnx), **v.metrics}
        for v in variants
    ]
    (args.out / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
    default = "onnxruntime" if "onnxruntime" in backends else backends[0]
    key = f"{default} b8"
    if args.data is not None:
        mr.plot(variants, args.out / "accuracy_latency.png", key)
    print(mr.terminal(variants))
    print(
        f"written: {args.out}/report.md, report.json"
        + (", accuracy_latency.png" if args.data else "")
    )
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from models.manifest import ModelManifest
    from toolchain.trt_prep import prepare, profile_shapes

    weights = model_manifest(args.weights, args.registry)
    manifest = ModelManifest.load(weights)
    role = f"onnx-{args.onnx}-{args.imgsz}"
    onnx_path = manifest.file_path(weights, role)
    if args.check_only:
        out = args.cache / f"{manifest.name}-{args.imgsz}.trt-input.onnx"
        facts = prepare(onnx_path, out)
        shapes = profile_shapes(facts.imgsz, args.max_batch)
        print(
            f"{onnx_path.name}: fit for TensorRT ({'QDQ INT8' if facts.quantized else 'float'}"
            f", opset {facts.opset}, {facts.outputs - 5} classes); profile min/opt/max "
            f"{' / '.join('x'.join(map(str, s)) for s in shapes)} -> {out}"
        )
        return 0
    from toolchain.images import gather_images, images_digest, letterbox_batches
    from toolchain.tensorrt_build import build_engine

    calib, digest = None, ""
    if args.onnx not in ("fp32", "int8-trt"):
        raise VigilError(f"--onnx must be fp32 or int8-trt, got {args.onnx!r}")
    if args.precision == "int8" and args.onnx == "fp32":
        images = gather_images(args.calib, args.calib_frames, "INT8 calibration")
        calib, digest = letterbox_batches(images, args.imgsz, batch=8), images_digest(images)
    path, built = build_engine(
        onnx_path, manifest.name, args.precision, args.max_batch, args.cache, calib, digest
    )
    print(f"{'built' if built else 'cached'} TensorRT engine: {path}")
    return 0


def add_toolchain_commands(models: argparse._SubParsersAction) -> None:
    from pipeline.config import DEFAULT_MODEL, PACKAGE_ROOT

    registry = PACKAGE_ROOT / "models" / "registry"

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--weights", default=str(DEFAULT_MODEL), help="registry name or manifest (.json)"
        )
        p.add_argument("--registry", type=Path, default=registry, help="the user registry")
        p.add_argument("--imgsz", type=int, default=320)

    pr = models.add_parser("prune", help="L1 channel pruning + distillation recovery")
    common(pr)
    pr.add_argument("--ratio", type=float, required=True, help="share of channels cut, (0, 0.9]")
    pr.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="unlabeled videos / frame folders / COCO folders (their tune split only)",
    )
    pr.add_argument("--max-images", type=int, default=512)
    pr.add_argument("--steps", type=int, default=600, help="distillation steps")
    pr.add_argument("--batch", type=int, default=16)
    pr.add_argument("--lr", type=float, default=1e-3)
    pr.add_argument("--name", default=None, help="registry name (default <parent>-p<ratio%%>)")
    pr.add_argument("--out", type=Path, default=None, help="registry folder to write into")
    pr.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    pr.set_defaults(func=cmd_prune)

    qu = models.add_parser("quantize", help="INT8 with the calibration chosen by measured mAP")
    common(qu)
    qu.add_argument("--calib", nargs="+", required=True, help="videos / frame / COCO folders")
    qu.add_argument("--calib-frames", type=int, default=128)
    qu.add_argument(
        "--methods", nargs="+", default=["minmax", "entropy", "percentile"], help="tried in turn"
    )
    qu.add_argument("--data", type=Path, default=None, help="COCO folder: choose by mAP")
    qu.add_argument("--scope", default="body", help="body or conv (what INT8 covers)")
    qu.add_argument(
        "--for-tensorrt",
        action="store_true",
        help="signed symmetric INT8 (onnx-int8-trt) for `build-engine --onnx int8-trt`",
    )
    qu.add_argument("--qat", action="store_true", help="quantization-aware training instead")
    qu.add_argument("--qat-steps", type=int, default=300)
    qu.set_defaults(func=cmd_quantize)

    rp = models.add_parser("report", help="accuracy / size / latency table of model variants")
    rp.add_argument(
        "--models",
        nargs="*",
        default=[],
        help="registry names or manifests "
        "(default: yolov5n and every registry model derived from it)",
    )
    rp.add_argument("--registry", type=Path, default=registry)
    rp.add_argument("--imgsz", type=int, default=320)
    rp.add_argument("--data", type=Path, default=None, help="COCO folder (eval split scored)")
    rp.add_argument("--sequences", type=Path, nargs="*", default=[], help="MOT sequences")
    rp.add_argument("--backends", nargs="*", default=[], help="default: every CPU backend")
    rp.add_argument("--rounds", type=int, default=3)
    rp.add_argument("--reps", type=int, default=10)
    rp.add_argument("--out", type=Path, default=Path("runs/model-report"))
    rp.add_argument("--config", type=Path, default=None, help="tracker settings for replays")
    rp.add_argument("--no-record", action="store_true", help="leave the manifests unchanged")
    rp.set_defaults(func=cmd_report)

    be = models.add_parser("build-engine", help="TensorRT engine (needs an NVIDIA GPU)")
    common(be)
    be.add_argument("--precision", default="fp16", choices=["fp16", "int8"])
    be.add_argument("--max-batch", type=int, default=8)
    be.add_argument(
        "--onnx", default="fp32", help="which ONNX of the model: fp32, or int8-trt (QDQ)"
    )
    be.add_argument("--calib", nargs="*", default=[], help="INT8 from FP32: calibration images")
    be.add_argument("--calib-frames", type=int, default=128)
    be.add_argument("--cache", type=Path, default=Path("runs/engines"), help="engine cache")
    be.add_argument(
        "--check-only",
        action="store_true",
        help="only prepare and check the ONNX for TensorRT (runs without a GPU)",
    )
    be.set_defaults(func=cmd_build_engine)

    ls = models.add_parser("list", help="models in the registry")
    ls.add_argument("--registry", type=Path, default=registry)
    ls.set_defaults(func=cmd_list)
