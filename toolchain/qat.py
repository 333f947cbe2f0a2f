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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.yolov5 import Conv, YOLOv5


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
