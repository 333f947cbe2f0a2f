"""``vigil models ...``: convert a YOLOv5 checkpoint, export ONNX/INT8, measure mAP."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.types import VigilError
from toolchain.cli import model_manifest
from toolchain.images import gather_images, letterbox_batches

CALIB = "INT8 calibration"


def cmd_convert(args: argparse.Namespace) -> int:
    from models.checkpoint import convert_checkpoint
    from models.export import save_weights

    net, manifest = convert_checkpoint(args.checkpoint, version=args.version)
    path = save_weights(net, manifest, args.out)
    print(f"converted {args.checkpoint.name}: {manifest.name} ({manifest.nc} classes) -> {path}")
    return 0


def export_variants(
    manifest_path: Path,
    sizes: Sequence[int],
    calib: list[np.ndarray] | None,
    method: str = "minmax",
    scope: str = "body",
    out_dir: Path | None = None,
) -> dict[str, Path]:
    """Write FP32 (and INT8 when ``calib`` is given) ONNX files per size; update the manifest."""
    from models.export import export_onnx, load_weights
    from toolchain.quantize import quantize_int8

    net, manifest = load_weights(manifest_path)
    out_dir = out_dir or manifest_path.parent
    written: dict[str, Path] = {}
    for size in sizes:
        fp32 = out_dir / f"{manifest.name}-{size}.onnx"
        export_onnx(net, fp32, size)
        manifest.add_file(f"onnx-fp32-{size}", fp32, imgsz=size)
        written[f"fp32-{size}"] = fp32
        if calib is not None:
            int8 = out_dir / f"{manifest.name}-{size}-int8.onnx"
            facts = quantize_int8(fp32, int8, letterbox_batches(calib, size), method, scope)
            manifest.add_file(f"onnx-int8-{size}", int8, imgsz=size, **facts)
            manifest.calibration = facts
            written[f"int8-{size}"] = int8
    manifest.input_size = sizes[0]
    manifest.save(out_dir / manifest_path.name)
    return written


def cmd_export(args: argparse.Namespace) -> int:
    calib = gather_images(args.calib, args.calib_frames, CALIB) if args.int8 else None
    weights = model_manifest(args.weights, args.registry)
    written = export_variants(weights, args.imgsz, calib, args.method, args.scope)
    for role, path in written.items():
        print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.detection import evaluate_map, find_annotations
    from models.detector import create_detector
    from models.manifest import ModelManifest

    find_annotations(args.data)
    weights = model_manifest(args.weights, args.registry)
    manifest = ModelManifest.load(weights)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-eval-") as tmp:
        missing = [
            s for s in args.imgsz for p in args.precision if f"onnx-{p}-{s}" not in manifest.files
        ]
        built: dict[str, Path] = {}
        if missing:
            calib = gather_images(args.calib, args.calib_frames, CALIB) if args.calib else None
            if "int8" in args.precision and calib is None:
                raise VigilError("INT8 variants must be built first: pass --calib to build them")
            tmp_manifest = Path(tmp) / weights.name
            tmp_manifest.write_text(weights.read_text())
            safetensors = manifest.file_path(weights, "weights")
            (Path(tmp) / safetensors.name).symlink_to(safetensors.resolve())
            built = export_variants(tmp_manifest, sorted(set(missing)), calib, out_dir=Path(tmp))
        for size in args.imgsz:
            for prec in args.precision:
                role = f"onnx-{prec}-{size}"
                path = (
                    manifest.file_path(weights, role)
                    if role in manifest.files
                    else built[f"{prec}-{size}"]
                )
                det = create_detector(path, args.backend)
                r = evaluate_map(det, args.data, limit=args.limit, split=args.split)
                rows.append((prec, size, det.backend, r.map50_95, r.map50, r.images))
                print(f"{prec:>5} {size:4d} {det.backend:12s} mAP@.5:.95 {r.map50_95:.4f}  "
                      f"mAP@.5 {r.map50:.4f}  ({r.images} images)", flush=True)  # fmt: skip
    return 0


def cmd_export_reid(args: argparse.Namespace) -> int:
    from models.reid import export_mobilenet

    h, _, w = args.crop.partition("x")
    if not (h.isdigit() and w.isdigit()) or int(h) % 32 or int(w) % 32:
        raise VigilError(f"--crop must be HxW in multiples of 32, got {args.crop!r}")
    out = args.out / "mobilenetv2_reid.onnx"
    export_mobilenet(out, int(h), int(w))
    print(f"exported MobileNetV2 re-id embedder ({h}x{w} crops) -> {out}")
    return 0


def cmd_import_reid(args: argparse.Namespace) -> int:
    from models.reid_manifest import ReidManifest, ReidPreprocess, import_reid

    def triple(text: str, what: str) -> tuple[float, float, float]:
        parts = [p for p in text.replace(",", " ").split() if p]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3:
            raise VigilError(f"--{what} needs three numbers (one per channel), got {text!r}")
        return values[0], values[1], values[2]

    pre = ReidPreprocess(
        channel_order="bgr" if args.bgr else "rgb",
        mean=triple(args.mean, "mean"),
        std=triple(args.std, "std"),
        interpolation=args.interpolation,
    )
    name = args.name or args.onnx.stem
    path = import_reid(args.onnx, args.registry, name, pre, args.size)
    m = ReidManifest.load(path)
    p = m.preprocessing()
    print(
        f"imported re-id model {m.name}: input {m.input_name} {p.height}x{p.width} "
        f"{p.channel_order.upper()}, output {m.output_dim}-d, sha256 {m.sha256[:12]} -> {path}"
    )
    print(f"use it with: --embedder {m.name} (or tracker.embedder: {m.name} in a config)")
    return 0


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    from evaluation.detection import SPLITS
    from pipeline.config import DEFAULT_MODEL, PACKAGE_ROOT

    models = sub.add_parser("models", help="model toolchain").add_subparsers(
        dest="models_command", required=True
    )
    cv = models.add_parser("convert", help="YOLOv5 .pt -> safetensors + manifest (no pickle code)")
    cv.add_argument("checkpoint", type=Path)
    cv.add_argument("--out", type=Path, required=True)
    cv.add_argument("--version", default="1.0.0", help="semantic version of the model")
    cv.set_defaults(func=cmd_convert)

    def weights_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--weights", default=str(DEFAULT_MODEL), help="registry name or manifest")
        p.add_argument("--registry", type=Path, default=PACKAGE_ROOT / "models" / "registry")
        p.add_argument("--imgsz", type=int, nargs="+", default=[320])
        p.add_argument("--calib", nargs="*", default=[], help="videos/folders for INT8")
        p.add_argument("--calib-frames", type=int, default=128)

    ex = models.add_parser("export", help="ONNX (opset 17, dynamic batch) and INT8 QDQ")
    weights_arg(ex)
    ex.add_argument("--int8", action="store_true", help="also write the INT8 model")
    ex.add_argument("--method", default="minmax", help="minmax, entropy or percentile")
    ex.add_argument("--scope", default="body", help="body or conv (what INT8 covers)")
    ex.set_defaults(func=cmd_export)

    ev = models.add_parser("evaluate", help="mAP on a COCO-layout data set")
    weights_arg(ev)
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--precision", nargs="+", default=["fp32", "int8"])
    ev.add_argument("--backend", default="onnxruntime")
    ev.add_argument("--limit", type=int, default=None, help="first N images only")
    ev.add_argument("--split", default="all", choices=SPLITS, help="eval: the images the "
                    "toolchain never tunes on (3 in 4); tune: the rest")  # fmt: skip
    ev.set_defaults(func=cmd_evaluate)

    from toolchain.cli import add_toolchain_commands

    add_toolchain_commands(models)

    rx = models.add_parser("export-reid", help="export the MobileNetV2 re-id embedder to ONNX")
    rx.add_argument("--out", type=Path, default=DEFAULT_MODEL.parent)
    rx.add_argument("--crop", default="128x64", help="crop HxW, multiples of 32")
    rx.set_defaults(func=cmd_export_reid)

    ir = models.add_parser(
        "import-reid", help="register a person re-identification ONNX with its preprocessing"
    )
    ir.add_argument("onnx", type=Path, help="ONNX file: (batch, 3, H, W) -> (batch, D)")
    ir.add_argument("--name", help="registry name (default: the file name)")
    ir.add_argument("--registry", type=Path, default=PACKAGE_ROOT / "models" / "registry")
    ir.add_argument("--size", default="", help="input HxW when the file leaves it open")
    ir.add_argument("--mean", default="0.485,0.456,0.406", help="per channel, [0, 1] units")
    ir.add_argument("--std", default="0.229,0.224,0.225", help="per channel, [0, 1] units")
    ir.add_argument("--bgr", action="store_true", help="the network takes BGR (default RGB)")
    ir.add_argument("--interpolation", default="bilinear", choices=("bilinear", "nearest"))
    ir.set_defaults(func=cmd_import_reid)
