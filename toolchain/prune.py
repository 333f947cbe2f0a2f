"""Structured channel pruning of a YOLOv5 network by L1 norm, with torch-pruning.

torch-pruning traces the network once to build its dependency graph (which output channels of
one layer are tied to input channels of the next through residual adds, concatenations, C3's
two branches and SPPF's pooled copies) and removes whole channel groups by the L1 norm of their
weights, so the result is an ordinary, smaller dense network: no masks, no sparse kernels.

Every layer keeps ``1 - ratio`` of its channels (rounded to a multiple of ``round_to`` so the
CPU kernels stay vectorized). The Detect layer's output convolutions are never pruned: their
channels are the ``3 x (5 + nc)`` predictions. Their inputs shrink with the neck.

:func:`prune_model` is the step as a registry entry (``vigil models prune``): prune, refit every
convolution by least squares (``toolchain.reconstruct``), distill back (``toolchain.distill``),
and write ``<out>/<name>/`` (weights, FP32 ONNX, manifest with the lineage), staged and swapped
in whole.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.yolov5 import YOLOv5
from pipeline.types import VigilError
from toolchain.distill import DistillSettings
from toolchain.images import images_digest
from toolchain.staging import progress_bar, swap_in

MAX_RATIO = 0.9


@dataclass(frozen=True)
class PruneFacts:
    """What pruning did: kept in the pruned model's manifest."""

    ratio: float
    round_to: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "method": "torch-pruning L1 (structured channels)",
            "ratio": self.ratio,
            "round_to": self.round_to,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio <= MAX_RATIO:
        raise VigilError(f"--ratio must be in (0, {MAX_RATIO}], got {ratio}")
    return ratio


def count_params(net: nn.Module) -> int:
    return sum(int(p.numel()) for p in net.parameters())


def prune_l1(net: YOLOv5, ratio: float, imgsz: int = 320, round_to: int = 4) -> PruneFacts:
    """Prune ``net`` in place: every prunable layer keeps ``1 - ratio`` of its channels.

    ``net`` must be the unfused (Conv + BatchNorm) float network; BatchNorm channels are pruned
    with their convolutions.
    """
    import torch_pruning as tp

    check_ratio(ratio)
    example = torch.zeros(1, 3, imgsz, imgsz)
    net.eval()
    for p in net.parameters():  # the tracer follows autograd, which needs gradients on
        p.requires_grad_(True)
    macs_before, params_before = tp.utils.count_ops_and_params(net, example)
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=list(net.detect.m),
        round_to=round_to,
    )
    pruner.step()
    macs_after, params_after = tp.utils.count_ops_and_params(net, example)
    with torch.no_grad():
        out = net(example)
    if out.shape[-1] != net.detect.no:
        raise VigilError("pruning changed the detection head's outputs; refusing the result")
    return PruneFacts(
        ratio=ratio,
        round_to=round_to,
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=int(macs_before),
        macs_after=int(macs_after),
    )


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
    update = progress_bar(s.steps, start, f"distill {name}") if progress else None
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
