"""Quantization-aware fine-tuning of a YOLOv5 (for when post-training INT8 loses too much).

The network's BatchNorms are folded first; then every backbone/neck ``Conv`` block computes

    SiLU(fq_out(conv(fq_in(x), fq_w(W)) + b))

with ``fq_w`` symmetric INT8 per output channel (scale ``max|W| / 127``, recomputed from the
current weights) and ``fq_in``/``fq_out`` asymmetric UINT8 per tensor over an exponential moving
min/max (what ONNX Runtime's QDQ quantization of the same tensors does). Gradients pass the
rounding straight through (``torch.fake_quantize_*``). The Detect layer stays float, as in
``toolchain.quantize``. Training signal: distillation from the float network
(``toolchain.distill``), so no labels are needed.

The result is float weights that lose less when quantized: ``strip`` turns the network back into
plain fused ``Conv`` blocks, and the INT8 model is then produced by the same ONNX Runtime static
quantization as post-training INT8 (the activation ranges are re-calibrated, not carried over).

:func:`qat_model` is the step as a registry entry (``vigil models quantize --qat``).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.manifest import atomic_write_bytes
from models.yolov5 import Conv, YOLOv5
from pipeline.types import VigilError
from toolchain.images import letterbox_batches
from toolchain.staging import progress_bar


class ActObserverFQ(nn.Module):
    """Per-tensor UINT8 fake quantization with an EMA min/max range (0 always inside it)."""

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.enabled = True
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
        if not self.enabled or not bool(self.seen):
            return x
        scale = float((self.hi - self.lo).clamp(min=1e-8)) / 255.0
        zero = round(-float(self.lo) / scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 per output channel (axis 0), straight-through gradient."""
    scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127.0).clamp(min=1e-8)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -127, 127)


class QatConv(nn.Module):
    """A fused ``Conv`` block (conv with bias, SiLU) with fake quantization around the conv."""

    def __init__(self, block: Conv) -> None:
        super().__init__()
        self.conv = block.conv
        self.act = block.act
        self.fq_in = ActObserverFQ()
        self.fq_out = ActObserverFQ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv2d(
            self.fq_in(x), fake_quant_weight(c.weight), c.bias, c.stride, c.padding, 1, c.groups
        )
        out: torch.Tensor = self.act(self.fq_out(y))
        return out

    def to_block(self) -> Conv:
        block = Conv(self.conv.in_channels, self.conv.out_channels)
        block.conv, block.act = self.conv, self.act
        block.bn = nn.Identity()  # type: ignore[assignment]
        return block


def _swap(net: nn.Module, kind: type[nn.Module], convert: Callable[[Any], nn.Module]) -> None:
    """Replace every ``kind`` submodule by ``convert(it)``, keeping the layer-table wiring."""
    for name, module in list(net.named_modules()):
        if isinstance(module, kind):
            parent_name, _, attr = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            new = convert(module)
            for a in ("f", "i"):  # set on top-level layers by the layer-table builder
                if hasattr(module, a):
                    setattr(new, a, getattr(module, a))
            setattr(parent, attr, new)


def prepare_qat(net: YOLOv5) -> YOLOv5:
    """Fold BatchNorm, wrap every ``Conv`` block (not the Detect head) in ``QatConv``."""
    net.fuse()
    _swap(net, Conv, QatConv)
    return net


def calibrate_ranges(net: YOLOv5, batches: list[torch.Tensor]) -> None:
    """Initialise the activation ranges from float activations (no quantization yet)."""
    fqs = [m for m in net.modules() if isinstance(m, ActObserverFQ)]
    for m in fqs:
        m.enabled = False
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x)
    for m in fqs:
        m.enabled = True


def strip_qat(net: YOLOv5) -> YOLOv5:
    """Back to plain fused ``Conv`` blocks holding the fine-tuned weights (eval mode)."""
    _swap(net, QatConv, lambda m: m.to_block())
    return net.eval()


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
        update = progress_bar(steps, 0, f"QAT {manifest.name}") if progress else None
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
