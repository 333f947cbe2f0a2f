"""Model toolchain steps that produce registry entries: prune + reconstruct + distill, INT8 with
a measured choice of calibration, quantization-aware training.

Each step reads a model manifest and writes a new folder ``<out>/<name>/`` (weights, ONNX,
manifest). Files are written to temporary names and renamed, and the manifest last, so a
failed or interrupted build never replaces a good artefact.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.manifest import ModelManifest, atomic_write_bytes
from pipeline.types import VigilError
from toolchain.images import images_digest, letterbox_batches

if TYPE_CHECKING:
    from toolchain.distill import DistillSettings


def _progress_bar(total: int, start: int, desc: str) -> Callable[[int, dict[str, float]], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)

    def update(step: int, losses: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        if step >= total:
            bar.close()

    return update


def swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete ``staging`` folder (same parent): the old one is
    renamed aside first and removed only after the new one is in place."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def prune_model(
    weights: Path,
    ratio: float,
    images: Sequence[np.ndarray],
    out_root: Path,
    name: str | None = None,
    settings: DistillSettings | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Prune ``weights``' network by ``ratio``, refit every convolution by least squares
    (``toolchain.reconstruct``), distill it back on ``images``, write
    ``<out_root>/<name>/`` with weights, FP32 ONNX at ``settings.imgsz`` and the manifest.

    The distillation checkpoint lives in ``<out_root>/.<name>.distill.safetensors``;
    ``resume=True`` continues from it (same ratio and settings), otherwise it starts over.
    """
    from models.export import export_onnx, load_weights, save_weights
    from models.registry import bump_minor
    from models.yolov5 import resize_to_state_dict
    from toolchain.distill import (
        DistillSettings,
        distill,
        feature_hints,
        load_checkpoint,
        make_batch,
    )
    from toolchain.prune import check_ratio, count_params, prune_l1
    from toolchain.reconstruct import output_channels, reconstruct

    check_ratio(ratio)
    s = settings or DistillSettings()
    teacher, parent = load_weights(weights)
    name = name or f"{parent.name}-p{round(ratio * 100)}"
    out_root.mkdir(parents=True, exist_ok=True)
    ckpt = out_root / f".{name}.distill.safetensors"
    student = copy.deepcopy(teacher)
    facts = prune_l1(student, ratio, s.imgsz)
    hints = feature_hints(student, teacher)  # channel identities, before any training
    opt_state, start, residuals = None, 0, {}
    if not resume:  # least-squares refit of every convolution first (seconds, see reconstruct)
        kept = output_channels(student, teacher)
        batches = [make_batch(images, replace(s, batch=8), 1_000_000 + k).float() for k in range(8)]
        residuals = reconstruct(student, teacher, kept, batches)
        print(f"reconstructed {len(residuals)} convolutions (worst relative residual "
              f"{max(residuals.values()):.3f})", file=sys.stderr)  # fmt: skip
    if resume:
        if not ckpt.is_file():
            raise VigilError(f"--resume: no checkpoint at {ckpt}")
        state, opt_state, start = load_checkpoint(ckpt)
        resize_to_state_dict(student, state)
        try:
            student.load_state_dict(state, strict=True)
        except RuntimeError:
            raise VigilError(f"{ckpt}: made with a different model or ratio") from None
        print(f"resuming {name} from step {start}/{s.steps}", file=sys.stderr)
    update = _progress_bar(s.steps, start, f"distill {name}") if progress else None
    result = distill(student, teacher, images, s, ckpt, opt_state, start, update, hints)

    manifest = copy.deepcopy(parent)
    manifest.name = name
    manifest.version = bump_minor(parent.version)
    manifest.architecture = {**parent.architecture, "pruned": True}
    manifest.files, manifest.calibration, manifest.metrics = {}, {}, {}
    manifest.lineage = {
        "parent": {
            "name": parent.name,
            "version": parent.version,
            "weights_sha256": parent.files["weights"]["sha256"],
        },
        "pruning": {**facts.as_dict(), "params": count_params(student)},
        "reconstruction": {
            "convolutions": len(residuals),
            "mean_relative_residual": float(np.mean(list(residuals.values()) or [float("nan")])),
        },
        "distillation": {
            **dataclasses.asdict(s),
            **result.as_dict(),
            "images": len(images),
            "images_sha256": images_digest(images),
        },
    }
    manifest.input_size = s.imgsz
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    staging.chmod(0o755)
    try:
        save_weights(student, manifest, staging)
        onnx_path = staging / f"{name}-{s.imgsz}.onnx"
        export_onnx(student, onnx_path, s.imgsz)
        manifest.add_file(f"onnx-fp32-{s.imgsz}", onnx_path, imgsz=s.imgsz)
        manifest.save(staging / f"{name}.json")
        swap_in(staging, out_root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ckpt.unlink(missing_ok=True)
    out = out_root / name / f"{name}.json"
    return out


def qat_model(
    manifest_path: Path,
    images: Sequence[np.ndarray],
    data: Path | None,
    imgsz: int,
    steps: int,
    scope: str = "body",
    progress: bool = True,
) -> Path:
    """Quantization-aware fine-tuning (``toolchain.qat``) distilled from the float model, then
    ONNX Runtime INT8 with the calibration method the manifest's PTQ chose (min-max if none).
    Writes ``onnx-int8-qat-<imgsz>`` beside the manifest; returns its path."""
    from models.export import export_onnx, load_weights
    from toolchain.distill import DistillSettings, distill, make_batch
    from toolchain.qat import calibrate_ranges, prepare_qat, strip_qat
    from toolchain.quantize import quantize_int8

    if steps < 1:
        raise VigilError(f"--qat-steps must be at least 1, got {steps}")
    teacher, manifest = load_weights(manifest_path)
    student = prepare_qat(copy.deepcopy(teacher))
    s = DistillSettings(steps=steps, lr=1e-4, warmup=10, imgsz=imgsz, save_every=steps, seed=1)
    calibrate_ranges(student, [make_batch(images, s, 1_000_000 + k).float() for k in range(4)])
    method = str(manifest.calibration.get("method", "minmax"))
    with tempfile.TemporaryDirectory(prefix="vigil-qat-") as tmp:
        update = _progress_bar(steps, 0, f"QAT {manifest.name}") if progress else None
        result = distill(student, teacher, images, s, Path(tmp) / "qat.ckpt", progress=update)
        fp32 = Path(tmp) / "qat-fp32.onnx"
        export_onnx(strip_qat(student), fp32, imgsz)
        staged = Path(tmp) / "qat-int8.onnx"
        facts = quantize_int8(fp32, staged, letterbox_batches(images, imgsz), method, scope)
        target = manifest_path.parent / f"{manifest.name}-{imgsz}-int8-qat.onnx"
        atomic_write_bytes(target, staged.read_bytes())
    qat = {"steps": steps, "lr": s.lr, "distill_loss": result.last_loss, "seconds": result.seconds}
    manifest.add_file(f"onnx-int8-qat-{imgsz}", target, imgsz=imgsz, **facts, qat=qat)
    manifest.save(manifest_path)
    if data is not None:
        from evaluation.detection import evaluate_map
        from models.detector import create_detector

        r = evaluate_map(create_detector(target, "onnxruntime"), data, split="eval")
        print(f"QAT INT8 mAP@.5:.95 {r.map50_95:.4f}  mAP@.5 {r.map50:.4f} (eval split)")
    return target


@dataclass(frozen=True)
class CalibrationTrial:
    method: str
    map50_95: float
    map50: float
    seconds: float


def quantize_model(
    manifest_path: Path,
    images: Sequence[np.ndarray],
    methods: Sequence[str],
    data: Path | None,
    imgsz: int,
    scope: str = "body",
    for_tensorrt: bool = False,
) -> tuple[Path, list[CalibrationTrial]]:
    """INT8 QDQ model of ``manifest_path``'s FP32 ONNX, calibrated on ``images`` by each of
    ``methods``; with more than one, the best mAP@.5:.95 on ``data``'s eval split wins (ties:
    mAP@.5). Writes ``onnx-int8-<imgsz>`` beside the manifest and records every trial in the
    manifest's ``calibration``; returns the INT8 path and the trials. ``for_tensorrt``: signed
    symmetric INT8 for TensorRT's explicit quantization, as ``onnx-int8-trt-<imgsz>``."""
    import time

    from evaluation.detection import evaluate_map, find_annotations
    from models.detector import create_detector
    from toolchain.quantize import CALIBRATION_METHODS, quantize_int8

    for m in methods:
        if m not in CALIBRATION_METHODS:
            raise VigilError(f"unknown calibration method {m!r} ({', '.join(CALIBRATION_METHODS)})")
    if len(methods) > 1 and data is None:
        raise VigilError("choosing between calibration methods needs --data (a COCO folder)")
    if data is not None:
        find_annotations(data)
    manifest = ModelManifest.load(manifest_path)
    fp32 = manifest.file_path(manifest_path, f"onnx-fp32-{imgsz}")
    trials: list[CalibrationTrial] = []
    best: tuple[tuple[float, float], Path, dict[str, object]] | None = None
    with tempfile.TemporaryDirectory(prefix="vigil-int8-") as tmp:
        for method in methods:
            t0 = time.perf_counter()
            out = Path(tmp) / f"{method}.onnx"
            batches = letterbox_batches(images, imgsz)
            try:
                facts = quantize_int8(fp32, out, batches, method, scope, symmetric=for_tensorrt)
            except VigilError as e:
                print(f"calibration {method:10s} skipped: {e}")
                continue
            score = (float("nan"), float("nan"))
            if data is not None:
                r = evaluate_map(create_detector(out, "onnxruntime"), data, split="eval")
                score = (r.map50_95, r.map50)
            trials.append(CalibrationTrial(method, *score, time.perf_counter() - t0))
            print(f"calibration {method:10s} mAP@.5:.95 {score[0]:.4f}  mAP@.5 {score[1]:.4f}")
            if best is None or score > best[0]:
                best = (score, out, facts)
        if best is None:
            raise VigilError(f"every calibration method failed ({', '.join(methods)})")
        kind = "int8-trt" if for_tensorrt else "int8"
        target = manifest_path.parent / f"{manifest.name}-{imgsz}-{kind}.onnx"
        atomic_write_bytes(target, best[1].read_bytes())
    manifest.add_file(f"onnx-{kind}-{imgsz}", target, imgsz=imgsz, **best[2])
    if for_tensorrt:
        manifest.save(manifest_path)
        return target, trials
    manifest.calibration = {
        **best[2],
        "images_sha256": images_digest(images),
        "selected_by": "mAP@.5:.95 on the eval split" if data is not None else "given",
        "trials": [dataclasses.asdict(t) for t in trials],
    }
    manifest.save(manifest_path)
    return target, trials
